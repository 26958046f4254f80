"""Check a whole dataset up front and report every problem in one pass (``drnet data check``).

Training and evaluation stop at the first bad file; :func:`check_dataset` instead looks at every
file and collects what it finds, using the same readers and validators as the datasets
(:func:`~drnet.data.segmentation.read_image`, :func:`~drnet.data.segmentation.read_label`,
:func:`~drnet.data.segmentation.check_label`, :func:`~drnet.data.classification.load_rgb`,
:func:`~drnet.data.boxes.read_voc_xml`...), so a problem is reported with the message training
would have stopped on.

What is checked, by layout (detected as training does, or given):

* **Segmentation** (list files, Cityscapes, image/mask folders): list files present and non-empty
  with as many label lines as image lines, ``info.json`` readable, every listed image and label
  present and fully decodable (a truncated file is caught), labels single-channel, label values
  in ``[0, classes)`` or 255, label and image of the same size. Images smaller than
  ``crop_size`` are reported as *info*: training pads them (image 0, label 255).
* **Classification** (ImageFolder: ``<split>/<class>/<image>``): every class folder has images,
  every image decodes, train and val have the same class folders.
* **Boxes** (``boxes*.csv`` / ``boxes*.json`` tables and ``boxes/`` folders of Pascal-VOC XML
  found in the root, or given): every file parses, every box names an image that exists and lies
  inside it.

Severity ``error`` means training or evaluation would stop (or silently learn from bad data);
``info`` means it works but is worth knowing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm.auto import tqdm

from drnet.atomic import atomic_write_json
from drnet.constants import DATA_CHECK_LAYOUTS, IGNORE_INDEX
from drnet.data.boxes import BOX_KEYS, _check_box, _read_rows, read_voc_xml
from drnet.data.classification import load_rgb
from drnet.data.segmentation import (
    Sample,
    check_label,
    check_label_size,
    cityscapes_label_hint,
    cityscapes_samples,
    dataset_info,
    detect_layout,
    find_folder_split,
    folder_samples,
    list_file_samples,
    read_image,
    read_label,
)
from drnet.data.text import read_lines
from drnet.data.walk import FolderWalk, broken_link_message
from drnet.errors import DataError

ERROR, INFO = "error", "info"
LABELED_SPLITS = ("train", "val")  # splits that must have labels (others may be predict-only)
BOX_DIR_NAMES = ("boxes", "bbox", "Annotations")


@dataclass(frozen=True)
class Problem:
    """One finding: the file concerned, a message that names it and says what to do, and its
    severity (``"error"`` or ``"info"``)."""

    file: str
    message: str
    severity: str = ERROR
    split: str | None = None


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found."""

    root: str
    layout: str  # list | cityscapes | folder | imagefolder
    splits: dict[str, int] = field(default_factory=dict)  # split -> number of samples
    num_classes: int | None = None
    files_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def infos(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == INFO]

    @property
    def ok(self) -> bool:
        """True when nothing would stop training or evaluation."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "splits": self.splits,
            "num_classes": self.num_classes,
            "files_checked": self.files_checked,
            "errors": len(self.errors),
            "infos": len(self.infos),
            "files_with_errors": len({p.file for p in self.errors}),
            "problems": [asdict(p) for p in self.problems],
        }

    def summary(self) -> str:
        """One line: counts of errors, affected files, infos and files checked."""
        infos = f", {len(self.infos)} info" if self.infos else ""
        if self.ok:
            return f"no problems found ({self.files_checked} files checked{infos})"
        files = len({p.file for p in self.errors})
        return (
            f"{len(self.errors)} problem(s) in {files} file(s){infos}; "
            f"{self.files_checked} files checked"
        )

    def format(self, max_infos: int = 20) -> str:
        """The human-readable report: a header, every error, up to ``max_infos`` infos, the
        summary line."""
        shown_splits = ", ".join(f"{name} ({n})" for name, n in self.splits.items()) or "none"
        classes = f"; {self.num_classes} classes" if self.num_classes else ""
        lines = [f"{self.root}: {LAYOUT_NAMES[self.layout]}; splits: {shown_splits}{classes}"]
        lines += [f"error: {p.message}" for p in self.errors]
        lines += [f"info: {p.message}" for p in self.infos[:max_infos]]
        if len(self.infos) > max_infos:
            lines.append(f"info: ... {len(self.infos) - max_infos} more (all of them in --json)")
        lines.append(self.summary())
        return "\n".join(lines)


LAYOUT_NAMES = {
    "list": "segmentation, list files",
    "cityscapes": "segmentation, Cityscapes",
    "folder": "segmentation, image/mask folders",
    "imagefolder": "classification, ImageFolder",
}


# -- one sample ----------------------------------------------------------------------------------


@dataclass
class _Result:
    problems: list[Problem] = field(default_factory=list)
    files: int = 0
    max_label: int | None = None  # largest label value other than 255 (classes unknown)
    labelled: bool | None = None  # the label has a pixel that is not 255 (None: no label read)
    size: tuple[int, int] | None = None  # (width, height) of the image


def _check_segmentation_sample(
    sample: Sample, split: str, num_classes: int | None, crop_size: int | None
) -> _Result:
    result = _Result(files=1)
    image = None
    try:
        image = read_image(sample.image)
        height, width = image.shape[-2:]
        result.size = (int(width), int(height))
        if crop_size and (height < crop_size or width < crop_size):
            result.problems.append(
                Problem(
                    str(sample.image),
                    f"image {sample.image} is {width}x{height}, smaller than --crop-size "
                    f"{crop_size}: training pads it (image 0, label 255 = ignore)",
                    INFO,
                    split,
                )
            )
    except DataError as exc:
        result.problems.append(Problem(str(sample.image), str(exc), ERROR, split))
    if sample.label is None:
        return result
    result.files += 1
    try:
        label = read_label(sample.label)
    except DataError as exc:
        result.problems.append(Problem(str(sample.label), str(exc), ERROR, split))
        return result
    result.labelled = bool((label != IGNORE_INDEX).any())
    lossy = _lossy_format(sample.label)
    if lossy:
        result.problems.append(
            Problem(
                str(sample.label),
                f"label {sample.label} is a {lossy} file: lossy compression changes class "
                "indices near edges (wrong classes even where they stay below --num-classes); "
                "save labels as PNG",
                ERROR,
                split,
            )
        )
    try:  # the size and the values are checked independently: report both
        if image is not None:
            check_label_size(image, label, sample)
    except DataError as exc:
        result.problems.append(Problem(str(sample.label), str(exc), ERROR, split))
    if num_classes is None:
        values = label[label != IGNORE_INDEX]
        result.max_label = int(values.max()) if values.numel() else None
        return result
    try:
        check_label(label, num_classes, sample.label)
    except DataError as exc:
        result.problems.append(Problem(str(sample.label), str(exc), ERROR, split))
    return result


def _lossy_format(path: Path) -> str | None:
    """``"JPEG"`` when the label file at ``path`` is stored lossily (whatever its extension),
    else None."""
    try:
        with Image.open(path) as im:
            return "JPEG" if im.format in ("JPEG", "MPO") else None
    except OSError:
        return None


def _check_classification_image(path: Path, split: str) -> _Result:
    result = _Result(files=1)
    try:
        image = load_rgb(path)
        result.size = image.size
    except DataError as exc:
        result.problems.append(Problem(str(path), str(exc), ERROR, split))
    return result


# -- segmentation layouts ------------------------------------------------------------------------


def _segmentation_splits(root: Path, layout: str, list_dir: Path | None) -> list[str]:
    if layout == "list":
        folder = list_dir or root
        lists = [p.name for p in folder.glob("*_*.txt") if not p.name.startswith(".")]
        names = {n[: -len("_images.txt")] for n in lists if n.endswith("_images.txt")}
        names |= {n[: -len("_labels.txt")] for n in lists if n.endswith("_labels.txt")}
        return sorted(names)
    if layout == "cityscapes":
        return sorted(p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir())
    candidates = set()
    if (root / "images").is_dir():
        candidates |= {p.name for p in (root / "images").iterdir() if p.is_dir()}
    candidates |= {p.name for p in root.iterdir() if p.is_dir() and (p / "images").is_dir()}
    return sorted(s for s in candidates if find_folder_split(root, s) is not None)


def _segmentation_samples(
    root: Path, layout: str, split: str, list_dir: Path | None, problems: list[Problem]
) -> list[Sample]:
    """The samples of ``split``; problems with the split itself go to ``problems``."""
    labeled = split in LABELED_SPLITS
    try:
        if layout == "list":
            folder = list_dir or root
            labels_txt = folder / f"{split}_labels.txt"
            samples = list_file_samples(root, split, list_dir, require_labels=labeled)
            if not labels_txt.is_file():
                problems.append(
                    Problem(
                        str(labels_txt),
                        f"{labels_txt} does not exist: split {split!r} has no labels "
                        "(fine for predict, not for training or eval)",
                        INFO,
                        split,
                    )
                )
            return samples
        if layout == "cityscapes":
            samples = cityscapes_samples(root, split, require_labels=False)
        else:
            images_dir, masks_dir = find_folder_split(root, split)  # type: ignore[misc]
            samples = folder_samples(images_dir, masks_dir, require_labels=False)
    except DataError as exc:
        where = (list_dir or root) / f"{split}_images.txt" if layout == "list" else root
        problems.append(Problem(str(where), str(exc), ERROR, split))
        # the lines that do pair up are still checked, so one pass reports everything
        return _paired_list_lines(root, split, list_dir) if layout == "list" else []
    unlabeled = [s for s in samples if s.label is None]
    if unlabeled and len(unlabeled) == len(samples):
        where = "gtFine/" if layout == "cityscapes" else "masks/ (or labels/)"
        problems.append(
            Problem(
                str(root),
                f"split {split!r} of {root} has no labels (looked in {where}): "
                + ("training and eval need them" if labeled else "fine for predict only"),
                ERROR if labeled else INFO,
                split,
            )
        )
    elif unlabeled:
        for s in unlabeled:
            if layout == "cityscapes":
                hint = cityscapes_label_hint(root, root / "leftImg8bit" / split, s.image)
            else:
                hint = " (same relative path, any image extension)"
            problems.append(
                Problem(str(s.image), f"image {s.image} has no label{hint}", ERROR, split)
            )
    return samples


def _paired_list_lines(root: Path, split: str, list_dir: Path | None) -> list[Sample]:
    """The samples of the lines both list files have (``{split}_images.txt`` line i with
    ``{split}_labels.txt`` line i), for a split whose lists do not match as a whole."""
    folder = list_dir or root
    try:
        images = read_lines(folder / f"{split}_images.txt")
        labels = read_lines(folder / f"{split}_labels.txt")
    except DataError:
        return []
    return [
        Sample(root / image, root / label, str(Path(image).with_suffix("")))
        for image, label in zip(images, labels, strict=False)
    ]


# -- classification ------------------------------------------------------------------------------


def _has_images(folder: Path) -> bool:
    return bool(FolderWalk(folder, IMG_EXTENSIONS).files)


def _is_class_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _imagefolder_splits(root: Path) -> dict[str, Path]:
    """``{split: folder}``: sub-folders holding class folders with images, else ``root`` itself
    when its sub-folders hold images (a single split, named ``.``)."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = {}
    for sub in subdirs:
        classes = [c for c in sub.iterdir() if _is_class_dir(c)]
        if classes and any(_has_images(c) for c in classes) and sub.name not in BOX_DIR_NAMES:
            splits[sub.name] = sub
    if not splits and any(_has_images(sub) for sub in subdirs):
        splits["."] = root
    return splits


