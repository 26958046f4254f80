#!/usr/bin/env python3
"""Regenerate drnet's packaged data (``drnet/assets/``) from the canonical files.

Needs, only for this script (drnet itself depends on neither):

* the canonical Fashion-MNIST idx files, e.g. from Debian:
  ``apt-get install dataset-fashion-mnist`` (installs ``/usr/share/datasets/fashion-mnist/``);
* scikit-image, which ships the CC0 texture photographs: ``pip install scikit-image``.

Writes:

* ``fashion_mnist_subset.npz``: a balanced subset, ``--train-per-class`` training and
  ``--test-per-class`` test items per class, drawn at random (``--seed``) without replacement from
  the canonical training and test files (so train and test items stay apart). Arrays
  ``{train,test}_images`` (uint8 [N,28,28]), ``{train,test}_labels`` (uint8 [N]) and
  ``{train,test}_indices`` (int32 [N], the item's index in the canonical file), sorted by index.
* ``textures/{brick,grass,gravel}.png``: scikit-image's 512x512 grey CC0 textures, downscaled to
  ``--texture-size`` pixels (Lanczos).
* ``LICENSES.md``: the licence notices and provenance (with the canonical files' sha256).

The output is byte-for-byte reproducible: ``python scripts/make_assets.py --check`` regenerates
into a temporary folder and compares with ``drnet/assets/``.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import io
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "drnet" / "assets"
TEXTURES = {
    # name: (original, licence note from scikit-image's skimage.data docstrings)
    "brick": "CC0Textures 'Bricks25' (https://cc0textures.com/view.php?tex=Bricks25)",
    "grass": "DeviantArt 'Grass-01' by linolafett "
    "(https://www.deviantart.com/linolafett/art/Grass-01-434853879)",
    "gravel": "CC0Textures 'Gravel04' (https://cc0textures.com/view.php?tex=Gravel04)",
}
CANONICAL_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

MIT_LICENCE = """\
The MIT License (MIT) Copyright © [2017] Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the “Software”), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED “AS IS”, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` items of each class, drawn without replacement."""
    chosen = []
    for k in range(10):
        pool = np.flatnonzero(labels == k)
        if len(pool) < per_class:
            sys.exit(f"make_assets: class {k} has {len(pool)} items, fewer than {per_class}")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so reruns are byte-identical."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue(), compresslevel=9)


def make_assets(args: argparse.Namespace, out: Path) -> None:
    from skimage import data as skdata  # only this script needs scikit-image

    from drnet.data.fashion_mnist import CLASS_NAMES, CLASS_TITLES, load_fashion_mnist

    source = Path(args.fashion_mnist)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    arrays = {}
    counts = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        items = load_fashion_mnist(split, source=source)
        idx = balanced_subset(items.labels, per_class, rng)
        arrays[f"{split}_images"] = items.images[idx]
        arrays[f"{split}_labels"] = items.labels[idx].astype(np.uint8)
        arrays[f"{split}_indices"] = items.indices[idx].astype(np.int32)
        counts[split] = (per_class, len(items))
    write_npz(out / "fashion_mnist_subset.npz", arrays)

    (out / "textures").mkdir(exist_ok=True)
    for name in TEXTURES:
        grey = np.asarray(getattr(skdata, name)(), dtype=np.uint8)
        image = Image.fromarray(grey, mode="L")
        size = (args.texture_size, args.texture_size)
        image.resize(size, Image.Resampling.LANCZOS).save(out / "textures" / f"{name}.png")

    hashes = "\n".join(
        f"    {sha256(p)}  {p.name}" for p in (source / f for f in CANONICAL_FILES) if p.is_file()
    )
    pairs = zip(CLASS_NAMES, CLASS_TITLES, strict=True)
    classes = ", ".join(f"{k} {title} (`{name}`)" for k, (name, title) in enumerate(pairs))
    texture_lines = "\n".join(f"- `textures/{n}.png`: {src}." for n, src in TEXTURES.items())
    subset = textwrap.fill(
        "A balanced subset of Fashion-MNIST (Han Xiao, Kashif Rasul, Roland Vollgraf, "
        '"Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms", '
        "arXiv:1708.07747, 2017; https://github.com/zalandoresearch/fashion-mnist): "
        f"{counts['train'][0]} items per class drawn from the {counts['train'][1]:,} canonical "
        f"training items and {counts['test'][0]} per class from the {counts['test'][1]:,} "
        f"canonical test items (seed {args.seed}), so training and test items stay apart. "
        "Arrays `train_images`/`test_images` (uint8, N x 28 x 28), `train_labels`/`test_labels` "
        "(uint8) and `train_indices`/`test_indices` (each item's index in the canonical file). "
        f"Classes: {classes}.",
        width=100,
    )
    textures = textwrap.fill(
        "Grey 512 x 512 textures shipped with scikit-image (`skimage.data.brick`, `grass`, "
        f"`gravel`), downscaled to {args.texture_size} x {args.texture_size} (Lanczos). "
        "scikit-image documents them as downloaded from the sources below and licensed under "
        "the Creative Commons CC0 1.0 Universal public-domain dedication "
        "(https://creativecommons.org/publicdomain/zero/1.0/): no rights reserved.",
        width=100,
    )
    (out / "LICENSES.md").write_text(
        f"""# Packaged data: licences and provenance

Everything in this folder is made by `scripts/make_assets.py` (run
`python scripts/make_assets.py --check` to verify it reproduces these files byte for byte).

## `fashion_mnist_subset.npz`: Fashion-MNIST subset (MIT licence, Zalando Research)

{subset}

Made from the canonical files (sha256), as installed by Debian's `dataset-fashion-mnist`:

{hashes}

Fashion-MNIST is distributed under the MIT licence:

{MIT_LICENCE}
## `textures/`: CC0 texture photographs (public domain)

{textures}

{texture_lines}
""",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fashion-mnist",
        default="/usr/share/datasets/fashion-mnist",
        help="directory of the canonical Fashion-MNIST idx .gz files (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: drnet/assets")
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--texture-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--check", action="store_true", help="regenerate into a temporary folder and compare"
    )
    args = parser.parse_args(argv)
    if not args.check:
        make_assets(args, args.out)
        total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
        print(f"wrote {args.out} ({total / 1e6:.2f} MB)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        make_assets(args, Path(tmp))
        names = sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*") if p.is_file())
        _, mismatch, errors = filecmp.cmpfiles(args.out, tmp, names, shallow=False)
        for name in mismatch + errors:
            print(f"differs or missing: {args.out / name}")
        if mismatch or errors:
            return 1
        print(f"{args.out}: {len(names)} files match a fresh regeneration")
        return 0


if __name__ == "__main__":
    sys.exit(main())
