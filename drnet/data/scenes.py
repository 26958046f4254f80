"""Scenes composed from Fashion-MNIST items: built-in data for all three DRN tasks.

A scene is a square RGB canvas (a tinted crop of a CC0 texture photograph, or black) with one or
more Fashion-MNIST items pasted on it. Every scene comes with exact annotations:

* **Items.** An item is resized by a random factor of its 28 px side (``scale``; bilinear), and its
  *mask* is the resized item's pixels brighter than 10 of 255. The item is cropped to the tight box
  of its mask and placed at a random position entirely inside the canvas. Mask pixels are painted,
  fully opaque, in a random tint shaded by the item's intensity; other pixels keep the background.
  So the painted pixels, the label map and the box all follow from the same resized array.
* **Labels.** The label map is 0 for background and ``k + 1`` for Fashion-MNIST class ``k``
  (:data:`~drnet.data.fashion_mnist.CLASS_NAMES`). Later items occlude earlier ones and the label
  is that of the visible item. The ignore value 255 is never used.
* **Boxes.** ``(x1, y1, x2, y2)`` in 0-based pixel-edge coordinates: the item covers columns
  ``x1 .. x2-1`` and rows ``y1 .. y2-1``, and its mask touches all four sides (a tight box).

Splits and items. ``"train"`` scenes use training items; ``"holdout"`` scenes use a disjoint
tenth of the training items (per class, every tenth item in canonical order is reserved for it),
for choosing thresholds without touching test data; ``"val"`` scenes use only test items.

Determinism. Scene ``i`` of a split is a pure function of (task, seed, split, i, the settings and
the item source): it does not depend on how many scenes are drawn, in what order, or on the
machine. Writing twice with the same arguments gives byte-identical files (given the same numpy
and Pillow versions, whose random streams and resampling define the pixels). Classification
scene ``i`` shows an item of class ``i % 10``, so every 10 consecutive scenes are balanced.

On disk, :func:`make_classification_scenes` writes (``DATA`` is the output folder)::

    DATA/train/<class>/000000.png     ImageFolder trees for train, val and holdout
    DATA/val/<class>/...
    DATA/holdout/<class>/...
    DATA/boxes_<split>.csv            box_format csv/both: image,x1,y1,x2,y2,label
    DATA/boxes/<split>/<class>/000000.xml   box_format voc/both: PASCAL VOC annotation
    DATA/scenes.json                  the settings, counts and item source

CSV rows use the coordinates above and image paths relative to ``DATA``; ``label`` is the class
name. VOC files follow the VOC convention: 1-based inclusive pixel indices, i.e.
``xmin = x1 + 1, xmax = x2`` (:func:`read_boxes` reads either back into 0-based coordinates).

:func:`make_segmentation_scenes` writes the list-file layout of the original DRN code::

    DATA/info.json                    {"mean": [r,g,b], "std": [r,g,b], "classes": 11,
                                       "class_names": ["background", "tshirt_top", ...]}
    DATA/train_images.txt             one path per line, relative to DATA
    DATA/train_labels.txt
    DATA/val_images.txt
    DATA/val_labels.txt
    DATA/images/<split>/000000.png    RGB scenes
    DATA/labels/<split>/000000.png    single-channel ("L") label maps
    DATA/scenes.json

``mean``/``std`` are per-channel statistics of the training images in [0, 1] units.

In memory, :class:`ClassificationScenes` and :class:`SegmentationScenes` are map-style
``torch.utils.data.Dataset`` objects that render scenes on the fly, and their ``arrays()`` methods
return whole splits as numpy arrays.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from drnet import __version__
from drnet.atomic import atomic_save_image, atomic_write, atomic_write_text
from drnet.data.boxes import load_boxes
from drnet.data.fashion_mnist import CLASS_NAMES, FashionMNIST, load_fashion_mnist
from drnet.data.walk import FolderWalk
from drnet.errors import DataError

__all__ = [
    "BACKGROUNDS",
    "BOX_FORMATS",
    "HOLDOUT_EVERY",
    "SPLITS",
    "TEXTURE_NAMES",
    "ClassificationScenes",
    "ItemPool",
    "Placement",
    "Scene",
    "SceneSummary",
    "SegmentationScenes",
    "item_pool",
    "make_classification_scenes",
    "make_segmentation_scenes",
    "read_boxes",
    "render_scene",
]

SPLITS = ("train", "holdout", "val")
BACKGROUNDS = ("texture", "black")
BOX_FORMATS = ("voc", "csv", "both")
TEXTURE_NAMES = ("brick", "grass", "gravel")
#: Every HOLDOUT_EVERY-th training item of each class (in canonical order) is reserved for holdout.
HOLDOUT_EVERY = 10
ITEM_SIZE = 28
MASK_THRESHOLD = 10  # item pixels brighter than this (of 255) belong to the item
SEGMENTATION_CLASS_NAMES = ("background", *CLASS_NAMES)
MARKER_FILE = "scenes.json"

_SPLIT_CODES = {"train": 0, "holdout": 1, "val": 2}
_TASK_CODES = {"classification": 0, "segmentation": 1}


# ----------------------------------------------------------------------------------------- items
@dataclass(frozen=True)
class ItemPool:
    """The Fashion-MNIST items a split may use.

    Attributes:
        items: the Fashion-MNIST split the items come from (``test`` for ``val``, else ``train``).
        by_class: for each class, positions into ``items`` that this split may use.
        split: the scene split (``train``, ``holdout`` or ``val``).
    """

    items: FashionMNIST
    by_class: tuple[np.ndarray, ...]
    split: str


@functools.lru_cache(maxsize=16)
def _item_pool(split: str, source: str | None) -> ItemPool:
    items = load_fashion_mnist("test" if split == "val" else "train", source)
    by_class = []
    for k, positions in enumerate(items.by_class()):
        # positions are in canonical order, so the reservation does not depend on the seed
        rank = np.arange(len(positions))
        if split == "train":
            positions = positions[rank % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
        elif split == "holdout":
            positions = positions[rank % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
        if len(positions) == 0:
            raise DataError(f"Fashion-MNIST ({items.source}) has no {split} items of class {k}")
        by_class.append(positions)
    return ItemPool(items, tuple(by_class), split)


def item_pool(split: str, source: str | os.PathLike | None = None) -> ItemPool:
    """The items scenes of ``split`` may use (``source`` as in
    :func:`~drnet.data.fashion_mnist.load_fashion_mnist`)."""
    _check_choice("split", split, SPLITS)
    return _item_pool(split, None if source is None else str(source))


@functools.lru_cache(maxsize=1)
def _load_textures() -> tuple[np.ndarray, ...]:
    textures = []
    for name in TEXTURE_NAMES:
        resource = resources.files("drnet") / "assets" / "textures" / f"{name}.png"
        try:
            with resource.open("rb") as f, Image.open(f) as image:
                textures.append(np.asarray(image.convert("L"), dtype=np.uint8))
        except OSError as exc:
            raise DataError(
                f"packaged texture drnet/assets/textures/{name}.png is unreadable ({exc})"
            ) from exc
    return tuple(textures)


# ------------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Placement:
    """One item pasted on a scene.

    Attributes:
        label: Fashion-MNIST class 0..9.
        item: the item's index in the canonical Fashion-MNIST file of its split (train or test).
        box: ``(x1, y1, x2, y2)``, 0-based, ends exclusive: the tight box of the item's mask, which
            may be partly hidden by later items.
        area: pixels in the item's mask, before any later item hides some of them.
    """

    label: int
    item: int
    box: tuple[int, int, int, int]
    area: int


@dataclass(frozen=True)
class Scene:
    """A rendered scene: ``image`` uint8 ``[H, W, 3]``, ``mask`` uint8 ``[H, W]`` (0 background,
    ``k + 1`` visible item of class ``k``) and the items in paste order."""

    image: np.ndarray
    mask: np.ndarray
    placements: tuple[Placement, ...]


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise DataError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_settings(canvas: int, scale: Sequence[float], background: str) -> tuple[float, float]:
    _check_choice("background", background, BACKGROUNDS)
    if int(canvas) != canvas or canvas < 8:
        raise DataError(f"canvas must be an integer of at least 8 pixels; got {canvas}")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise DataError(f"scale must be (min, max) with 0 < min <= max; got {tuple(scale)}")
    if round(ITEM_SIZE * scale[1]) > canvas:
        raise DataError(
            f"scale max {scale[1]} makes items of {round(ITEM_SIZE * scale[1])} px, larger than "
            f"the {canvas} px canvas"
        )
    return float(scale[0]), float(scale[1])


def _tint(rng: np.random.Generator, low: float) -> np.ndarray:
    """A random colour with its brightest channel at 1 and the others in [low, 1]."""
    colour = rng.uniform(low, 1.0, size=3)
    return colour / colour.max()


def _background(rng: np.random.Generator, canvas: int, background: str) -> np.ndarray:
    """Float ``[canvas, canvas, 3]`` background in 0..255."""
    if background == "black":
        return np.zeros((canvas, canvas, 3), dtype=np.float32)
    textures = _load_textures()
    texture = textures[rng.integers(len(textures))]
    side = texture.shape[0]
    crop = int(rng.integers(min(side, max(8, (3 * canvas) // 4)), min(side, 2 * canvas) + 1))
    y, x = rng.integers(0, side - crop + 1, size=2)
    patch = np.rot90(texture[y : y + crop, x : x + crop], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = Image.fromarray(np.ascontiguousarray(patch)).resize(
        (canvas, canvas), Image.Resampling.BILINEAR
    )
    grey = np.asarray(patch, dtype=np.float32) / 255.0
    contrast = rng.uniform(0.4, 1.0)
    level = rng.uniform(0.15, 0.55)
    grey = np.clip(level + contrast * (grey - grey.mean()), 0.0, 1.0)
    tint = _tint(rng, 0.4).astype(np.float32)
    return grey[:, :, None] * (255.0 * tint)


def _resized_item(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The item resized to ``size`` and cropped to its mask's tight box: (pixels, mask)."""
    resized = np.asarray(
        Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8
    )
    mask = resized > MASK_THRESHOLD
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return resized[crop], mask[crop]