def _imagefolder_images(split_dir: Path, split: str, problems: list[Problem]) -> list[Path]:
    """The images of a split as training reads them (:class:`FolderWalk`: no link loops, no
    hidden files or folders); what the walk skipped is reported as info, links that cannot be
    read as errors."""
    images = []
    hidden = sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name.startswith("."))
    if hidden:
        names = ", ".join(p.name for p in hidden[:5])
        problems.append(
            Problem(str(split_dir), f"hidden folder(s) skipped, not classes: {names}", INFO, split)
        )
    for class_dir in sorted(p for p in split_dir.iterdir() if _is_class_dir(p)):
        walk = FolderWalk(class_dir, IMG_EXTENSIONS)
        for note in walk.notes():
            problems.append(Problem(str(class_dir), note, INFO, split))
        for link, reason in walk.broken:  # ImageFolder lists them, and training stops on them
            problems.append(Problem(str(link), broken_link_message(link, reason), ERROR, split))
        found = [p for p in walk.files if p not in {link for link, _ in walk.broken}]
        if not found:
            problems.append(
                Problem(
                    str(class_dir),
                    f"class folder {class_dir} has no images ({', '.join(IMG_EXTENSIONS)}); "
                    "ImageFolder refuses empty classes: add images or remove the folder",
                    ERROR,
                    split,
                )
            )
        images += found
    return images


