"""``drnet demo``: the paper's three experiments in miniature, within a time budget.

:func:`run_demo` reads top to bottom:

1. set up (device, seed, the Fashion-MNIST items, normalisation statistics);
2. write the evaluation scenes to disk (``data/``: ``val`` and ``holdout`` ImageFolder trees with
   boxes, the layout of ``drnet data scenes``), which the localization library reads;
3. probe training and inference speed for a few iterations (and the number of torch threads)
   and *plan* the number of training scenes so that the whole run fits the budget (printed up
   front as the time estimate);
4. train each classifier with the shared engine on scenes rendered in memory, then score
   top-1/top-5 on the ``val`` scenes (test items) and weakly-supervised localization on them,
   with the box threshold chosen on the ``holdout`` scenes and the centred-box prior beside it;
5. re-plan with the time left, train each segmenter (backbone started from its classifier) and
   score mIoU beside the all-background baseline;
6. collect per-level activation maps and gridding scores;
7. write ``metrics.json`` and the self-contained ``report.html``.

Given its plan (the image counts and thread count in ``metrics.json``'s ``plan``), a run is a pure
function of the seed; the plan itself depends on the machine's speed, and ``cls_images``,
``seg_images`` and ``threads`` fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from drnet.demo.budget import (
    ENGINE_OVERHEAD,
    PER_IMAGE_BOX_OVERHEAD_S,
    REPORT_OVERHEAD_S,
    Plan,
    Rates,
    choose_threads,
    classification_reserve,
    make_plan,
    per_epoch,
    probe,
    render_share,
    report_seconds,
    segmentation_images,
    segmentation_reserve,
    slowdown,
    time_limit,
    use_channels_last,
)
from drnet.demo.config import (
    MARKER_FILE,
    METRICS_FILE,
    OWNED,
    REPORT_FILE,
    DemoConfig,
    fmt_s,
    item_source,
    prepare_output,
    say,
)
from drnet.demo.data import ACTIVATION_CANVAS, SceneData, prepare_data
from drnet.demo.metrics import FLOORS, assemble_metrics, missed_floors, summary_lines, write_metrics
from drnet.demo.recipes import Recipe, check_recipe, get_recipe
from drnet.demo.report import write_report
from drnet.demo.seeds import run_seeds
from drnet.demo.stages import (
    activation_analysis,
    background_baseline,
    evaluate_classification,
    evaluate_localization_stage,
    evaluate_segmentation_stage,
    localization_examples,
    run_record,
    train_demo_classifier,
    train_run,
    train_segmenter,
    use_amp,
)
from drnet.engine.checkpoint import CHECKPOINT_EMA, CHECKPOINT_LAST
from drnet.engine.distributed import resolve_device
from drnet.engine.precision import amp_dtype
from drnet.errors import DrnetError
from drnet.machine import load_average
from drnet.speed.inference import resolve_inference_dtype
from drnet.timing import StageClock, process_age

# the names this module defined before it was split by job, kept importable from here
_train_run = train_run
train_classifier = train_demo_classifier  # deprecated: it clashed with the library's name
__all__ = [
    "ACTIVATION_CANVAS",
    "ENGINE_OVERHEAD",
    "FLOORS",
    "MARKER_FILE",
    "METRICS_FILE",
    "OWNED",
    "PER_IMAGE_BOX_OVERHEAD_S",
    "REPORT_FILE",
    "REPORT_OVERHEAD_S",
    "DemoConfig",
    "Plan",
    "Rates",
    "SceneData",
    "activation_analysis",
    "background_baseline",
    "choose_threads",
    "evaluate_classification",
    "evaluate_localization_stage",
    "evaluate_segmentation_stage",
    "localization_examples",
    "make_plan",
    "missed_floors",
    "prepare_data",
    "probe",
    "process_age",
    "render_share",
    "run_demo",
    "summary_lines",
    "train_classifier",
    "train_demo_classifier",
    "train_segmenter",
    "use_amp",
    "use_channels_last",
]


def dtype_name(dtype: torch.dtype) -> str:
    """``"bfloat16"`` for ``torch.bfloat16``."""
    return str(dtype).removeprefix("torch.")


def run_demo(config: DemoConfig) -> dict:
    """Run the demo as ``config`` says; writes ``metrics.json`` and ``report.html`` into
    ``config.output_dir`` and returns the metrics."""
    if config.seeds < 1:
        raise DrnetError(f"--seeds must be at least 1; got {config.seeds}")
    if config.seeds > 1:
        prepare_output(Path(config.output_dir))
        return run_seeds(config, run_demo)
    threads = torch.get_num_threads()
    try:
        return _run_demo(config)
    finally:
        torch.set_num_threads(threads)  # the run may choose its own


@dataclass
class _DemoRun:
    """What the stages of a demo run share."""

    config: DemoConfig
    recipe: Recipe
    clock: StageClock
    device: torch.device
    out: Path
    load_start: list[float] | None
    data: SceneData | None = None
    rates: dict[str, Rates] = field(default_factory=dict)
    plan: Plan | None = None
    fixed_plan: bool = False
    per_model: dict[str, dict] = field(default_factory=dict)
    classifiers: dict[str, nn.Module] = field(default_factory=dict)
    slowdown: float = 1.0  # actual over probed training time, measured on classification

    @property
    def models_dir(self) -> Path:
        return self.out / "models"

    @property
    def amp(self) -> bool:
        return use_amp(self.config, self.device)

    @property
    def dtype(self) -> str:
        """What evaluation computes in: ``"bfloat16"`` or ``"float32"``."""
        return dtype_name(resolve_inference_dtype(self.config.dtype, self.device))

    def precision(self) -> dict[str, str]:
        """``metrics.json``'s ``precision``: what was asked, and what training and evaluation
        computed in."""
        training = amp_dtype(self.device) if self.amp else torch.float32
        return {
            "requested": self.config.dtype,
            "training": dtype_name(training),
            "evaluation": self.dtype,
        }

    @property
    def report_s(self) -> float:
        return report_seconds(self.recipe)


def _run_demo(config: DemoConfig) -> dict:
    run = _set_up(config)
    with run.clock.stage("data"):
        say(f"[1/6] generating scenes (items: {item_source(config)}) ...")
        run.data = prepare_data(
            run.recipe, run.out, config.seed, item_source(config), config.progress
        )
    _plan_run(run)
    for index, m in enumerate(run.recipe.models):
        _classification_stage(run, index, m)
    _replan_segmentation(run)
    for index, m in enumerate(run.recipe.models):
        _segmentation_stage(run, index, m)
    return _finish(run)


def _set_up(config: DemoConfig) -> _DemoRun:
    recipe = config.recipe or get_recipe(config.paper, config.quick)
    if config.budget_minutes is not None and config.budget_minutes <= 0:
        raise DrnetError(f"--budget-minutes must be positive; got {config.budget_minutes}")
    check_recipe(recipe)
    if config.workers < 0:
        raise DrnetError(f"--workers must be >= 0; got {config.workers}")
    clock = StageClock(60.0 * (config.budget_minutes or recipe.budget_minutes), config.started)
    if clock.elapsed() > 0.5:
        clock.stages["start_up"] = round(clock.elapsed(), 3)
    load_start = load_average()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    out = Path(config.output_dir)
    prepare_output(out)
    say(
        f"drnet demo ({recipe.name} recipe): {', '.join(recipe.models)}; budget "
        f"{fmt_s(clock.budget_s)} on {device.type} ({torch.get_num_threads()} threads); "
        f"load average {load_start}"
    )
    run = _DemoRun(config, recipe, clock, device, out, load_start)
    run.per_model = {
        m: {
            "model": m,
            "channels": list(recipe.model_channels(m)),
            "channels_last": use_channels_last(recipe, m),
        }
        for m in recipe.models
    }
    return run


def _plan_run(run: _DemoRun) -> None:
    """Probe each model's speed (and the thread count), then plan the training scenes."""
    config, recipe, clock = run.config, run.recipe, run.clock
    with clock.stage("probe"):
        say("[2/6] measuring training speed ...")
        choose = config.threads is None and not recipe.fixed_images
        rates = {
            m: probe(m, recipe, run.data, run.device, config.seed, choose, run.amp)
            for m in recipe.models
        }
        threads = choose_threads(rates) if choose else torch.get_num_threads()
        if threads == 1:
            rates = {m: r.with_one_thread() for m, r in rates.items()}
        torch.set_num_threads(threads)
    run.rates = rates
    run.plan = plan = make_plan(recipe, rates, clock.elapsed(), clock.budget_s, config)
    say(
        f"plan: {plan.cls_images:,} classification scenes ({plan.cls_epochs} epochs) and "
        f"{plan.seg_images:,} segmentation scenes ({plan.seg_epochs} epochs) per model"
    )
    for m, r in rates.items():
        say(
            f"      {m}: {1 / r.cls_train:.0f} classification and {1 / r.seg_train:.0f} "
            f"segmentation scenes/s with {threads} torch thread{'s' if threads > 1 else ''}"
        )
    for stage, seconds in plan.stages_s.items():
        say(f"      {stage.replace('_', ' '):<28} ~{fmt_s(seconds)}")
    say(f"estimated total: {fmt_s(plan.estimate_s)} (budget {fmt_s(clock.budget_s)})")
    # a plan fixed by hand (or by the quick recipe) is trained in full: no hard stop
    run.fixed_plan = bool(recipe.fixed_images or config.cls_images or config.seg_images)
    if run.fixed_plan:
        say("note: the plan is fixed, so training is not stopped at the budget")