def render_scene(
    pool: ItemPool,
    rng: np.random.Generator,
    classes: Sequence[int],
    *,
    canvas: int,
    scale: tuple[float, float],
    background: str,
) -> Scene:
    """Render one scene with one item of each class in ``classes`` (pasted in that order).

    ``rng`` supplies every random choice, so equal generator states give equal scenes. Most
    callers want :class:`ClassificationScenes` or :class:`SegmentationScenes` instead.
    """
    image = _background(rng, canvas, background)
    mask = np.zeros((canvas, canvas), dtype=np.uint8)
    placements = []
    for label in classes:
        positions = pool.by_class[label]
        for _ in range(100):  # redraw items that vanish at a small scale (rare)
            position = int(positions[rng.integers(len(positions))])
            size = max(2, round(ITEM_SIZE * rng.uniform(*scale)))
            resized = _resized_item(pool.items.images[position], size)
            if resized is not None:
                break
        else:
            raise DataError(f"no visible class-{label} item at scale {scale}; use a larger scale")
        pixels, item_mask = resized
        h, w = pixels.shape
        y0 = int(rng.integers(0, canvas - h + 1))
        x0 = int(rng.integers(0, canvas - w + 1))
        shade = 0.3 + (0.7 / 255.0) * pixels.astype(np.float32)
        colour = shade[:, :, None] * (255.0 * _tint(rng, 0.1).astype(np.float32))
        region = (slice(y0, y0 + h), slice(x0, x0 + w))
        image[region][item_mask] = colour[item_mask]
        mask[region][item_mask] = label + 1
        item = int(pool.items.indices[position])
        box = (x0, y0, x0 + w, y0 + h)
        placements.append(Placement(int(label), item, box, int(item_mask.sum())))
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(image, mask, tuple(placements))


