"""The task contract (drnet.tasks.common) and the CLI as its consumer.

Every task exports the same entry points, ``(model, card, data, options, settings)`` with the
runtime options in one :class:`InferenceOptions`; no function under ``drnet/tasks/`` restates more
than two of the six runtime parameters; the ``run_*`` of the command line are short and import
only task entry points, settings, data descriptions and constants; settings check themselves;
the one JSON writer writes strict JSON.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
from pathlib import Path

import pytest

from drnet.atomic import atomic_write_json, json_text, strict_json
from drnet.errors import SettingsError
from drnet.tasks import classify, localize, segment
from drnet.tasks.common import RUNTIME_PARAMETERS, InferenceOptions, Result, check_range

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {
    classify: ("train", "evaluate", "predict"),
    localize: ("evaluate", "predict"),  # localization has no training of its own
    segment: ("train", "evaluate", "predict"),
}
CONTRACT = ["model", "card", "data", "options", "settings"]
TASK_COMMANDS = ("classify.py", "localize.py", "segment.py")
# cli modules whose run() belongs to another part of the project (the viewer, the benchmarks)
NOT_CONSUMERS = ("benchmark.py", "serve.py")
RUN_MAX_LINES = 25


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _parameters(node: ast.FunctionDef) -> set[str]:
    a = node.args
    return {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}


# -- the entry points ----------------------------------------------------------------------------


@pytest.mark.parametrize("module", list(ENTRY_POINTS), ids=lambda m: m.__name__)
def test_each_task_exports_its_entry_points_taking_inference_options(module):
    for name in ENTRY_POINTS[module]:
        function = getattr(module, name)
        assert name in getattr(module, "__all__", [name]), (module.__name__, name)
        parameters = inspect.signature(function).parameters
        assert list(parameters) == CONTRACT, (module.__name__, name, list(parameters))
        assert "InferenceOptions" in str(parameters["options"].annotation), (module, name)
        assert "Settings" in str(parameters["settings"].annotation), (module, name)
    assert not hasattr(localize, "train")


def test_no_function_under_tasks_takes_more_than_two_runtime_parameters():
    found = []
    for path in sorted((ROOT / "drnet" / "tasks").rglob("*.py")):
        for node in _functions(ast.parse(path.read_text())):
            runtime = _parameters(node) & set(RUNTIME_PARAMETERS)
            if len(runtime) > 2:
                found.append(f"{path.name}:{node.lineno} {node.name}{sorted(runtime)}")
    assert not found, found


def test_the_scan_sees_a_function_with_three_runtime_parameters():
    """The check above can fail: it finds such a function when there is one."""
    tree = ast.parse("def f(model, device, amp, workers=0):\n    pass\n")
    (node,) = _functions(tree)
    assert len(_parameters(node) & set(RUNTIME_PARAMETERS)) == 3


# -- the CLI as a consumer -----------------------------------------------------------------------


def _cli_modules(names=None):
    for path in sorted((ROOT / "drnet" / "cli").glob("*.py")):
        if (names is None and path.name not in NOT_CONSUMERS) or (names and path.name in names):
            yield path, ast.parse(path.read_text())


def test_every_cli_run_function_is_short():
    long = []
    for path, tree in _cli_modules():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("run"):
                lines = node.end_lineno - node.lineno + 1
                if lines > RUN_MAX_LINES:
                    long.append(f"{path.name} {node.name}: {lines} lines")
    assert not long, long


def _allowed(module: str, name: str) -> bool:
    if module.startswith("drnet.tasks."):
        return name in ("train", "evaluate", "predict", "InferenceOptions") or name.endswith(
            ("Settings", "Data")
        )
    library = module == "drnet" or module.startswith("drnet.")
    own = module in ("drnet.cli", "drnet.constants", "drnet.errors") or module.startswith(
        "drnet.cli."
    )
    return own or not library  # the standard library (argparse, pathlib, ...)


def test_task_commands_import_only_entry_points_settings_and_constants():
    wrong = []
    for path, tree in _cli_modules(TASK_COMMANDS):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wrong += [f"{path.name}: import {a.name}" for a in node.names if "drnet" in a.name]
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if not _allowed(node.module or "", alias.name):
                        wrong.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
    assert not wrong, wrong
    assert not _allowed("drnet.tasks.segment", "predict_files")  # the rule can refuse


def test_option_groups_are_defined_once_and_localize_does_not_import_classify():
    localize_cli = (ROOT / "drnet" / "cli" / "localize.py").read_text()
    assert "drnet.cli.classify" not in localize_cli
    for name in TASK_COMMANDS:
        text = (ROOT / "drnet" / "cli" / name).read_text()
        for helper in ("add_device(", "add_dtype(", "add_no_fast(", "add_no_progress("):
            assert helper not in text, (name, helper)  # through add_inference_options


def test_one_definition_of_each_name():
    text = {p: p.read_text() for p in (ROOT / "drnet").rglob("*.py")}
    for name in ("predict_labels", "unique_names", "resolve_device"):
        defined = [p.name for p, t in text.items() if f"\ndef {name}(" in t]
        assert len(defined) == 1, (name, defined)
    builders = [p.name for p, t in text.items() if "\ndef build_model(" in t]
    assert builders == ["loading.py"], builders  # Task.build_model is the engine's method


# -- settings and options check themselves --------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: localize.LocalizationSettings(top_k=0), "top_k"),
        (lambda: localize.LocalizationSettings(threshold=2.0), "threshold"),
        (lambda: localize.LocalizationSettings(thresholds="0:2:0.5"), "thresholds"),
        (lambda: localize.LocalizationSettings(fallback="nowhere"), "fallback"),
        (lambda: localize.LocalizationSettings(save_images=3), "output_dir"),
        (lambda: classify.ClassificationSettings(top_k=0), "top_k"),
        (lambda: classify.ClassificationSettings(batch_size=0), "batch_size"),
        (lambda: segment.SegmentationSettings(window=64, stride=128), "stride"),
        (lambda: segment.SegmentationSettings(save=()), "save"),
        (lambda: segment.SegmentationSettings(scales=(0.0,)), "scales"),
        (lambda: InferenceOptions(workers=-1), "workers"),
        (lambda: InferenceOptions(device="tpu"), "device"),
        (lambda: InferenceOptions(dtype="float16"), "dtype"),
    ],
)
def test_settings_refuse_bad_values_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field) as caught:
        make()
    assert isinstance(caught.value, SettingsError)
    assert f"--{field.replace('_', '-')}" in caught.value.as_flags()


def test_settings_take_good_values():
    assert localize.LocalizationSettings(threshold=5.0, threshold_mode="raw").threshold == 5.0
    assert localize.LocalizationSettings(thresholds="0:0.3:0.1").thresholds == (0.0, 0.1, 0.2)
    assert segment.SegmentationSettings(multi_scale=True).scales == segment.DEFAULT_SCALES
    options = InferenceOptions(device="CUDA:1", dtype="torch.bfloat16")
    assert (options.device, options.dtype) == ("cuda:1", "bfloat16")
    assert options.replace(workers=3).workers == 3
    with pytest.raises(AttributeError, match="cannot assign"):  # frozen
        options.workers = 2  # type: ignore[misc]
    check_range("X", "n", 3, 1, 3, integer=True)


def test_a_threshold_file_gives_its_t_and_mode(tmp_path: Path):
    atomic_write_json(tmp_path / "metrics.json", {"threshold": 0.35, "threshold_mode": "raw"})
    settings = localize.LocalizationSettings(threshold=str(tmp_path))
    assert (settings.threshold, settings.threshold_mode) == (0.35, "raw")


# -- results and the JSON writer ------------------------------------------------------------------


def test_the_strict_json_writer_writes_null_for_nan_and_infinities(tmp_path: Path):
    data = {"miou": math.nan, "iou": [0.5, math.inf, -math.inf], "path": tmp_path, 3: (1, 2)}
    path = atomic_write_json(tmp_path / "m.json", data)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"miou": None, "iou": [0.5, None, None], "path": str(tmp_path),
                                "3": [1, 2]}  # fmt: skip
    assert json.loads(json_text(strict_json(float("nan")))) is None
    with pytest.raises(TypeError, match="object"):
        strict_json(object())


def test_results_keep_the_protocol():
    evaluation = segment.SegmentationEvaluation({"miou": 0.5})
    assert isinstance(evaluation, Result)
    assert evaluation.summary_lines() == ["mIoU 50.00"]
    assert isinstance(classify.ClassificationPredictions([]), Result)
    assert isinstance(localize.LocalizationPredictions([]), Result)
    assert not isinstance(object(), Result)