def _classification_stage(run: _DemoRun, index: int, m: str) -> None:
    """Train classifier ``m`` (the time limit keeps room for what follows), then score
    classification and localization."""
    recipe, rates, clock, config = run.recipe, run.rates, run.clock, run.config
    models = recipe.models
    reserve = classification_reserve(recipe, rates, index)
    limit = None if run.fixed_plan else time_limit(clock, reserve)
    planned = run.plan.cls_images * rates[m].cls_train
    say(f"[3/6] training classifier {m} ({index + 1}/{len(models)}): ~{fmt_s(planned)}")
    run_dir = run.models_dir / m / "classification"
    with clock.stage("classification_training"):
        trained = train_demo_classifier(
            m, recipe, run.data, run.plan, run_dir, config, run.device, limit
        )
    with clock.stage("classification_evaluation"):
        model, cls = evaluate_classification(
            trained, run.data, run_dir, run.device, config.progress, run.dtype
        )
    say(f"      {m}: top-1 {cls['top1']:.3f}, top-5 {cls['top5']:.3f}")
    say(f"[4/6] localization {m}: threshold on the holdout scenes, scored on val scenes")
    with clock.stage("localization"):
        loc = evaluate_localization_stage(
            model, trained["card"], run.data, run.models_dir / m / "localization", run.device,
            config.progress, run.dtype,
        )  # fmt: skip
    say(
        f"      {m}: top-1 localization accuracy {loc['top1_accuracy']:.3f} at "
        f"t = {loc['threshold']:.2f}; centred-box prior "
        f"{loc['centred_box_prior']['top1_accuracy']:.3f}"
    )
    cls.update(run_record(trained, run.plan.cls_images, 1 / rates[m].cls_train))
    run.per_model[m].update(classification=cls, localization=loc)
    run.classifiers[m] = model


