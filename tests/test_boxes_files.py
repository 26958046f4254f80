"""Ground-truth box files: Pascal-VOC XML, CSV and JSON, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drnet.data.boxes import ImageBoxes, load_boxes, read_voc_xml
from drnet.errors import DataError


def voc_xml(objects: list[tuple[str, int, int, int, int]], size: tuple[int, int] | None) -> str:
    parts = ["<annotation><filename>x.jpg</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[1]}</width><height>{size[0]}</height></size>")
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(
            f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def touch_images(root: Path, keys: list[str]) -> list[str]:
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"")
    return keys


def test_voc_xml_one_based_inclusive_to_pixel_edges(tmp_path: Path):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml([("dog", 1, 1, 10, 20), ("cat", 5, 6, 5, 6)], (30, 40)))
    boxes = read_voc_xml(path)
    assert boxes.boxes.tolist() == [[0, 0, 10, 20], [4, 5, 5, 6]]  # a 1-pixel box has area 1
    assert boxes.labels == ["dog", "cat"] and boxes.size == (30, 40)
    assert read_voc_xml(path, xml_origin=0).boxes.tolist()[0] == [1, 1, 11, 21]


def test_voc_xml_errors(tmp_path: Path):
    empty = tmp_path / "empty.xml"
    empty.write_text(voc_xml([], (10, 10)))
    with pytest.raises(DataError, match=r"empty\.xml.*no <object>"):
        read_voc_xml(empty)
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><object>")
    with pytest.raises(DataError, match="broken.xml"):
        read_voc_xml(broken)
    no_box = tmp_path / "nobox.xml"
    no_box.write_text("<annotation><object><name>a</name></object></annotation>")
    with pytest.raises(DataError, match="no <bndbox>"):
        read_voc_xml(no_box)
    text = tmp_path / "text.xml"
    text.write_text(voc_xml([("a", 1, 1, 5, 5)], None).replace("<xmax>5", "<xmax>five"))
    with pytest.raises(DataError, match="numeric"):
        read_voc_xml(text)
    inverted = tmp_path / "inverted.xml"
    inverted.write_text(voc_xml([("a", 9, 1, 3, 5)], None))
    with pytest.raises(DataError, match="empty or negative"):
        read_voc_xml(inverted)


def test_boxes_for_a_class_are_rescaled_to_the_real_image_size():
    boxes = ImageBoxes(size=(100, 200))
    boxes.append([10, 20, 30, 40], "dog")
    boxes.append([0, 0, 5, 5], "cat")
    boxes.append([1, 1, 2, 2], "")  # unlabelled: the image's own class
    assert boxes.for_class("dog").tolist() == [[10, 20, 30, 40], [1, 1, 2, 2]]
    assert boxes.for_class("dog", (50, 100)).tolist()[0] == [5, 10, 15, 20]
    assert boxes.for_class("bird").tolist() == [[1, 1, 2, 2]]


def test_xml_directory_matches_by_relative_path_then_by_stem(tmp_path: Path):
    xml_dir = tmp_path / "boxes"
    (xml_dir / "cat").mkdir(parents=True)
    (xml_dir / "dog").mkdir()
    (xml_dir / "cat" / "001.xml").write_text(voc_xml([("cat", 1, 1, 4, 4)], None))
    (xml_dir / "dog" / "001.xml").write_text(voc_xml([("dog", 2, 2, 8, 8)], None))
    (xml_dir / "ILSVRC_val_7.xml").write_text(voc_xml([("n0144", 1, 1, 2, 2)], None))
    (xml_dir / "unused.xml").write_text(voc_xml([], None))  # never read: matches no image
    table = load_boxes(
        xml_dir, ["cat/001.png", "dog/001.png", "n0144/ILSVRC_val_7.JPEG", "x/9.png"]
    )
    assert table["cat/001.png"].labels == ["cat"]
    assert table["dog/001.png"].boxes.tolist() == [[1, 1, 8, 8]]
    assert table["n0144/ILSVRC_val_7.JPEG"].labels == ["n0144"]
    assert "x/9.png" not in table


def test_csv_paths_relative_to_split_or_to_the_table(tmp_path: Path):
    root = tmp_path / "data"
    val = touch_images(root / "val", ["cat/1.png", "dog/2.png", "dog/unique.png"])
    touch_images(root / "holdout", ["cat/3.png"])
    table_path = root / "boxes.csv"
    table_path.write_text(
        "image,x1,y1,x2,y2,label\n"
        "val/cat/1.png,0,0,10,10,cat\n"  # relative to the table's folder
        "dog/2.png,1,2,3,4,dog\n"  # relative to the split root
        "dog/2.png,5,5,9,9,\n"  # a second box, unlabelled
        "unique.png,1,1,2,2,dog\n"  # a bare file name unique in the split
        "holdout/cat/3.png,0,0,5,5,cat\n"  # another split: skipped
    )
    table = load_boxes(table_path, val, root=root / "val")
    assert sorted(table) == ["cat/1.png", "dog/2.png", "dog/unique.png"]
    assert table["dog/2.png"].boxes.tolist() == [[1, 2, 3, 4], [5, 5, 9, 9]]
    assert table["dog/2.png"].labels == ["dog", ""]
    # One table for several splits, with paths relative to its folder.
    shared = root / "shared.csv"
    shared.write_text(
        "image,x1,y1,x2,y2,label\nval/cat/1.png,0,0,10,10,cat\nholdout/cat/3.png,0,0,5,5,cat\n"
    )
    assert list(load_boxes(shared, ["cat/3.png"], root=root / "holdout")) == ["cat/3.png"]
    assert list(load_boxes(shared, val, root=root / "val")) == ["cat/1.png"]


def test_csv_errors(tmp_path: Path):
    root = tmp_path / "val"
    keys = touch_images(root, ["cat/1.png"])
    bad = tmp_path / "bad.csv"
    bad.write_text("image,x1,y1,x2,y2,label\ncat/404.png,0,0,1,1,cat\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 2: image 'cat/404.png' not found"):
        load_boxes(bad, keys, root=root)
    assert load_boxes(bad, keys, root=root, strict=False) == {}
    bad.write_text("image,left,top,right,bottom\n")
    with pytest.raises(DataError, match="missing CSV column"):
        load_boxes(bad, keys, root=root)
    bad.write_text("image,x1,y1,x2,y2,label\ncat/1.png,0,0,a,1,cat\n")
    with pytest.raises(DataError, match="line 2: x1, y1, x2, y2 must be numbers"):
        load_boxes(bad, keys, root=root)
    bad.write_text("image,x1,y1,x2,y2,label\ncat/1.png,5,0,5,1,cat\n")
    with pytest.raises(DataError, match="empty or negative"):
        load_boxes(bad, keys, root=root)


def test_json_table(tmp_path: Path):
    root = tmp_path / "val"
    keys = touch_images(root, ["cat/1.png"])
    path = tmp_path / "val" / "boxes.json"
    path.write_text(json.dumps([{"image": "cat/1.png", "x1": 1, "y1": 2, "x2": 3, "y2": 4}]))
    table = load_boxes(path, keys, root=root)
    assert table["cat/1.png"].boxes.tolist() == [[1, 2, 3, 4]] and table["cat/1.png"].labels == [""]
    path.write_text(json.dumps({"cat/1.png": [1, 2, 3, 4]}))
    with pytest.raises(DataError, match="JSON list"):
        load_boxes(path, keys, root=root)


def test_source_errors(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        load_boxes(tmp_path / "nope.csv", [])
    other = tmp_path / "boxes.txt"
    other.write_text("")
    with pytest.raises(DataError, match="unknown box file type"):
        load_boxes(other, [])


def test_reads_the_scene_generator_layout(tmp_path: Path):
    """`drnet data scenes` writes boxes_<split>.csv (paths relative to DATA) and
    boxes/<split>/<class>/<n>.xml (VOC, 1-based); both must give the same boxes."""
    data = tmp_path / "scenes"
    keys = touch_images(data / "val", ["shirt/000000.png", "bag/000001.png"])
    (data / "boxes_val.csv").write_text(
        "image,x1,y1,x2,y2,label\nval/shirt/000000.png,3,4,20,30,shirt\n"
        "val/bag/000001.png,0,0,9,9,bag\n"
    )
    for key, (name, x1, y1, x2, y2) in zip(
        keys, [("shirt", 3, 4, 20, 30), ("bag", 0, 0, 9, 9)], strict=True
    ):
        xml = data / "boxes" / "val" / Path(key).with_suffix(".xml")
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(voc_xml([(name, x1 + 1, y1 + 1, x2, y2)], (32, 32)))
    from_csv = load_boxes(data / "boxes_val.csv", keys, root=data / "val")
    from_xml = load_boxes(data / "boxes" / "val", keys, root=data / "val")
    for key in keys:
        assert torch.equal(from_csv[key].boxes, from_xml[key].boxes)