# -- boxes ---------------------------------------------------------------------------------------


class _ImageIndex:
    """Find the image a box entry names: by path (relative to the root, the box file's folder,
    or absolute), by relative path without extension, or by a unique file stem."""

    def __init__(self, root: Path, images: Iterable[Path], sizes: dict[Path, tuple[int, int]]):
        self.root = root
        self.sizes = sizes
        self.by_key: dict[str, Path] = {}
        stems: dict[str, list[Path]] = {}
        for path in images:
            try:
                key = path.relative_to(root).with_suffix("").as_posix()
            except ValueError:
                key = path.with_suffix("").as_posix()
            self.by_key[key] = path
            stems.setdefault(path.stem, []).append(path)
            stems.setdefault(path.name, []).append(path)
        self.by_stem = {k: v[0] for k, v in stems.items() if len(v) == 1}

    def find(self, name: str, base: Path) -> Path | None:
        for candidate in (base / name, self.root / name, Path(name)):
            if candidate.is_file():
                return candidate
        key = Path(name).with_suffix("").as_posix()
        return self.by_key.get(key) or self.by_stem.get(Path(name).name)

    def size(self, path: Path) -> tuple[int, int] | None:
        """``(width, height)`` of an image (from the decode pass, else from its header)."""
        if path in self.sizes:
            return self.sizes[path]
        try:
            with Image.open(path) as im:
                return im.size
        except OSError:
            return None


