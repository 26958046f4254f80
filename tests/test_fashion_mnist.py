"""Fashion-MNIST loading: the packaged subset, canonical idx files (tiny fakes), source order."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from drnet.data import fashion_mnist as fm
from drnet.errors import DataError


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    data = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def fake_canonical(directory: Path, n_train: int = 30, n_test: int = 20, gz: bool = True) -> Path:
    """A tiny Fashion-MNIST folder: item i has label i % 10 and every pixel equal to i."""
    directory.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        write_idx(directory / f"{stem}-images-idx3-ubyte", images, gz)
        write_idx(directory / f"{stem}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10, gz)
    return directory


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(fm.ENV_VAR, raising=False)


def test_packaged_subset_is_balanced_and_splits_apart():
    train = fm.load_fashion_mnist("train", "packaged")
    test = fm.load_fashion_mnist("test", "packaged")
    assert train.source == test.source == "packaged"
    assert train.images.shape == (8000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (2000, 28, 28)
    assert np.bincount(train.labels, minlength=10).tolist() == [800] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [200] * 10
    # original indices are unique within each canonical file and in range
    assert len(np.unique(train.indices)) == 8000 and train.indices.max() < 60000
    assert len(np.unique(test.indices)) == 2000 and test.indices.max() < 10000
    assert train.class_names == fm.CLASS_NAMES and len(fm.CLASS_NAMES) == 10


def test_packaged_assets_have_licence_notices():
    assets = Path(fm.__file__).resolve().parent.parent / "assets"
    text = (assets / "LICENSES.md").read_text(encoding="utf-8")
    assert "Zalando" in text and "MIT" in text and "CC0" in text
    for name in ("brick", "grass", "gravel"):
        assert (assets / "textures" / f"{name}.png").is_file()


@pytest.mark.parametrize("gz", [True, False])
def test_canonical_files_read(tmp_path, gz):
    root = fake_canonical(tmp_path / "fm", gz=gz)
    train = fm.load_fashion_mnist("train", root)
    test = fm.load_fashion_mnist("test", str(root))
    assert train.source == str(root)
    assert train.images.shape == (30, 28, 28) and test.images.shape == (20, 28, 28)
    assert train.labels.tolist() == [i % 10 for i in range(30)]
    assert (train.images[7] == 7).all()
    assert train.indices.tolist() == list(range(30))


def test_source_order(tmp_path, monkeypatch):
    explicit = fake_canonical(tmp_path / "explicit", n_train=10)
    env = fake_canonical(tmp_path / "env", n_train=20)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "absent")
    assert fm.resolve_source() == "packaged"
    system = fake_canonical(tmp_path / "system", n_train=40)
    monkeypatch.setattr(fm, "SYSTEM_DIR", system)
    assert fm.resolve_source() == str(system)
    monkeypatch.setenv(fm.ENV_VAR, str(env))
    assert fm.resolve_source() == str(env)
    assert fm.resolve_source(explicit) == str(explicit)
    assert fm.resolve_source("packaged") == "packaged"
    monkeypatch.setenv(fm.ENV_VAR, "packaged")
    assert fm.resolve_source() == "packaged"


def test_incomplete_system_dir_falls_back_to_packaged(tmp_path, monkeypatch):
    system = fake_canonical(tmp_path / "system")
    (system / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setattr(fm, "SYSTEM_DIR", system)
    assert fm.resolve_source() == "packaged"


def test_named_dir_without_files_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="--fashion-mnist: .*empty lacks .*train-images-idx3"):
        fm.load_fashion_mnist("train", tmp_path / "empty")
    with pytest.raises(DataError, match="not a directory"):
        fm.load_fashion_mnist("train", tmp_path / "nowhere")
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "empty"))
    with pytest.raises(DataError, match=fm.ENV_VAR):
        fm.load_fashion_mnist("train")


def test_corrupt_idx_is_an_error(tmp_path):
    root = fake_canonical(tmp_path / "fm")
    (root / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x03" + b"\0" * 9)
    )
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: idx header truncated"):
        fm.load_fashion_mnist("train", root)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: cannot read"):
        fm.load_fashion_mnist("test", root)


def test_unknown_split():
    with pytest.raises(DataError, match="split must be 'train' or 'test'"):
        fm.load_fashion_mnist("val", "packaged")
