"""Fashion-MNIST items: the packaged balanced subset, or the full canonical files.

Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; Zalando Research, MIT licence) has 70,000 grey 28x28
images of clothing in 10 classes: 60,000 for training and 10,000 for testing. drnet composes these
items into scenes (:mod:`drnet.data.scenes`).

Where the items come from, first match wins:

1. an explicit ``source`` argument (a directory, or the word ``"packaged"``);
2. the environment variable ``DRNET_FASHION_MNIST`` (same values);
3. ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist`` package);
4. the balanced subset packaged inside drnet (``drnet/assets/fashion_mnist_subset.npz``: 800
   training and 200 test items per class, made by ``scripts/make_assets.py``).

A directory holds the four canonical idx files, gzipped or not: ``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``.
A directory named explicitly (argument or environment variable) that lacks them is an error; the
Debian path is only used when it is complete.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from drnet.errors import DataError

__all__ = [
    "CLASS_NAMES",
    "CLASS_TITLES",
    "ENV_VAR",
    "PACKAGED",
    "SYSTEM_DIR",
    "FashionMNIST",
    "load_fashion_mnist",
    "read_idx",
    "resolve_source",
]

#: Names used in files and folders (filesystem-safe), in Fashion-MNIST label order 0..9.
CLASS_NAMES: tuple[str, ...] = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
#: The dataset's own class titles, in the same order.
CLASS_TITLES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

ENV_VAR = "DRNET_FASHION_MNIST"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
PACKAGED = "packaged"
PACKAGED_FILE = "fashion_mnist_subset.npz"

# split -> (images stem, labels stem) of the canonical files
_CANONICAL = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class FashionMNIST:
    """One split of Fashion-MNIST items.

    Attributes:
        images: ``uint8`` array ``[N, 28, 28]``, white item on black (0 = empty).
        labels: ``int64`` array ``[N]`` of class indices 0..9 (see :data:`CLASS_NAMES`).
        indices: ``int64`` array ``[N]``: each item's index in the canonical split file.
        split: ``"train"`` or ``"test"``.
        source: ``"packaged"`` or the directory the canonical files were read from.
    """

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    split: str
    source: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def __len__(self) -> int:
        return len(self.labels)

    def by_class(self) -> list[np.ndarray]:
        """Positions (into this split) of the items of each class, in class order."""
        return [np.flatnonzero(self.labels == k) for k in range(len(CLASS_NAMES))]


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _missing_files(directory: Path) -> list[str]:
    stems = [stem for pair in _CANONICAL.values() for stem in pair]
    return [stem + ".gz" for stem in stems if _find_file(directory, stem) is None]


def resolve_source(source: str | os.PathLike | None = None) -> str:
    """Return where items will be read from: ``"packaged"`` or a directory path (as a string).

    Raises:
        DataError: a directory given by argument or by ``DRNET_FASHION_MNIST`` lacks the files.
    """
    for value, origin in ((source, "--fashion-mnist"), (os.environ.get(ENV_VAR) or None, ENV_VAR)):
        if value is None:
            continue
        if str(value) == PACKAGED:
            return PACKAGED
        directory = Path(value).expanduser()
        if not directory.is_dir():
            raise DataError(f"{origin}: {directory} is not a directory of Fashion-MNIST idx files")
        missing = _missing_files(directory)
        if missing:
            raise DataError(
                f"{origin}: {directory} lacks the Fashion-MNIST file(s) {', '.join(missing)}"
            )
        return str(directory)
    if SYSTEM_DIR.is_dir() and not _missing_files(SYSTEM_DIR):
        return str(SYSTEM_DIR)
    return PACKAGED


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not, into a numpy array.

    Raises:
        DataError: the file is missing, truncated or not an idx file.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read idx file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: idx header truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path}: idx data has {len(data) - header} bytes, "
            f"expected {expected} for shape {shape}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


@functools.lru_cache(maxsize=8)
def _load_canonical(directory: str, split: str) -> FashionMNIST:
    images_stem, labels_stem = _CANONICAL[split]
    d = Path(directory)
    images_path, labels_path = _find_file(d, images_stem), _find_file(d, labels_stem)
    if images_path is None or labels_path is None:
        raise DataError(f"{directory}: lacks {images_stem}.gz or {labels_stem}.gz")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images [N, 28, 28], found {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(
            f"{labels_path}: expected {len(images)} labels, found shape {tuple(labels.shape)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(f"{labels_path}: labels outside 0..{len(CLASS_NAMES) - 1}")
    labels, indices = labels.astype(np.int64), np.arange(len(images), dtype=np.int64)
    labels.flags.writeable = indices.flags.writeable = False
    return FashionMNIST(
        images=images,
        labels=labels,
        indices=indices,
        split=split,
        source=directory,
    )


@functools.lru_cache(maxsize=2)
def _load_packaged(split: str) -> FashionMNIST:
    resource = resources.files("drnet") / "assets" / PACKAGED_FILE
    try:
        with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            images = npz[f"{split}_images"]
            labels = npz[f"{split}_labels"].astype(np.int64)
            indices = npz[f"{split}_indices"].astype(np.int64)
        for array in (images, labels, indices):
            array.flags.writeable = False
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"packaged Fashion-MNIST subset drnet/assets/{PACKAGED_FILE} is unreadable ({exc}); "
            "reinstall drnet or run scripts/make_assets.py"
        ) from exc
    return FashionMNIST(images, labels, indices, split, PACKAGED)


def load_fashion_mnist(
    split: str = "train", source: str | os.PathLike | None = None
) -> FashionMNIST:
    """Load one split (``"train"`` or ``"test"``) of Fashion-MNIST.

    Args:
        split: ``"train"`` (60,000 canonical items; 8,000 packaged) or ``"test"`` (10,000; 2,000).
        source: a directory holding the canonical idx files, ``"packaged"`` for the subset shipped
            with drnet, or None to search (``DRNET_FASHION_MNIST``, then
            ``/usr/share/datasets/fashion-mnist/``, then the packaged subset).

    Returns:
        The items, read-only arrays; results are cached per (source, split).

    Raises:
        DataError: unknown split, or a named directory lacks or has corrupt files.
    """
    if split not in _CANONICAL:
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    where = resolve_source(source)
    if where == PACKAGED:
        return _load_packaged(split)
    return _load_canonical(where, split)
