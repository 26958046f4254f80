"""``drnet demo``: recipes, planning, the hard stop, and a tiny-budget end-to-end run (``--quick``)
through the command line, checking ``metrics.json`` and ``report.html``."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from drnet.cli import main
from drnet.demo.recipes import PAPER_MODELS, Recipe, default_recipe, get_recipe, paper_recipe
from drnet.demo.report import check_report
from drnet.demo.run import (
    DemoConfig,
    Rates,
    background_baseline,
    choose_threads,
    make_plan,
    render_share,
    run_demo,
)
from drnet.errors import DrnetError

# the module-scoped quick demo runs in the set-up of the first test that uses it
pytestmark = pytest.mark.timeout(600)

# ----------------------------------------------------------------------------- recipes and plans


def test_recipes_name_their_models_and_widths() -> None:
    assert default_recipe().models == ("drn_d_22",)
    assert default_recipe().model_channels("drn_d_22") == (16, 16, 32, 64, 64, 64, 64, 64)
    paper = paper_recipe()
    assert paper.models == PAPER_MODELS and paper.budget_minutes == 60
    assert paper.model_channels("resnet18") == (16, 32, 64, 128)
    assert paper.model_channels("drn_c_26") == (8, 8, 16, 32, 64, 128, 128, 128)
    quick = get_recipe(quick=True)
    assert quick.fixed_images and quick.name == "default-quick"
    assert json.dumps(paper.to_dict())  # recorded in metrics.json


RATES = Rates(cls_train=0.004, cls_infer=0.001, cls_single=0.002, seg_train=0.01, seg_single=0.01)


def test_plan_fits_the_budget_in_balanced_multiples_of_the_batch() -> None:
    recipe = default_recipe()
    plan = make_plan(recipe, {"drn_d_22": RATES}, elapsed=10.0, budget_s=360.0, config=DemoConfig())
    assert plan.cls_per_epoch % 160 == 0 and plan.seg_per_epoch % 80 == 0  # lcm(batch, 10)
    assert recipe.min_images[0] <= plan.cls_images and recipe.min_images[1] <= plan.seg_images
    assert plan.estimate_s <= 360 * recipe.safety + 1
    assert plan.estimate_s > 360 * recipe.safety * 0.8  # and uses most of it
    slower = make_plan(
        recipe,
        {"drn_d_22": Rates(0.008, 0.002, 0.004, 0.02, 0.02)},
        elapsed=10.0,
        budget_s=360.0,
        config=DemoConfig(),
    )
    assert slower.cls_images < plan.cls_images and slower.seg_images < plan.seg_images


def test_plan_can_be_fixed_from_the_command_line() -> None:
    config = DemoConfig(cls_images=1600, seg_images=960)
    plan = make_plan(default_recipe(), {"drn_d_22": RATES}, 0.0, 360.0, config)
    assert (plan.cls_images, plan.seg_images) == (1280, 960)  # whole epochs of whole batches


def test_paper_plan_gives_every_model_the_same_images() -> None:
    recipe = paper_recipe()
    rates = {m: RATES for m in recipe.models}
    plan = make_plan(recipe, rates, 0.0, 3600.0, DemoConfig())
    single = make_plan(
        Recipe(name="one", budget_minutes=60), {"m": RATES}, 0.0, 3600.0, DemoConfig()
    )
    assert plan.cls_images < single.cls_images  # five models share the hour


def test_more_threads_only_where_clearly_faster() -> None:
    fast = Rates(
        0.002, 0.001, 0.002, 0.005, 0.003, threads=2, cls_train_one=0.004, seg_train_one=0.009
    )
    assert choose_threads({"a": fast}) == 2
    marginal = Rates(
        0.002, 0.001, 0.002, 0.005, 0.003, threads=2, cls_train_one=0.0022, seg_train_one=0.009
    )
    assert choose_threads({"a": fast, "b": marginal}) == 1  # one model is enough to say no
    busy = Rates(
        float("inf"),
        0.001,
        0.002,
        float("inf"),
        0.003,
        threads=2,
        cls_train_one=0.004,
        seg_train_one=0.009,
    )
    assert choose_threads({"a": busy}) == 1
    assert busy.with_one_thread().cls_train == 0.004


def test_render_share_counts_first_draws() -> None:
    assert render_share(None, 8) == 1.0  # fresh scenes: every draw renders
    assert render_share(1, 8) == pytest.approx(1 / 8)  # one set, rendered in the first epoch
    assert 1 / 8 < render_share(2, 8) < render_share(8, 8) < 1


def test_background_baseline_predicts_background_everywhere() -> None:
    confusion = torch.tensor([[80, 0, 0], [5, 10, 0], [0, 0, 5]])  # rows: truth
    baseline = background_baseline(confusion)
    # background IoU 80/100, the two item classes 0 -> mean 0.8 / 3
    assert baseline["miou"] == pytest.approx(0.8 / 3)
    assert baseline["pixel_accuracy"] == pytest.approx(0.8)


def test_demo_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DrnetError, match="not an earlier demo's output"):
        run_demo(DemoConfig(output_dir=str(tmp_path), quick=True, progress=False))
    with pytest.raises(DrnetError, match="budget-minutes"):
        run_demo(DemoConfig(output_dir=str(tmp_path / "new"), budget_minutes=-1, quick=True))


def test_training_stops_at_its_time_limit(tmp_path: Path) -> None:
    """The hard stop is the engine's own: the library task returns its summary with the weights
    so far (no signal, no re-reading of log.csv)."""
    from drnet.data.scenes import ClassificationScenes
    from drnet.demo.data import ClassificationSceneData
    from drnet.demo.run import _train_run
    from drnet.engine import TrainConfig
    from drnet.models.loading import ModelCard
    from drnet.tasks import classify

    scenes = ClassificationScenes("train", 40, canvas=32, scale=(0.6, 1.0), seed=0)
    train_set = ClassificationSceneData(scenes, [0.5] * 3, [0.25] * 3, train=True)
    card = ModelCard("drn_d_22", 10, class_names=list(scenes.classes), channels=[4] + [8] * 7)
    config = TrainConfig(output_dir=str(tmp_path), epochs=3, batch_size=4, workers=0)
    config.progress = False
    config.time_limit = 0.0

    def run() -> dict:  # through the entry point, as the demo trains
        settings = classify.ClassificationTrainSettings(config=config)
        return _train_run(classify.train, card, (train_set, None), config, settings)

    result = run()
    assert result["stopped_early"] and result["history"] == []
    assert result["images_seen"] == 4  # one iteration, then the stop
    assert result["checkpoint"].is_file()
    config.time_limit = 600.0
    config.overwrite = True  # a fresh run into the same folder
    done = run()
    assert not done["stopped_early"] and len(done["history"]) == 3
    assert done["images_seen"] == 3 * 40


# ----------------------------------------------------------------------------- end to end

METRIC_FIELDS = {
    ("classification", "top1"),
    ("classification", "top5"),
    ("classification", "per_class_accuracy"),
    ("localization", "top1_accuracy"),
    ("localization", "top1_error"),
    ("localization", "centred_box_prior"),
    ("localization", "threshold"),
    ("localization", "curve"),
    ("localization", "held_out_curve"),
    ("segmentation", "miou"),
    ("segmentation", "background_baseline_miou"),
    ("segmentation", "per_class_iou"),
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    assert main(["demo", "--quick", "--output-dir", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_quick_demo_writes_metrics(quick_run: Path) -> None:
    metrics = json.loads((quick_run / "metrics.json").read_text())
    for section, key in METRIC_FIELDS:
        assert key in metrics[section], (section, key)
    assert 0 <= metrics["classification"]["top1"] <= 1
    assert metrics["localization"]["centred_box_prior"]["top1_accuracy"] is not None
    assert set(metrics["floors"]) == {
        "classification_top1",
        "segmentation_miou",
        "localization_top1_vs_prior",
    }
    assert all(isinstance(f["pass"], bool) for f in metrics["floors"].values())
    gridding = metrics["gridding"]
    assert "layer5" in gridding and {"score", "chance", "height", "width"} <= set(
        gridding["layer5"]
    )
    for key in ("recipe", "device", "versions", "timings", "plan", "load_average", "comparison"):
        assert key in metrics
    assert metrics["quick"] is True and metrics["wall_seconds"] > 0
    assert set(metrics["timings"]) >= {"data", "classification_training", "localization", "total"}
    assert metrics["classification"]["history"] and metrics["segmentation"]["history"]
    # the evaluation scenes are on disk in the layout of `drnet data scenes`
    assert (quick_run / "data" / "val").is_dir() and (
        quick_run / "data" / "boxes_val.csv"
    ).is_file()


@pytest.mark.slow
def test_quick_demo_learns(quick_run: Path) -> None:
    """Even the seconds-long quick run must learn: top-1 far above chance (10 classes, 60 val
    scenes: chance is 0.10 with a standard deviation of 0.04) and mIoU above predicting
    background everywhere."""
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert metrics["classification"]["top1"] >= 0.25
    seg = metrics["segmentation"]
    assert seg["miou"] > seg["background_baseline_miou"]
    assert metrics["classification"]["images_seen"] == metrics["plan"]["classification_images"]


def _without(metrics: dict, *keys: str) -> dict:
    """``metrics`` less the keys that name where its inputs were (paths), not what was found."""
    return {k: v for k, v in metrics.items() if k not in keys}


@pytest.mark.slow
def test_quick_demo_evaluations_equal_the_cli_commands(quick_run: Path, tmp_path: Path, capsys):
    """The demo's numbers come from the same entry points as `drnet classify eval`, `drnet
    localize eval` and `drnet segment eval`: run on its models and data, each command writes the
    whole metrics.json the demo wrote for that task (the paths of the inputs aside), and the
    demo's own metrics.json reports those numbers."""
    metrics = json.loads((quick_run / "metrics.json").read_text())
    data, models = quick_run / "data", quick_run / "models" / "drn_d_22"
    classifier = models / "classification" / "checkpoint_last.pth"
    dtype = ["--dtype", metrics["precision"]["evaluation"]]  # bf16 on CPUs that have it
    common = ["--weights", str(classifier), "--no-progress", *dtype]
    # the demo evaluates at `classify eval`'s default batch (the summed loss depends on the
    # batches in its last digits)
    cli = ["classify", "eval", str(data / "val"), *common, "-o", str(tmp_path / "c")]
    assert main(cli) == 0
    cls = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert cls == json.loads((models / "classification" / "metrics.json").read_text())
    assert cls["top1"] == metrics["classification"]["top1"]
    assert cls["confusion_matrix"] == metrics["classification"]["confusion_matrix"]
    rc = main(
        ["localize", "eval", str(data / "val"), "--boxes", str(data / "boxes_val.csv"),
         "--val-dir", str(data / "holdout"), "--val-boxes", str(data / "boxes_holdout.csv"),
         "--save-images", "0", *common, "-o", str(tmp_path / "l")]
    )  # fmt: skip
    assert rc == 0
    loc = json.loads((tmp_path / "l" / "metrics.json").read_text())
    demo_loc = json.loads((models / "localization" / "metrics.json").read_text())
    assert _without(loc, "split", "held_out_split") == _without(
        demo_loc, "split", "held_out_split"
    )
    assert loc["threshold"] == metrics["localization"]["threshold"]
    assert loc["top1_loc_err"] == metrics["localization"]["top1_error"]
    assert loc["curve"] == metrics["localization"]["curve"]
    segmenter = models / "segmentation" / "checkpoint_last.pth"
    rc = main(
        ["segment", "eval", str(data / "segmentation"), "--split", "val", "--weights",
         str(segmenter), "--no-progress", *dtype, "-o", str(tmp_path / "s")]
    )  # fmt: skip
    assert rc == 0
    seg = json.loads((tmp_path / "s" / "metrics.json").read_text())
    demo_seg = json.loads((models / "segmentation" / "metrics.json").read_text())
    assert _without(seg, "weights", "data_dir") == _without(demo_seg, "weights", "data_dir")
    assert seg["miou"] == metrics["segmentation"]["miou"]
    assert seg["confusion_matrix"] == metrics["segmentation"]["confusion_matrix"]
    capsys.readouterr()


def test_demo_precision_follows_the_hardware(monkeypatch) -> None:
    """``--dtype auto`` (the default) trains under bf16 autocast and evaluates in bf16 where the
    CPU has native bf16 (mocked), float32 elsewhere; ``--dtype float32`` turns it off."""
    import drnet.engine.precision as precision
    from drnet.demo.run import DemoConfig, _DemoRun, use_amp

    cpu = torch.device("cpu")

    def demo_run(dtype: str) -> _DemoRun:
        return _DemoRun(DemoConfig(dtype=dtype), None, None, cpu, Path("."), None)

    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(precision, "onednn_bf16", lambda: True)  # as if not capped
    assert use_amp(DemoConfig(), cpu)
    assert demo_run("auto").precision() == {
        "requested": "auto", "training": "bfloat16", "evaluation": "bfloat16"
    }  # fmt: skip
    assert not use_amp(DemoConfig(dtype="float32"), cpu)
    assert demo_run("float32").precision()["evaluation"] == "float32"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(precision, "onednn_bf16", lambda: True)  # as if not capped
    assert not use_amp(DemoConfig(), cpu)
    assert demo_run("auto").precision() == {
        "requested": "auto", "training": "float32", "evaluation": "float32"
    }  # fmt: skip


@pytest.mark.slow
def test_quick_demo_report_is_self_contained(quick_run: Path) -> None:
    report = quick_run / "report.html"
    result = check_report(report)
    assert result["problems"] == []
    assert result["images"] >= 20  # samples, overlays, segmentation, activation maps
    text = report.read_text()
    for heading in ("Summary", "Training curves", "Weakly-supervised localization", "Segmentation"):
        assert heading in text
    evaluation = json.loads((quick_run / "metrics.json").read_text())["precision"]["evaluation"]
    assert f"evaluation in {evaluation}" in text
    assert "<svg" in text and "centred-box prior" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_quick_demo_report_renders_in_headless_chromium(quick_run: Path, tmp_path: Path) -> None:
    report = (quick_run / "report.html").resolve()
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Weakly-supervised localization" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    shot = tmp_path / "report.png"
    render = subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert render.returncode == 0 and shot.is_file() and shot.stat().st_size > 50_000


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_quick_demo_report_fits_a_390px_screen(quick_run: Path, tmp_path: Path) -> None:
    """At 390 px the report has no horizontal overflow (tables scroll inside their box, images
    and charts scale), and it holds the new sections: worst mistakes, top confusions in words,
    per-class localization, colour bars under shared-scale activation rows."""
    import os

    from chromium_devtools import open_browser

    text = (quick_run / "report.html").read_text()
    for words in ("Top confusions", "Per-class localization", "one colour scale"):
        assert words in text, words
    metrics = json.loads((quick_run / "metrics.json").read_text())
    for section, key in (("classification", "top1_ci95"), ("segmentation", "miou_ci95")):
        low, high = metrics[section][key]
        assert text.count(f"[{100 * low:.1f}%, {100 * high:.1f}%]") >= 2  # summary and section
    assert "in red" not in text and "dashed yellow" in text
    with open_browser(tmp_path, width=390, height=900) as browser:
        browser.call(
            "Emulation.setDeviceMetricsOverride", width=390, height=900, deviceScaleFactor=1,
            mobile=True,
        )  # fmt: skip
        browser.call("Page.navigate", url=(quick_run / "report.html").resolve().as_uri())
        browser.wait_for("document.readyState === 'complete'")
        assert browser.js("document.documentElement.scrollWidth") <= 390
        # the pass/below verdict of every headline row is on screen
        rights = browser.js(
            "[...document.querySelectorAll('table.summary .pass, table.summary .fail')]"
            ".map(e => e.getBoundingClientRect().right)"
        )
        assert len(rights) == 3 and max(rights) <= 390
        shot = browser.screenshot(tmp_path / "report-390px.png")
        if os.environ.get("DRNET_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["DRNET_SCREENSHOTS"]) / shot.name)
        assert browser.errors() == []


def test_seeds_summary_means_and_spreads() -> None:
    """--seeds N: per model and column the mean, the (n - 1) standard deviation and the range."""
    from drnet.demo.seeds import render, summarise

    def run(error: float, miou: float) -> dict:
        row = {"model": "drn_d_22", "classification_error": error, "top1_localization_error": 0.5,
               "centred_box_prior_error": 0.9, "miou": miou, "gridding_score": None,
               "stopped_early": False, "classification_images_seen": 100}  # fmt: skip
        return {"drnet_demo": "default", "comparison": [row]}

    summary = summarise([run(0.2, 0.4), run(0.3, 0.5), run(0.4, 0.3)], [0, 1, 2])
    row = summary["comparison"][0]
    assert row["classification_error"]["mean"] == pytest.approx(0.3)
    assert row["classification_error"]["std"] == pytest.approx(0.1)
    assert (row["miou"]["min"], row["miou"]["max"]) == (0.3, 0.5)
    assert row["gridding_score"]["mean"] is None and row["gridding_score"]["runs"] == 0
    assert [r["folder"] for r in summary["runs"]] == ["seed-0", "seed-1", "seed-2"]
    page = render(summary)
    assert "0.300 ± 0.100" in page and 'href="seed-2/report.html"' in page


@pytest.mark.slow
def test_two_seed_quick_demo_replaces_an_earlier_run(
    quick_run: Path, tmp_path: Path, capsys, monkeypatch
):
    """--seeds 2 into a folder that holds an earlier demo: it is replaced; seed 0 repeats the
    earlier run's numbers exactly (same seed, same plan). Seed 1 is a stand-in (a second real
    quick demo would double the test's time and check nothing more of the seeds' mechanics)."""
    import drnet.demo.run as demo_run

    real = demo_run._run_demo

    def seed_one_stand_in(config):
        if config.seed == 0:
            return real(config)
        metrics = json.loads((quick_run / "metrics.json").read_text())
        metrics["seed"], metrics["budget_seconds"] = config.seed, config.budget_minutes * 60
        for row in metrics["comparison"]:
            row["classification_error"] += 0.1
        return metrics

    monkeypatch.setattr(demo_run, "_run_demo", seed_one_stand_in)
    out = tmp_path / "again"
    shutil.copytree(quick_run, out)
    assert main(["demo", "--quick", "--seeds", "2", "-o", str(out), "--no-progress"]) == 0
    assert not (out / "models").exists()  # the earlier single run's folders are gone
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["seeds"] == [0, 1]
    first = json.loads((quick_run / "metrics.json").read_text())
    run = json.loads((out / "seed-0" / "metrics.json").read_text())
    assert run["classification"]["top1"] == first["classification"]["top1"]
    assert run["segmentation"]["miou"] == pytest.approx(first["segmentation"]["miou"])
    assert run["budget_seconds"] == pytest.approx(30.0)  # each seed gets 1/N of the budget
    errors = summary["comparison"][0]["classification_error"]
    assert errors["runs"] == 2 and errors["min"] <= errors["mean"] <= errors["max"]
    assert errors["max"] - errors["min"] == pytest.approx(0.1)
    assert "mean ± std" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_demo_scores_both_box_resolutions(quick_run: Path) -> None:
    loc = json.loads((quick_run / "metrics.json").read_text())["localization"]
    assert set(loc["by_box_resolution"]) == {"cell", "pixel"}
    assert loc["by_box_resolution"][loc["box_resolution"]]["top1_accuracy"] == loc["top1_accuracy"]
    low, high = loc["top1_accuracy_ci95"]
    assert low <= loc["top1_accuracy"] <= high
    assert "Cell and pixel boxes on the same model" in (quick_run / "report.html").read_text()


def _floors(top1: float, miou: float, loc: float) -> dict:
    return {
        "classification_top1": {"value": top1, "ci95": [top1 - 0.03, top1 + 0.03],
                                "floor": 0.70, "pass": top1 >= 0.70},
        "localization_top1_vs_prior": {"value": loc, "ci95": [loc - 0.03, loc + 0.03],
                                       "prior": 0.2, "margin": 0.05, "floor": 0.25,
                                       "pass": loc >= 0.25},
        "segmentation_miou": {"value": miou, "ci95": [miou - 0.01, miou + 0.01], "floor": 0.2,
                              "background_baseline": 0.07, "pass": miou >= 0.2},
    }  # fmt: skip


def test_a_missed_floor_says_why_and_how_to_fix_it() -> None:
    from drnet.demo.run import DemoConfig, missed_floors

    cls = {"images_seen": 15360, "images_per_s": 101.4}
    seg = {"images_seen": 2880, "images_per_s": 60.0}
    missed = missed_floors(_floors(0.596, 0.25, 0.33), cls, seg, DemoConfig(seed=2), 360, [2.1])
    assert [m["floor"] for m in missed] == ["classification_top1"]
    why = missed[0]["why"]
    for part in ("0.596", "0.700", "15,360 training scenes", "101 scenes/s", "torch thread",
                 "load 2.1", "6 min"):  # fmt: skip
        assert part in why, part
    assert missed[0]["fix"] == "drnet demo --budget-minutes 12 --seed 2"
    assert missed_floors(_floors(0.8, 0.3, 0.5), cls, seg, DemoConfig(), 360, None) == []


def test_summary_shows_intervals_and_the_reason_under_a_missed_floor() -> None:
    from drnet.demo.run import summary_lines

    metrics = {
        "floors": _floors(0.596, 0.223, 0.333), "drnet_demo": "default", "main_model": "drn_d_22",
        "wall_seconds": 316, "budget_seconds": 360, "comparison": [{}],
        "floors_missed": [{"floor": "classification_top1", "why": "because", "fix": "drnet demo"}],
    }  # fmt: skip
    lines = summary_lines(metrics, "out")
    assert "0.596 [0.566, 0.626]" in lines[1] and "BELOW FLOOR" in lines[1]
    assert "0.223 [0.213, 0.233]" in lines[3]
    assert "  why: because; fix: drnet demo" in lines


@pytest.mark.slow
def test_quick_demo_explains_missed_floors_in_the_report(quick_run: Path) -> None:
    metrics = json.loads((quick_run / "metrics.json").read_text())
    text = (quick_run / "report.html").read_text()
    missed = {m["floor"] for m in metrics["floors_missed"]}
    assert missed == {k for k, f in metrics["floors"].items() if not f["pass"]}
    assert ("Why below" in text) == bool(missed)
    top1 = metrics["floors"]["classification_top1"]
    low, high = top1["ci95"]
    assert f"{100 * low:.1f}%, {100 * high:.1f}%" in text  # the interval beside the headline
