"""The import graph: every module imports on its own (no circular import, whichever module comes
first), and the lower packages import drnet's modules at the top of the file, never inside a
function to dodge a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import drnet

PACKAGE = Path(drnet.__file__).parent

#: Packages whose functions import no drnet module: what they need comes from below them.
NO_FUNCTION_LEVEL_DRNET_IMPORTS = ("models", "engine", "data", "analysis")


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] != "__main__":  # running it runs the command line
            names.append(".".join(parts))
    return sorted(names)


def function_level_drnet_imports(path: Path) -> list[str]:
    """``file:line module`` for each import of a drnet module inside a function of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module == "drnet" or module.startswith("drnet."):
                    found.append(f"{path.name}:{node.lineno} {module}")
    return sorted(set(found))


_IMPORT_EACH_FIRST = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "drnet" or m.startswith("drnet.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_imports_first_without_a_cycle() -> None:
    """In a fresh interpreter, each module in sorted order is imported with no drnet module
    loaded before it: a cycle fails for whichever of its modules comes first."""
    names = module_names()
    assert "drnet.models.loading" in names and "drnet.models.card" in names
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_FIRST, *names],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_the_scan_finds_a_function_level_import(tmp_path: Path) -> None:
    """The scan below can fail: it finds an import hidden in a function (nested too), and
    leaves the top of the file and other packages' imports alone."""
    sample = tmp_path / "probe.py"
    sample.write_text(
        "import drnet.errors\n"
        "class A:\n"
        "    def f(self):\n"
        "        def g():\n"
        "            from drnet.models import registry\n"
        "        import os\n"
        "        import drnet\n"
    )
    assert function_level_drnet_imports(sample) == ["probe.py:5 drnet.models", "probe.py:7 drnet"]


@pytest.mark.parametrize("package", NO_FUNCTION_LEVEL_DRNET_IMPORTS)
def test_no_function_level_import_of_a_drnet_module(package: str) -> None:
    found = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        found += [f"{package}/{hit}" for hit in function_level_drnet_imports(path)]
    assert found == [], "imports inside functions (move them to the top): " + ", ".join(found)


def test_the_split_modules_keep_their_old_names() -> None:
    """``models.loading``, ``engine.rundir`` and ``demo.run`` re-export what moved out of them."""
    from drnet.demo import budget, config, metrics, stages
    from drnet.demo import run as demo_run
    from drnet.engine import rundir
    from drnet.models import card, checkpoints, loading

    for name in ("ModelCard", "MODEL_CARD", "TASKS", "read_class_names"):
        assert getattr(loading, name) is getattr(card, name)
    for name in ("read_checkpoint", "extract_state_dict", "load_state_dict_file", "StateDict"):
        assert getattr(loading, name) is getattr(checkpoints, name)
    assert loading.CHECKPOINT_NAMES == ("checkpoint_best.pth", "checkpoint_last.pth")
    assert rundir.atomic_write_text is drnet.atomic.atomic_write_text
    assert demo_run.DemoConfig is config.DemoConfig and demo_run.Rates is budget.Rates
    assert demo_run.summary_lines is metrics.summary_lines
    assert demo_run.train_classifier is stages.train_demo_classifier  # the old, clashing name
    assert demo_run.process_age is drnet.timing.process_age
