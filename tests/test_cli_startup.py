"""``drnet --help``, every ``drnet COMMAND --help`` and argument errors answer without importing
torch or torchvision (they took 11-15 s under load when building the parser imported them).

Each check runs in a fresh interpreter (this one has torch loaded already) and reads its
``sys.modules`` afterwards, or ``-X importtime``'s list of every module imported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision")


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Every command path of ``parser`` (``()``, ``("segment",)``, ``("segment", "eval")``...),
    each once (aliases skipped)."""
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from _commands(sub, (*prefix, name))


# In a fresh interpreter: run ``main`` on each argv (catching argparse's exit), then report the
# exit codes and which heavy packages got imported.
_PROBE = textwrap.dedent(
    """
    import contextlib, io, json, sys

    from drnet.cli import build_parser, main

    calls = json.loads(sys.argv[1])
    codes = []
    for argv in calls:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                codes.append(main(argv))
            except SystemExit as exc:
                codes.append(exc.code)
        codes.append(out.getvalue()[:200] + err.getvalue()[-200:])
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    print(json.dumps({"codes": codes, "heavy": heavy}))
    """
)


def _probe(calls: list[list[str]]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(calls)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_help_imports_neither_torch_nor_torchvision():
    from drnet.cli import build_parser

    commands = list(_commands(build_parser()))
    assert len(commands) > 15  # the walk found the sub-commands (segment eval, data check, ...)
    result = _probe([[*command, "--help"] for command in commands])
    assert result["heavy"] == [], result["heavy"][:10]
    codes, outputs = result["codes"][::2], result["codes"][1::2]
    assert codes == [0] * len(commands), list(zip(commands, codes, outputs, strict=True))
    assert all("usage: drnet" in text for text in outputs), outputs


def test_argument_errors_import_neither_torch_nor_torchvision():
    calls = [
        [],  # no command: the overview, exit 2
        ["--version"],
        ["--no-such-flag"],
        ["segment", "eval", "--no-such-flag"],
        ["classify", "eval", "--device", "mps", "data"],
        ["serve", "--port", "-1"],
        ["models", "--image-size", "0"],
        ["localize", "eval", "data"],  # --boxes is required
        ["data", "check"],  # DATA is required
    ]
    result = _probe(calls)
    assert result["heavy"] == [], result["heavy"][:10]
    codes, outputs = result["codes"][::2], result["codes"][1::2]
    assert codes == [2, 0, 2, 2, 2, 2, 2, 2, 2], list(zip(calls, codes, outputs, strict=True))
    assert "drnet 0." in outputs[1]
    assert "--device: expected one of auto, cpu, cuda, cuda:N, got 'mps'" in outputs[4]
    assert "--boxes" in outputs[7]


def test_python_m_drnet_help_imports_no_torch_by_importtime():
    """The command as users type it: ``-X importtime`` lists every module the process imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "drnet", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0 and "usage: drnet" in proc.stdout, proc.stderr[-2000:]
    imported = [
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    # the list is read (the command modules themselves come through importlib.import_module,
    # which -X importtime does not time; what they import by statement it does)
    assert "drnet.cli.vocab" in imported and "drnet.constants" in imported, imported
    heavy = [name for name in imported if name.split(".")[0] in HEAVY]
    assert heavy == [], heavy[:10]


def test_import_drnet_is_lazy_and_the_public_api_still_works():
    code = (
        "import sys, drnet; assert 'torch' not in sys.modules; v = drnet.__version__; "
        "from drnet import create_model, list_models; "
        "assert drnet.create_model is create_model and 'drn_d_22' in list_models(); "
        "assert drnet.models.DRN and drnet.create_segmentation_model and drnet.load_model; "
        "print(v)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import drnet

    assert proc.stdout.strip() == drnet.__version__
