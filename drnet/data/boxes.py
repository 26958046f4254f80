"""Ground-truth boxes for localization: Pascal-VOC XML (the ImageNet format), CSV and JSON.

Every reader returns an :class:`ImageBoxes` per image key (the image's path relative to the split
root, with ``/`` separators, e.g. ``"cat/img_001.png"``). Boxes are float ``(x1, y1, x2, y2)``
pixel *edges* (``x2`` exclusive, the :mod:`torchvision.ops` convention).

- **Pascal-VOC XML** (one file per image, as ImageNet ships its boxes): ``<object><name>`` is the
  label and ``<bndbox>`` holds inclusive pixel indices ``xmin..xmax``; with ``xml_origin=1`` (VOC's
  1-based indices, the default) the box is ``(xmin - 1, ymin - 1, xmax, ymax)``; pass
  ``xml_origin=0`` for 0-based files. ``<size>`` is kept: when it differs from the image's real
  size (a dataset resized after annotation), the boxes are rescaled to the image. A directory is
  searched recursively; an image ``cat/img_001.png`` takes ``cat/img_001.xml`` or, failing that,
  any ``img_001.xml``. XML files matching no image are ignored.
- **CSV**: a header ``image,x1,y1,x2,y2,label`` and one row per box, coordinates as pixel edges in
  the image's own resolution. ``image`` is the path relative to the split root (or see below),
  or a bare file name when that is unique in the split. An empty ``label`` means the image's
  own class.
- **JSON**: a list of objects with the same keys as the CSV columns.

In a CSV/JSON table ``image`` may also be relative to the table's own folder, so one table can
list the boxes of several splits (rows of other splits are skipped); a row naming an image file
that does not exist is an error unless ``strict=False``.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from drnet.data.text import read_json, read_text
from drnet.data.walk import FolderWalk
from drnet.errors import DataError

BOX_KEYS = ("image", "x1", "y1", "x2", "y2", "label")


@dataclass
class ImageBoxes:
    """The ground-truth boxes of one image.

    ``boxes`` is float ``[N, 4]`` in pixel edges; ``labels`` has one name per box (``""`` means
    the image's own class); ``size`` is ``(H, W)`` the boxes refer to, when the file says so.
    """

    boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    labels: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None
    source: str = ""

    def append(self, box: Iterable[float], label: str) -> None:
        self.boxes = torch.cat([self.boxes, torch.tensor([list(box)], dtype=torch.float32)])
        self.labels.append(label)

    def for_class(self, class_name: str, image_size: tuple[int, int] | None = None) -> Tensor:
        """Boxes ``[G, 4]`` labelled ``class_name`` (or unlabelled), in ``image_size`` pixels."""
        keep = [i for i, label in enumerate(self.labels) if label in ("", class_name)]
        boxes = self.boxes[keep]
        if image_size is not None and self.size is not None and tuple(self.size) != image_size:
            sy, sx = image_size[0] / self.size[0], image_size[1] / self.size[1]
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
        return boxes


def _check_box(box: list[float], where: str) -> list[float]:
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1) or min(x1, y1) < 0:
        raise DataError(
            f"{where}: box (x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}) is empty or negative; "
            "expected 0 <= x1 < x2 and 0 <= y1 < y2"
        )
    return box


def read_voc_xml(path: str | Path, xml_origin: int = 1) -> ImageBoxes:
    """Read one Pascal-VOC / ImageNet XML annotation (see the module docstring for the rule)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path}: cannot read the XML box file ({exc})") from exc
    result = ImageBoxes(source=str(path))
    size = root.find("size")
    if size is not None:
        try:
            width, height = int(size.findtext("width", "0")), int(size.findtext("height", "0"))
        except ValueError as exc:
            raise DataError(f"{path}: <size> has a non-integer width or height") from exc
        if width > 0 and height > 0:
            result.size = (height, width)
    objects = root.findall("object")
    if not objects:
        raise DataError(f"{path}: no <object> in the XML box file; expected at least one box")
    for number, obj in enumerate(objects, start=1):
        bndbox = obj.find("bndbox")
        where = f"{path}: <object> {number}"
        if bndbox is None:
            raise DataError(f"{where} has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (
                float(bndbox.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError as exc:
            raise DataError(f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax") from exc
        box = [xmin - xml_origin, ymin - xml_origin, xmax - xml_origin + 1, ymax - xml_origin + 1]
        result.append(_check_box(box, where), (obj.findtext("name") or "").strip())
    return result


def _read_rows(path: Path) -> list[tuple[dict, str]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with io.StringIO(read_text(path, "box file"), newline="") as handle:
                reader = csv.DictReader(handle)
                missing = [k for k in BOX_KEYS[:5] if k not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(
                        f"{path}: missing CSV column(s) {', '.join(missing)}; "
                        f"expected a header {','.join(BOX_KEYS)}"
                    )
                return [(row, f"{path}: line {n}") for n, row in enumerate(reader, start=2)]
        data = read_json(path, "box file")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the box file ({exc})") from exc
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise DataError(f"{path}: expected a JSON list of objects with keys {', '.join(BOX_KEYS)}")
    return [(row, f"{path}: entry {n}") for n, row in enumerate(data)]


def _image_index(image_keys: Iterable[str]) -> tuple[set[str], dict[str, str]]:
    keys = set(image_keys)
    by_name: dict[str, str] = {}
    duplicates: set[str] = set()
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        if name in by_name:
            duplicates.add(name)
        by_name[name] = key
    for name in duplicates:
        del by_name[name]
    return keys, by_name


def _resolve_row_image(
    image: str, keys: set[str], by_name: dict[str, str], table_dir: Path, root: Path | None
) -> tuple[str | None, bool]:
    """The split key of a row's ``image`` and whether the file exists anywhere we looked."""
    if image in keys:
        return image, True
    candidates = [table_dir / image, Path(image)]
    if root is not None:
        candidates.insert(0, root / image)
        root_resolved = root.resolve()
        for candidate in candidates:
            try:
                key = candidate.resolve().relative_to(root_resolved).as_posix()
            except ValueError:
                continue
            if key in keys:
                return key, True
    if "/" not in image and image in by_name:
        return by_name[image], True
    return None, any(candidate.is_file() for candidate in candidates)


def read_box_table(
    path: str | Path,
    image_keys: Iterable[str],
    root: str | Path | None = None,
    strict: bool = True,
) -> dict[str, ImageBoxes]:
    """Read a CSV or JSON box table for the images ``image_keys`` (paths relative to ``root``).

    A row's ``image`` may be relative to the split root, relative to the box file's folder
    (one table can serve several splits: ``val/cat/1.png``, ``holdout/cat/2.png``), absolute,
    or a bare file name unique in the split. Rows naming an existing image outside the split are
    skipped; with ``strict`` a row naming an image that does not exist is a :class:`DataError`.
    """
    path = Path(path)
    keys, by_name = _image_index(image_keys)
    root = Path(root) if root is not None else None
    table: dict[str, ImageBoxes] = {}
    for row, where in _read_rows(path):
        image = str(row.get("image", "")).strip().replace("\\", "/")
        key, exists = _resolve_row_image(image, keys, by_name, path.parent, root)
        if key is None:
            if strict and not exists:
                raise DataError(
                    f"{where}: image {image!r} not found (give its path relative to the split "
                    "root, e.g. 'cat/img_001.png', or to the box file's folder)"
                )
            continue
        try:
            box = [float(row[k]) for k in BOX_KEYS[1:5]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: x1, y1, x2, y2 must be numbers") from exc
        label = row.get("label")
        label = "" if label is None else str(label).strip()
        table.setdefault(key, ImageBoxes(source=str(path))).append(_check_box(box, where), label)
    return table


def read_xml_dir(
    directory: str | Path, image_keys: Iterable[str], xml_origin: int = 1
) -> dict[str, ImageBoxes]:
    """Read the XML files under ``directory`` that match the images ``image_keys``."""
    directory = Path(directory)
    by_relative: dict[str, Path] = {}
    by_stem: dict[str, Path] = {}
    for xml in FolderWalk(directory, (".xml",)).files:
        by_relative[xml.relative_to(directory).with_suffix("").as_posix()] = xml
        by_stem.setdefault(xml.stem, xml)
    table = {}
    for key in image_keys:
        stem_key = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
        xml = by_relative.get(stem_key) or by_stem.get(stem_key.rsplit("/", 1)[-1])
        if xml is not None:
            table[key] = read_voc_xml(xml, xml_origin)
    return table


def load_boxes(
    source: str | Path,
    image_keys: Iterable[str],
    *,
    root: str | Path | None = None,
    xml_origin: int = 1,
    strict: bool = True,
) -> dict[str, ImageBoxes]:
    """Ground-truth boxes for ``image_keys`` from a directory of XML files, a CSV or a JSON file.

    Images without boxes are simply absent from the result. Raises :class:`DataError` for a
    missing or unreadable source, a malformed entry, an XML without objects, or (``strict``) a
    CSV/JSON row that names an image file that does not exist (see :func:`read_box_table`).
    """
    source = Path(source)
    image_keys = list(image_keys)
    if source.is_dir():
        return read_xml_dir(source, image_keys, xml_origin)
    if not source.is_file():
        raise DataError(f"{source}: box file or directory not found")
    if source.suffix.lower() == ".xml":
        if len(image_keys) != 1:
            raise DataError(f"{source}: a single XML file can only describe a single image")
        return {image_keys[0]: read_voc_xml(source, xml_origin)}
    if source.suffix.lower() not in (".csv", ".json"):
        raise DataError(
            f"{source}: unknown box file type; expected a directory of Pascal-VOC .xml files, "
            "a .csv or a .json"
        )
    return read_box_table(source, image_keys, root=root, strict=strict)
