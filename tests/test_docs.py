"""The documentation site builds offline with no warnings (links and anchors resolve, every page
is in the navigation), its generated references are complete, and nothing in it points outside
the project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")]
        + ["-d", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path, "NO_MKDOCS_2_WARNING": "1"},
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    return out


@pytest.mark.slow  # about 5 s on a quiet machine, over 10 s on a busy one
def test_site_builds_strict_with_every_page(site: Path):
    for page in PAGES:
        built = site / "index.html" if page.stem == "index" else site / page.stem / "index.html"
        assert built.is_file(), page.name
    assert (site / "serve.png").is_file()  # the viewer page's screenshot
    html = (site / "index.html").read_text()
    # nothing fetched from elsewhere (code is highlighted at build time)
    assert not re.search(r'(src|href)="https?://(?!www\.mkdocs\.org)', html), html[:2000]


@pytest.mark.slow
def test_cli_reference_lists_every_command(site: Path):
    from drnet.cli import build_parser
    from drnet.cli.reference import commands

    page = (site / "cli" / "index.html").read_text()
    paths = [path for path, _ in commands(build_parser())]
    assert len(paths) > 15
    for path in paths:
        assert f"usage: {' '.join(('drnet', *path))}" in page, path
    assert "-b N, --batch-size N" in page  # options and their help, not just the usage lines


@pytest.mark.slow
def test_api_reference_is_generated_from_the_docstrings(site: Path):
    page = (site / "api" / "index.html").read_text()
    names = [
        "drnet.create_model",
        "drnet.models.loading.load_model",
        "drnet.tasks.segment.evaluate_segmentation",
        "drnet.tasks.boxes.box_from_class_map",
        "drnet.analysis.gridding.gridding_score",
        "drnet.models.spec.ModelSpec",
        "drnet.errors.DrnetError",
        "drnet.engine.trainer.TrainConfig",
    ]
    for name in names:
        assert f'id="{name}"' in page, name
    assert "Score <code>model</code> on every image" in page  # the docstring, rendered


def test_cli_reference_renders_the_parser_without_torch():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from drnet.cli.reference import render_markdown; "
         "text = render_markdown(); print('torch' in sys.modules, text.count('```text'))"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch_loaded, blocks = proc.stdout.split()
    assert torch_loaded == "False" and int(blocks) > 15


def test_pages_are_in_the_navigation_and_point_inside_the_project():
    config = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        assert f": {page.name}" in config, f"{page.name} is not in mkdocs.yml's nav"
    for path in [ROOT / "README.md", *PAGES]:
        text = path.read_text()
        assert "../" not in text and "/work/" not in text, path.name
        assert "DESIGN.md" not in text, path.name
    for source in [*ROOT.glob("drnet/**/*.py"), *ROOT.glob("tests/*.py")]:
        if source.name != "test_docs.py":
            assert "DESIGN.md" not in source.read_text(), source  # docs/design.md it is


def test_readme_links_into_the_docs_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert len(links) > 10
    for link in links:
        assert (ROOT / link).is_file(), link
    # the two commands stay at the very top (CI runs them)
    assert readme.splitlines()[2:5] == [
        "```bash",
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && drnet demo',
        "```",
    ]