def _box_outside(box: Sequence[float], size: tuple[int, int]) -> bool:
    """Whether ``box`` (x1, y1, x2, y2 edges) reaches past an image of ``(width, height)``."""
    return box[2] > size[0] or box[3] > size[1]


def _fmt_box(box: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def _check_box_table(path: Path, index: _ImageIndex) -> tuple[list[Problem], int]:
    problems: list[Problem] = []
    try:
        rows = _read_rows(path)
    except DataError as exc:
        return [Problem(str(path), str(exc))], 0
    for row, where in rows:
        name = str(row.get("image", "")).strip().replace("\\", "/")
        image = index.find(name, path.parent) if name else None
        if image is None:
            bases = dict.fromkeys([str(path.parent), str(index.root)])
            problems.append(
                Problem(
                    str(path),
                    f"{where}: image {name!r} not found (relative to {' or '.join(bases)}); "
                    "fix the row or add the image",
                )
            )
            continue
        try:
            box = [float(row[k]) for k in BOX_KEYS[1:5]]
            _check_box(box, where)
        except (KeyError, TypeError, ValueError):
            problems.append(Problem(str(path), f"{where}: x1, y1, x2, y2 must be numbers"))
            continue
        except DataError as exc:
            problems.append(Problem(str(path), str(exc)))
            continue
        size = index.size(image)
        if size is not None and _box_outside(box, size):
            problems.append(
                Problem(
                    str(path),
                    f"{where}: box {_fmt_box(box)} lies outside image {image} "
                    f"({size[0]}x{size[1]}); coordinates are 0-based pixel edges, x2/y2 "
                    "exclusive",
                )
            )
    return problems, 1


def _check_xml_dir(directory: Path, index: _ImageIndex) -> tuple[list[Problem], int]:
    problems: list[Problem] = []
    files = FolderWalk(directory, (".xml",)).files
    for xml in files:
        try:
            boxes = read_voc_xml(xml)
        except DataError as exc:
            problems.append(Problem(str(xml), str(exc)))
            continue
        rel = xml.relative_to(directory).with_suffix("").as_posix()
        image = index.by_key.get(rel) or index.by_stem.get(xml.stem)
        if image is None:
            problems.append(
                Problem(
                    str(xml),
                    f"{xml}: no image matches this box file (looked for {rel}.* under "
                    f"{index.root} and for a unique {xml.stem}.*)",
                )
            )
            continue
        size = index.size(image)
        bound = (boxes.size[1], boxes.size[0]) if boxes.size else size
        if bound is None:
            continue
        for number, box in enumerate(boxes.boxes.tolist(), start=1):
            if _box_outside(box, bound):
                problems.append(
                    Problem(
                        str(xml),
                        f"{xml}: <object> {number}: box {_fmt_box(box)} (0-based edges) lies "
                        f"outside the image ({bound[0]}x{bound[1]})",
                    )
                )
    return problems, len(files)


def _find_box_sources(root: Path) -> list[Path]:
    found = sorted(p for p in root.glob("boxes*") if p.suffix.lower() in (".csv", ".json"))
    found += [root / name for name in BOX_DIR_NAMES if (root / name).is_dir()]
    return found


# -- entry point ---------------------------------------------------------------------------------


def detect_dataset_layout(root: Path, list_dir: Path | None = None) -> str:
    """``list``, ``cityscapes``, ``folder`` (segmentation) or ``imagefolder`` (classification)."""
    if list_dir is not None and any(list_dir.glob("*_images.txt")):
        return "list"
    if any(root.glob("*_images.txt")):
        return "list"
    try:
        return detect_layout(root)
    except DataError:
        pass
    if _segmentation_splits(root, "folder", None):
        return "folder"
    if _imagefolder_splits(root):
        return "imagefolder"
    raise DataError(
        f"cannot tell what {root} holds: expected segmentation list files ({{split}}_images.txt "
        f"+ info.json), Cityscapes (leftImg8bit/ + gtFine/), image/mask folders "
        f"(images/{{split}}/ + masks/{{split}}/), or an ImageFolder tree "
        f"({{split}}/{{class}}/{{image}}); pass --layout"
    )


def check_dataset(
    root: str | os.PathLike,
    *,
    layout: str = "auto",
    num_classes: int | None = None,
    crop_size: int | None = None,
    splits: Sequence[str] | None = None,
    list_dir: str | os.PathLike | None = None,
    boxes: Sequence[str | os.PathLike] = (),
    workers: int = 4,
    progress: bool = False,
) -> CheckReport:
    """Check every file of the dataset at ``root`` and return all problems found.

    Args:
        layout: ``auto`` (detect), ``list``, ``cityscapes``, ``folder`` or ``imagefolder``.
        num_classes: label values must be below it (or 255); default ``info.json``'s
            ``classes`` (19 for Cityscapes). Unknown: the largest label value is reported.
        crop_size: report segmentation images smaller than this training crop (as info).
        splits: only these splits (default: all found).
        list_dir: where the list files are, if not in ``root`` (list layout).
        boxes: box sources to check (files or XML folders) besides those found in ``root``.
        workers: threads decoding images.
        progress: show a tqdm bar on stderr.

    Raises :class:`DataError` only when ``root`` cannot be checked at all (missing, unknown
    layout); problems with its files are in the report.
    """
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root} is a file, expected a folder (the dataset root)")
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    list_dir = Path(list_dir) if list_dir else None
    if layout not in DATA_CHECK_LAYOUTS:
        raise DataError(f"--layout {layout!r} is not one of {', '.join(DATA_CHECK_LAYOUTS)}")
    if layout == "auto":
        layout = detect_dataset_layout(root, list_dir)
    report = CheckReport(str(root), layout)
    problems = report.problems
    jobs: list[tuple[str, Callable[[], _Result], Path]] = []  # (split, check, image)
    known_images: list[Path] = []  # every image box files may name, checked splits or not

    if layout == "imagefolder":
        found = _imagefolder_splits(root)
        names = _select_splits(list(found), splits, root, problems)
        # boxes of the splits not checked (--splits) still name existing images
        known_images = [
            p for folder in found.values() for p in FolderWalk(folder, IMG_EXTENSIONS).files
        ]
        classes: dict[str, list[str]] = {}
        for split in names:
            images = _imagefolder_images(found[split], split, problems)
            classes[split] = sorted(p.name for p in found[split].iterdir() if _is_class_dir(p))
            report.splits[split] = len(images)
            jobs += [(split, _bind(_check_classification_image, p, split), p) for p in images]
        for split in names:  # every split needs the training split's classes, in its order
            if "train" in classes and split != "train" and classes[split] != classes["train"]:
                only = sorted(set(classes["train"]) ^ set(classes[split]))
                problems.append(
                    Problem(
                        str(found[split]),
                        f"{found[split]} and {found['train']} have different class folders "
                        f"({', '.join(only[:8])}); every split needs the same classes",
                        split=split,
                    )
                )
        report.num_classes = len(classes.get("train") or next(iter(classes.values()), []))
    else:
        names = _select_splits(_segmentation_splits(root, layout, list_dir), splits, root, problems)
        if num_classes is None:
            try:
                num_classes = dataset_info(root, layout, names[0] if names else "train")[
                    "num_classes"
                ]
            except DataError as exc:
                problems.append(Problem(str(root / "info.json"), str(exc)))
        report.num_classes = num_classes
        for split in names:
            samples = _segmentation_samples(root, layout, split, list_dir, problems)
            report.splits[split] = len(samples)
            jobs += [
                (
                    split,
                    _bind(_check_segmentation_sample, s, split, num_classes, crop_size),
                    s.image,
                )
                for s in samples
            ]

    results = _run(jobs, workers, progress)
    sizes: dict[Path, tuple[int, int]] = {}
    max_label: int | None = None
    labelled: dict[str, bool] = {}  # split: any label pixel that is not ignored
    for (split, _, image), result in zip(jobs, results, strict=True):
        if result.labelled is not None:
            labelled[split] = labelled.get(split, False) or result.labelled
        report.files_checked += result.files
        problems += result.problems
        if result.size is not None:
            sizes[image] = result.size
        if result.max_label is not None:
            max_label = max(max_label or 0, result.max_label)
    if layout != "imagefolder":
        problems += [
            Problem(
                str(root),
                f"split {split!r}: every label pixel is {IGNORE_INDEX} (ignored), so training "
                "learns nothing and mIoU is undefined; check the label files (class indices, "
                f"{IGNORE_INDEX} = ignore)",
                ERROR,
                split,
            )
            for split, any_label in labelled.items()
            if not any_label and not any(p.split == split and p.severity == ERROR for p in problems)
        ]
    if num_classes is None and layout != "imagefolder" and max_label is not None:
        problems.append(
            Problem(
                str(root),
                f"the number of classes of {root} is unknown (no info.json 'classes'): label "
                f"values go up to {max_label}; pass --num-classes N to check them",
                INFO,
            )
        )

    sources = [Path(b) for b in boxes] + [
        p for p in _find_box_sources(root) if p not in [Path(b) for b in boxes]
    ]
    if sources:
        index = _ImageIndex(root, known_images or [image for _, _, image in jobs], sizes)
        for source in sources:
            if source.is_dir():
                found_problems, count = _check_xml_dir(source, index)
            elif source.is_file():
                found_problems, count = _check_box_table(source, index)
            else:
                found_problems, count = [Problem(str(source), f"box file {source} not found")], 0
            problems += found_problems
            report.files_checked += count
    return report


