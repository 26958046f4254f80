"""Recipes: what ``drnet demo`` trains, on which scenes, and how the time budget is split.

A :class:`Recipe` fixes everything but the number of training images; those are planned at run
time from a short throughput probe so that the whole run fits the budget (see
:mod:`drnet.demo.run`). Three recipes ship:

* :func:`default_recipe` — one narrow DRN-D-22, 6 minutes on a 2-core CPU;
* :func:`paper_recipe` — the paper's comparison in miniature: ResNet-18, DRN-A-18, DRN-B-26,
  DRN-C-26 and DRN-D-22 at a quarter of their width, the same recipe and the same number of
  training images each, 60 minutes on a 2-core CPU;
* ``quick=True`` versions of both — tiny networks and a few hundred images, for tests and smoke
  runs (numbers are meaningless, the pipeline is the real one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from drnet.errors import DrnetError
from drnet.models import get_spec

# DRN-A-18 with the paper's dilation schedule (section 2's equations): no released code
# exists for it, so the paper is its only specification
PAPER_MODELS = ("resnet18", "drn_a_18_paper", "drn_b_26", "drn_c_26", "drn_d_22")
#: The models of the paper's activation-map figure (Figure 6: DRN-A-18, DRN-B-26, DRN-C-26).
GRIDDING_FIGURE_MODELS = ("drn_a_18_paper", "drn_b_26", "drn_c_26")
TINY_CHANNELS = (4, 8, 16, 16, 32, 32, 32, 32)


@dataclass(frozen=True)
class Recipe:
    """One demo recipe. Image counts are *training scenes seen* (epochs x scenes per epoch).

    ``channels`` maps a model name to its per-level widths; a model without an entry gets its
    registered widths times ``width_mult``.
    """

    name: str
    models: tuple[str, ...] = ("drn_d_22",)
    channels: dict[str, tuple[int, ...]] = field(default_factory=dict)
    width_mult: float = 0.25
    budget_minutes: float = 6.0
    safety: float = 0.9  # plan to finish within this share of the budget
    # -- classification and localization scenes (single item)
    # 48 px (items of 22-39 px): measured on a 2-core AVX2 CPU against 64 px, 1.8x the scenes per
    # second and a higher top-1 at the same number of scenes (0.56 against 0.52 at 7,680)
    cls_canvas: int = 48
    cls_scale: tuple[float, float] = (0.8, 1.4)
    cls_batch: int = 32
    cls_lr: float = 0.1
    cls_lr_mode: str = "cosine"
    cls_weight_decay: float = 1e-4
    cls_opt: str = "sgd"  # AdamW (2e-3, 4e-3) learned no faster here
    cls_warmup_epochs: float = 1.0  # linear warm-up from 1% of the lr: no run starts dead
    cls_label_smoothing: float = 0.1  # +0.02 top-1 at 7,680 scenes
    cls_ema_decay: float = 0.0  # weight EMA per step (0: none); the demo evaluates the EMA
    cls_mixup_alpha: float = 0.0
    cls_cutmix_alpha: float = 0.0
    cls_epochs: int = 8
    cls_val: int = 1000  # val scenes (test items): top-1 and localization are reported on them
    cls_holdout: int = 500  # holdout scenes (reserved training items): the threshold is chosen here
    cls_monitor: int = 250  # val scenes scored after every epoch (the training curve)
    # -- segmentation scenes (1..4 items)
    seg_canvas: int = 96
    seg_items: tuple[int, int] = (1, 4)
    seg_scale: tuple[float, float] = (1.0, 2.0)
    seg_batch: int = 16
    seg_lr: float = 0.05
    seg_lr_mode: str = "poly"
    seg_weight_decay: float = 1e-4
    seg_opt: str = "sgd"
    seg_warmup_epochs: float = 1.0
    seg_label_smoothing: float = 0.0
    seg_ema_decay: float = 0.0
    seg_epochs: int = 6
    seg_val: int = 300
    seg_monitor: int = 100
    seg_from_classifier: bool = True  # backbone starts from the trained classifier
    # -- how the training time is split and bounded
    cls_share: float = 0.75  # of the training time; segmentation (started from the classifier)
    # needs much less: a few thousand scenes already give twice the floor
    min_images: tuple[int, int] = (1280, 480)  # (classification, segmentation) at least
    max_images: tuple[int, int] = (200_000, 60_000)  # enough on a GPU
    fixed_images: tuple[int, int] | None = None  # skip planning (quick recipes)
    activation_images: int = 32  # val scenes averaged for the gridding scores
    scene_rounds: int | None = 1  # reuse one set of training scenes every epoch (None: fresh)
    channels_last: bool = True  # 10-30% faster convolutions on CPU

    def model_channels(self, model: str) -> tuple[int, ...]:
        """The per-level widths ``model`` is trained at."""
        if model in self.channels:
            return tuple(self.channels[model])
        spec = get_spec(model).with_width(self.width_mult)
        return tuple(level.channels for level in spec.levels)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["channels"] = {m: list(self.model_channels(m)) for m in self.models}
        return data


def default_recipe(quick: bool = False) -> Recipe:
    """``drnet demo``: a narrow DRN-D-22 classifier, then a DRN-D-22 segmenter started from it."""
    recipe = Recipe(
        name="default",
        models=("drn_d_22",),
        # measured on 2 CPU cores: wide early levels (the items are small) and narrow late ones
        # train faster and reach a higher top-1 in the same time than 8..128 or 16..128
        channels={"drn_d_22": (16, 16, 32, 64, 64, 64, 64, 64)},
    )
    return quick_version(recipe) if quick else recipe


def paper_recipe(quick: bool = False) -> Recipe:
    """``drnet demo --paper``: five models, a quarter of their width, the same recipe each."""
    recipe = Recipe(
        name="paper",
        models=PAPER_MODELS,
        width_mult=0.25,
        budget_minutes=60.0,
        cls_val=1000,
        cls_holdout=500,
        seg_val=300,
    )
    return quick_version(recipe) if quick else recipe


def quick_version(recipe: Recipe) -> Recipe:
    """The same pipeline at toy size: tiny networks, a few hundred scenes, fixed image counts."""
    return dataclasses.replace(
        recipe,
        name=f"{recipe.name}-quick",
        channels={
            m: TINY_CHANNELS for m in recipe.models if m.startswith(("drn_b", "drn_c", "drn_d"))
        },
        width_mult=0.125,
        budget_minutes=1.0 if recipe.name == "default" else 3.0,
        # enough to learn clearly above chance in seconds (48 px canvases: the items fill them)
        cls_canvas=48,
        cls_batch=32,
        # four short epochs, a quarter of one warming up: with two epochs half of one the toy
        # classifier stayed near chance on some CPUs (top-1 0.18 on an AVX-512 bf16 EPYC)
        cls_epochs=4,
        cls_warmup_epochs=0.25,
        seg_warmup_epochs=0.1,
        cls_val=60,
        cls_holdout=40,
        cls_monitor=20,
        seg_batch=8,
        seg_epochs=2,
        seg_canvas=64,
        seg_scale=(0.8, 1.4),
        seg_val=12,
        seg_monitor=6,
        fixed_images=(8000, 960),
        min_images=(8000, 960),
        activation_images=4,
    )


def get_recipe(paper: bool = False, quick: bool = False) -> Recipe:
    """The recipe of ``drnet demo`` (``--paper``, ``--quick``)."""
    return paper_recipe(quick) if paper else default_recipe(quick)


def check_recipe(recipe: Recipe) -> None:
    """Refuse settings that cannot work (one-line :class:`DrnetError`)."""
    if not recipe.models:
        raise DrnetError(f"recipe {recipe.name}: no models")
    if recipe.budget_minutes <= 0:
        raise DrnetError(f"--budget-minutes must be positive; got {recipe.budget_minutes}")
    for what, count in (("cls_val", recipe.cls_val), ("cls_holdout", recipe.cls_holdout)):
        if count < 10 or count % 10:
            raise DrnetError(f"recipe {recipe.name}: {what} must be a positive multiple of 10")