def _scene_rng(task: str, seed: int, split: str, index: int) -> np.random.Generator:
    if seed < 0:
        raise DataError(f"seed must be >= 0; got {seed}")
    entropy = [_TASK_CODES[task], int(seed), _SPLIT_CODES[split], int(index)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


# ------------------------------------------------------------------------------------- datasets
class _Scenes(torch.utils.data.Dataset):
    task = ""

    def __init__(
        self,
        split: str,
        length: int,
        *,
        canvas: int,
        scale: Sequence[float],
        background: str,
        seed: int,
        source: str | os.PathLike | None,
    ) -> None:
        _check_choice("split", split, SPLITS)
        if length < 0:
            raise DataError(f"number of {split} scenes must be >= 0; got {length}")
        self.split = split
        self.length = int(length)
        self.canvas = int(canvas)
        self.scale = _check_settings(canvas, scale, background)
        self.background = background
        self.seed = int(seed)
        self.pool = item_pool(split, source)

    def __len__(self) -> int:
        return self.length

    def _classes(self, index: int, rng: np.random.Generator) -> list[int]:
        raise NotImplementedError

    def render(self, index: int) -> Scene:
        """Scene ``index`` (any non-negative integer, also beyond ``len(self)``)."""
        if index < 0:
            raise IndexError(index)
        rng = _scene_rng(self.task, self.seed, self.split, index)
        return render_scene(
            self.pool,
            rng,
            self._classes(index, rng),
            canvas=self.canvas,
            scale=self.scale,
            background=self.background,
        )

    def _index(self, index: int) -> int:
        if not -self.length <= index < self.length:
            raise IndexError(f"scene {index} out of range for {self.length} {self.split} scenes")
        return index % self.length


class ClassificationScenes(_Scenes):
    """Single-item scenes for classification and localization, rendered on the fly.

    ``dataset[i]`` is ``(PIL RGB image, target)`` (or ``transform(image), target``), where
    ``target`` indexes :attr:`classes`, the class names sorted as torchvision's ``ImageFolder``
    sorts the folders written by :func:`make_classification_scenes`, so a model trained on either
    uses the same indices. :meth:`render` also gives the box. Scene ``i`` has class ``i % 10``.

    Args:
        split: ``"train"``, ``"holdout"`` or ``"val"`` (see the module docstring).
        length: number of scenes.
        canvas: scene side in pixels.
        scale: (min, max) item size as a multiple of 28 px, drawn uniformly.
        background: ``"texture"`` or ``"black"``.
        seed: any non-negative integer.
        source: the Fashion-MNIST items (see :func:`~drnet.data.fashion_mnist.load_fashion_mnist`).
        transform: applied to the PIL image.
    """

    task = "classification"

    def __init__(
        self,
        split: str,
        length: int,
        *,
        canvas: int = 64,
        scale: Sequence[float] = (0.8, 1.4),
        background: str = "texture",
        seed: int = 0,
        source: str | os.PathLike | None = None,
        transform: Callable | None = None,
    ) -> None:
        super().__init__(
            split,
            length,
            canvas=canvas,
            scale=scale,
            background=background,
            seed=seed,
            source=source,
        )
        self.transform = transform
        self.classes = sorted(CLASS_NAMES)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        # Fashion-MNIST label -> target index
        self.label_to_target = [self.class_to_idx[name] for name in CLASS_NAMES]

    def _classes(self, index: int, rng: np.random.Generator) -> list[int]:
        return [index % len(CLASS_NAMES)]

    def __getitem__(self, index: int) -> tuple:
        scene = self.render(self._index(index))
        image = Image.fromarray(scene.image, mode="RGB")
        target = self.label_to_target[scene.placements[0].label]
        return (self.transform(image) if self.transform else image), target

    def arrays(self, progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All scenes as ``(images uint8 [N,H,W,3], targets int64 [N], boxes int64 [N,4])``."""
        images = np.empty((self.length, self.canvas, self.canvas, 3), dtype=np.uint8)
        targets = np.empty(self.length, dtype=np.int64)
        boxes = np.empty((self.length, 4), dtype=np.int64)
        for i in tqdm(range(self.length), desc=f"{self.split} scenes", disable=not progress):
            scene = self.render(i)
            images[i] = scene.image
            targets[i] = self.label_to_target[scene.placements[0].label]
            boxes[i] = scene.placements[0].box
        return images, targets, boxes


class SegmentationScenes(_Scenes):
    """Multi-item scenes with exact label maps, rendered on the fly.

    ``dataset[i]`` is ``(PIL RGB image, PIL "L" label map)``, or ``transforms(image, label)``.
    Labels: 0 background, ``k + 1`` for Fashion-MNIST class ``k``; 11 classes in all
    (:attr:`class_names`). Each scene has between ``items[0]`` and ``items[1]`` items of
    uniformly drawn classes.

    Args:
        split: ``"train"``, ``"holdout"`` or ``"val"`` (see the module docstring).
        length: number of scenes.
        canvas: scene side in pixels.
        items: (min, max) number of items per scene, inclusive.
        scale: (min, max) item size as a multiple of 28 px, drawn uniformly.
        background: ``"texture"`` or ``"black"``.
        seed: any non-negative integer.
        source: the Fashion-MNIST items (see :func:`~drnet.data.fashion_mnist.load_fashion_mnist`).
        transforms: called with ``(image, label)``, returns the pair to yield.
    """

    task = "segmentation"
    class_names = SEGMENTATION_CLASS_NAMES
    num_classes = len(SEGMENTATION_CLASS_NAMES)

    def __init__(
        self,
        split: str,
        length: int,
        *,
        canvas: int = 96,
        items: Sequence[int] = (1, 4),
        scale: Sequence[float] = (1.0, 2.0),
        background: str = "texture",
        seed: int = 0,
        source: str | os.PathLike | None = None,
        transforms: Callable | None = None,
    ) -> None:
        super().__init__(
            split,
            length,
            canvas=canvas,
            scale=scale,
            background=background,
            seed=seed,
            source=source,
        )
        if len(items) != 2 or not 1 <= items[0] <= items[1]:
            raise DataError(f"items must be (min, max) with 1 <= min <= max; got {tuple(items)}")
        self.items = (int(items[0]), int(items[1]))
        self.transforms = transforms

    def _classes(self, index: int, rng: np.random.Generator) -> list[int]:
        count = int(rng.integers(self.items[0], self.items[1] + 1))
        return [int(k) for k in rng.integers(len(CLASS_NAMES), size=count)]

    def __getitem__(self, index: int) -> tuple:
        scene = self.render(self._index(index))
        image = Image.fromarray(scene.image, mode="RGB")
        label = Image.fromarray(scene.mask, mode="L")
        return self.transforms(image, label) if self.transforms else (image, label)

    def arrays(self, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """All scenes as ``(images uint8 [N,H,W,3], labels uint8 [N,H,W])``."""
        images = np.empty((self.length, self.canvas, self.canvas, 3), dtype=np.uint8)
        labels = np.empty((self.length, self.canvas, self.canvas), dtype=np.uint8)
        for i in tqdm(range(self.length), desc=f"{self.split} scenes", disable=not progress):
            scene = self.render(i)
            images[i] = scene.image
            labels[i] = scene.mask
        return images, labels


# --------------------------------------------------------------------------------------- writers
@dataclass(frozen=True)
class SceneSummary:
    """What a writer produced: the folder, the task, scenes per split and the item source."""

    out_dir: Path
    task: str
    counts: dict[str, int]
    source: str
    files: int

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {split}" for split, n in self.counts.items())
        return (
            f"{self.task} scenes in {self.out_dir}: {counts} "
            f"({self.files} files; items: {self.source})"
        )


# the names the scene writers give files inside their folders (000123.png, 000123.xml), and
# the temporary files of an atomic write they may have left when interrupted
_SCENE_FILE = re.compile(r"\d{6}\.(png|xml)|\.\d{6}\.(png|xml)\..+\.tmp")


def _foreign_files(out_dir: Path, owned: Sequence[str]) -> list[Path]:
    """Files inside the folders of ``owned`` that a scene writer would not have written (a
    user's notes, an image of their own): ``--overwrite`` must not delete them unnamed."""
    found = []
    for name in owned:
        folder = out_dir / name
        if folder.is_dir() and not folder.is_symlink():
            found += [
                p
                for p in sorted(folder.rglob("*"))
                if not p.is_dir() and not _SCENE_FILE.fullmatch(p.name)
            ]
    return found


def _prepare_out_dir(out_dir: Path, owned: Sequence[str], overwrite: bool) -> None:
    """Make ``out_dir``; refuse a non-empty one unless it holds earlier scenes and overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / MARKER_FILE).is_file():
            raise DataError(
                f"{out_dir}: directory is not empty and was not written by drnet data scenes; "
                "choose a new folder"
            )
        if not overwrite:
            what = "scenes" if _marker_complete(out_dir) else "scenes of an interrupted run"
            raise DataError(f"{out_dir}: already holds {what}; pass --overwrite to replace them")
        foreign = _foreign_files(out_dir, owned)
        if foreign:
            shown = ", ".join(str(p.relative_to(out_dir)) for p in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise DataError(
                f"{out_dir}: --overwrite would delete {len(foreign)} file(s) that drnet data "
                f"scenes did not write: {shown}{more}; move them out of {out_dir} first"
            )
        for name in (*owned, MARKER_FILE):
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        for path in out_dir.glob("boxes_*.csv"):
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    # written first, replaced by the settings at the end: an interrupted run leaves a folder
    # that says so, and that --overwrite may replace
    atomic_write_text(
        out_dir / MARKER_FILE,
        json.dumps({"complete": False, "note": "drnet data scenes did not finish here"}) + "\n",
    )


def _marker_complete(out_dir: Path) -> bool:
    try:
        return json.loads((out_dir / MARKER_FILE).read_text()).get("complete", True) is not False
    except (OSError, ValueError, AttributeError):
        return False


def _save_png(array: np.ndarray, path: Path, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(Image.fromarray(array, mode=mode), path, format="PNG")


def _voc_xml(image_path: str, canvas: int, box: tuple[int, int, int, int], name: str) -> bytes:
    folder, _, filename = image_path.rpartition("/")
    root = ElementTree.Element("annotation")
    for tag, text in (("folder", folder), ("filename", filename), ("path", image_path)):
        ElementTree.SubElement(root, tag).text = text
    size = ElementTree.SubElement(root, "size")
    for tag, value in (("width", canvas), ("height", canvas), ("depth", 3)):
        ElementTree.SubElement(size, tag).text = str(value)
    ElementTree.SubElement(root, "segmented").text = "0"
    obj = ElementTree.SubElement(root, "object")
    for tag, text in (("name", name), ("pose", "Unspecified"), ("truncated", "0")):
        ElementTree.SubElement(obj, tag).text = text
    ElementTree.SubElement(obj, "difficult").text = "0"
    bndbox = ElementTree.SubElement(obj, "bndbox")
    x1, y1, x2, y2 = box
    for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
        ElementTree.SubElement(bndbox, tag).text = str(value)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def _write_marker(out_dir: Path, settings: dict) -> None:
    settings = {**settings, "complete": True, "drnet_version": __version__}
    atomic_write_text(out_dir / MARKER_FILE, json.dumps(settings, indent=2) + "\n")


def make_classification_scenes(
    out_dir: str | os.PathLike,
    n_train: int,
    n_test: int,
    n_holdout: int | None = None,
    *,
    canvas: int = 64,
    scale: Sequence[float] = (0.8, 1.4),
    background: str = "texture",
    seed: int = 0,
    box_format: str = "both",
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> SceneSummary:
    """Write single-item scenes as ImageFolder trees plus boxes (layout: module docstring).

    Args:
        out_dir: output folder; must be new or empty, or hold earlier scenes with ``overwrite``.
        n_train: scenes in ``train/`` (training items).
        n_test: scenes in ``val/`` (test items only).
        n_holdout: scenes in ``holdout/`` (reserved training items), for choosing thresholds;
            None means ``n_test``.
        canvas: see :class:`ClassificationScenes`.
        scale: see :class:`ClassificationScenes`.
        background: see :class:`ClassificationScenes`.
        seed: see :class:`ClassificationScenes`.
        source: see :class:`ClassificationScenes`.
        box_format: ``"voc"`` (XML per image), ``"csv"`` (one CSV per split) or ``"both"``.
        overwrite: replace the scenes of an earlier run in ``out_dir``.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`SceneSummary`.

    Raises:
        DataError: bad arguments, a non-empty ``out_dir``, or unreadable items.
    """
    _check_choice("box_format", box_format, BOX_FORMATS)
    counts = {
        "train": n_train,
        "val": n_test,
        "holdout": n_test if n_holdout is None else n_holdout,
    }
    datasets = {
        split: ClassificationScenes(
            split,
            n,
            canvas=canvas,
            scale=scale,
            background=background,
            seed=seed,
            source=source,
        )
        for split, n in counts.items()
    }
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, (*counts, "boxes"), overwrite)
    files = 0
    bar = tqdm(total=sum(counts.values()), desc="scenes", unit="img", disable=not progress)
    for split, dataset in datasets.items():
        rows = ["image,x1,y1,x2,y2,label\n"]
        for i in range(len(dataset)):
            scene = dataset.render(i)
            (placement,) = scene.placements
            name = CLASS_NAMES[placement.label]
            image_path = f"{split}/{name}/{i:06d}.png"
            _save_png(scene.image, out_dir / image_path, "RGB")
            files += 1
            rows.append(f"{image_path},{','.join(map(str, placement.box))},{name}\n")
            if box_format in ("voc", "both"):
                xml_path = out_dir / "boxes" / split / name / f"{i:06d}.xml"
                xml_path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(xml_path, "wb", sync=False) as handle:
                    handle.write(_voc_xml(image_path, canvas, placement.box, name))
                files += 1
            bar.update()
        if box_format in ("csv", "both"):
            atomic_write_text(out_dir / f"boxes_{split}.csv", "".join(rows))
            files += 1
    bar.close()
    source_used = datasets["train"].pool.items.source
    _write_marker(
        out_dir,
        {
            "task": "classification",
            "counts": counts,
            "canvas": canvas,
            "scale": list(datasets["train"].scale),
            "background": background,
            "seed": seed,
            "box_format": box_format,
            "item_source": source_used,
            "class_names": list(CLASS_NAMES),
            "holdout": f"every {HOLDOUT_EVERY}th training item per class, unused by train scenes",
            "box_convention": "csv: 0-based, x2/y2 exclusive; voc: 1-based inclusive",
        },
    )
    return SceneSummary(out_dir, "classification", counts, source_used, files + 1)


def make_segmentation_scenes(
    out_dir: str | os.PathLike,
    n_train: int,
    n_test: int,
    *,
    canvas: int = 96,
    items: Sequence[int] = (1, 4),
    scale: Sequence[float] = (1.0, 2.0),
    background: str = "texture",
    seed: int = 0,
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> SceneSummary:
    """Write multi-item scenes with label maps in the list-file layout (module docstring).

    Args:
        out_dir: output folder; must be new or empty, or hold earlier scenes with ``overwrite``.
        n_train: training scenes (training items only).
        n_test: ``val`` scenes (test items only).
        canvas: see :class:`SegmentationScenes`.
        items: see :class:`SegmentationScenes`.
        scale: see :class:`SegmentationScenes`.
        background: see :class:`SegmentationScenes`.
        seed: see :class:`SegmentationScenes`.
        source: see :class:`SegmentationScenes`.
        overwrite: replace the scenes of an earlier run in ``out_dir``.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`SceneSummary`.

    Raises:
        DataError: bad arguments, a non-empty ``out_dir``, or unreadable items.
    """
    counts = {"train": n_train, "val": n_test}
    datasets = {
        split: SegmentationScenes(
            split,
            n,
            canvas=canvas,
            items=items,
            scale=scale,
            background=background,
            seed=seed,
            source=source,
        )
        for split, n in counts.items()
    }
    if n_train < 1:
        raise DataError(f"need at least one training scene for info.json statistics; got {n_train}")
    out_dir = Path(out_dir)
    owned = (
        "images",
        "labels",
        "info.json",
        *(f"{s}_{k}.txt" for s in counts for k in ("images", "labels")),
    )
    _prepare_out_dir(out_dir, owned, overwrite)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    bar = tqdm(total=sum(counts.values()), desc="scenes", unit="img", disable=not progress)
    for split, dataset in datasets.items():
        image_lines, label_lines = [], []
        for i in range(len(dataset)):
            scene = dataset.render(i)
            image_path, label_path = f"images/{split}/{i:06d}.png", f"labels/{split}/{i:06d}.png"
            _save_png(scene.image, out_dir / image_path, "RGB")
            _save_png(scene.mask, out_dir / label_path, "L")
            image_lines.append(image_path + "\n")
            label_lines.append(label_path + "\n")
            if split == "train":
                pixels = scene.image.reshape(-1, 3).astype(np.float64) / 255.0
                total += pixels.sum(axis=0)
                total_sq += np.square(pixels).sum(axis=0)
            bar.update()
        atomic_write_text(out_dir / f"{split}_images.txt", "".join(image_lines))
        atomic_write_text(out_dir / f"{split}_labels.txt", "".join(label_lines))
    bar.close()
    n_pixels = n_train * canvas * canvas
    mean = total / n_pixels
    std = np.sqrt(np.maximum(total_sq / n_pixels - np.square(mean), 0.0))
    info = {
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "classes": len(SEGMENTATION_CLASS_NAMES),
        "class_names": list(SEGMENTATION_CLASS_NAMES),
    }
    atomic_write_text(out_dir / "info.json", json.dumps(info, indent=2) + "\n")
    source_used = datasets["train"].pool.items.source
    _write_marker(
        out_dir,
        {
            "task": "segmentation",
            "counts": counts,
            "canvas": canvas,
            "items": list(datasets["train"].items),
            "scale": list(datasets["train"].scale),
            "background": background,
            "seed": seed,
            "item_source": source_used,
            "class_names": list(SEGMENTATION_CLASS_NAMES),
        },
    )
    files = 2 * sum(counts.values()) + 2 * len(counts) + 2
    return SceneSummary(out_dir, "segmentation", counts, source_used, files)


# --------------------------------------------------------------------------------------- reading
def read_boxes(data_dir: str | os.PathLike, split: str) -> dict[str, list[tuple]]:
    """Read the boxes of a classification-scenes split written by this module.

    Reads ``boxes_<split>.csv`` when present, else the VOC files under ``boxes/<split>/``,
    through the one box reader, :func:`drnet.data.boxes.load_boxes` (which localization uses).

    Returns:
        ``{image path relative to data_dir: [(x1, y1, x2, y2, label name), ...]}`` in 0-based
        pixel-edge coordinates (ends exclusive), whichever format was read.

    Raises:
        DataError: neither format is there, or a file is malformed (named in the message).
    """
    data_dir = Path(data_dir)
    csv_path = data_dir / f"boxes_{split}.csv"
    xml_dir = data_dir / "boxes" / split
    if csv_path.is_file():
        source = csv_path
    elif xml_dir.is_dir():
        source = xml_dir
    else:
        raise DataError(f"{data_dir}: has neither boxes_{split}.csv nor boxes/{split}/")
    split_dir = data_dir / split
    keys = [p.relative_to(split_dir).as_posix() for p in FolderWalk(split_dir, (".png",)).files]
    table = load_boxes(source, keys, root=split_dir)
    return {
        f"{split}/{key}": [
            (*(int(v) for v in box.tolist()), label)
            for box, label in zip(entry.boxes, entry.labels, strict=True)
        ]
        for key, entry in sorted(table.items())
    }