def _bind(fn: Callable[..., _Result], *args: Any) -> Callable[[], _Result]:
    return lambda: fn(*args)


def _select_splits(
    found: list[str], wanted: Sequence[str] | None, root: Path, problems: list[Problem]
) -> list[str]:
    if not wanted:
        if not found:
            problems.append(Problem(str(root), f"no splits found in {root}"))
        return found
    for split in wanted:
        if split not in found:
            problems.append(
                Problem(
                    str(root),
                    f"split {split!r} not found in {root} (found: {', '.join(found) or 'none'})",
                    split=split,
                )
            )
    return [s for s in found if s in wanted]


def _run(
    jobs: list[tuple[str, Callable[[], _Result], Path]], workers: int, progress: bool
) -> list[_Result]:
    """Run the checks (in ``workers`` threads: decoding releases the GIL), in order."""
    bar = tqdm(total=len(jobs), desc="check", unit="file", disable=not progress, leave=False)
    results: list[_Result] = []
    try:
        if workers > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(workers) as pool:
                for result in pool.map(lambda job: job[1](), jobs):
                    results.append(result)
                    bar.update(1)
        else:
            for job in jobs:
                results.append(job[1]())
                bar.update(1)
    finally:
        bar.close()
    return results


def write_report_json(report: CheckReport, path: str | os.PathLike) -> Path:
    """Write :meth:`CheckReport.to_dict` to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, report.to_dict())


__all__ = [
    "CheckReport",
    "Problem",
    "check_dataset",
    "detect_dataset_layout",
    "write_report_json",
]
