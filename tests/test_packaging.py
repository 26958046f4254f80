"""Packaging facts: one version, the typing marker and the licence ship with the package."""

from __future__ import annotations

from pathlib import Path

import pytest

import drnet
from drnet import constants

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_defined_once_in_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = config["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "drnet.__version__"}
    assert isinstance(drnet.__version__, str) and drnet.__version__.count(".") >= 1


def test_py_typed_and_license_ship():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (ROOT / "drnet" / "py.typed").is_file()
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["drnet"]
    assert "LICENSE" in config["project"]["license-files"]
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text()


def test_constants_are_shared_not_copied():
    """The modules that always exported these names hand out the very same objects."""
    from drnet.data import cityscapes, classification, segmentation, transforms

    assert classification.IMAGENET_MEAN is constants.IMAGENET_MEAN
    assert segmentation.IMAGENET_STD is constants.IMAGENET_STD
    assert cityscapes.CITYSCAPES_MEAN is constants.CITYSCAPES_MEAN
    assert cityscapes.CITYSCAPES_STD is constants.CITYSCAPES_STD
    assert segmentation.IGNORE_INDEX == transforms.IGNORE_INDEX == constants.IGNORE_INDEX == 255
    assert constants.CITYSCAPES_MEAN == (0.290101, 0.328081, 0.286964)