def _replan_segmentation(run: _DemoRun) -> None:
    """Segmentation gets the time classification left (at the speed it turned out to have)."""
    recipe, rates, plan = run.recipe, run.rates, run.plan
    run.slowdown = measured = slowdown(run.per_model, rates, plan)
    if run.fixed_plan:
        return
    images, seg_cost = segmentation_images(recipe, rates, run.clock, measured)
    plan.seg_per_epoch = per_epoch(
        images, recipe.seg_epochs, recipe.seg_batch, recipe.min_images[1]
    )
    say(
        f"re-plan with the time left: {plan.seg_images:,} segmentation scenes per model "
        f"(~{fmt_s(plan.seg_images * seg_cost)})"
    )


def _segmentation_stage(run: _DemoRun, index: int, m: str) -> None:
    """Train segmenter ``m`` (backbone from its classifier), then score it."""
    recipe, rates, models = run.recipe, run.rates, run.recipe.models
    reserve = segmentation_reserve(recipe, rates, index, run.slowdown)
    limit = None if run.fixed_plan else time_limit(run.clock, reserve)
    planned = run.plan.seg_images * rates[m].seg_train * run.slowdown
    backbone = None
    if recipe.seg_from_classifier:
        folder = run.models_dir / m / "classification"
        ema = folder / CHECKPOINT_EMA  # the classifier the demo evaluated
        backbone = ema if ema.is_file() else folder / CHECKPOINT_LAST
    say(f"[5/6] training segmenter {m} ({index + 1}/{len(models)}): ~{fmt_s(planned)}")
    run_dir = run.models_dir / m / "segmentation"
    with run.clock.stage("segmentation_training"):
        trained = train_segmenter(
            m, recipe, run.data, run.plan, run_dir, run.config, run.device, limit, backbone
        )
    with run.clock.stage("segmentation_evaluation"):
        seg = evaluate_segmentation_stage(
            trained, run.data, run_dir, run.device, run.config.progress, dtype=run.dtype
        )
    say(
        f"      {m}: mIoU {seg['miou']:.3f} (all-background baseline "
        f"{seg['background_baseline_miou']:.3f})"
    )
    seg.update(run_record(trained, run.plan.seg_images, 1 / rates[m].seg_train))
    seg["backbone_from_classifier"] = backbone is not None
    run.per_model[m]["segmentation"] = seg


def _finish(run: _DemoRun) -> dict:
    """Activation maps and gridding scores, ``metrics.json`` and the report."""
    say("[6/6] activation maps, gridding scores and the report ...")
    clock, out = run.clock, run.out
    activations: dict[str, dict] = {}
    with clock.stage("activations"):
        for m, model in run.classifiers.items():
            scores, first = activation_analysis(
                model, run.data, run.recipe.activation_images, run.device
            )
            run.per_model[m]["gridding"] = scores
            activations[m] = first
    metrics = assemble_metrics(
        config=run.config,
        recipe=run.recipe,
        plan=run.plan,
        rates=run.rates,
        per_model=run.per_model,
        data=run.data,
        device=run.device,
        clock=clock,
        load_start=run.load_start,
    )
    metrics["precision"] = run.precision()
    figures = out / "figures"
    with clock.stage("report"):
        write_report(out, metrics, run.per_model, activations, run.data, figures)
        metrics["timings"] = {**clock.stages, "total": round(clock.elapsed(), 2)}
        metrics["wall_seconds"] = round(clock.elapsed(), 2)
        metrics["load_average"]["end"] = load_average()
        metrics["within_budget"] = clock.elapsed() <= clock.budget_s
        # the report shows the timings too: write it again with the final numbers (fast)
        write_report(out, metrics, run.per_model, activations, run.data, figures)
    write_metrics(out / METRICS_FILE, metrics)
    return metrics
