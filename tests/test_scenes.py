"""The scene generator's guarantees: labels match pixels, boxes enclose items, splits keep their
items apart, and everything is determined by the seed. Uses the packaged Fashion-MNIST subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drnet.cli import main
from drnet.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from drnet.data.scenes import (
    HOLDOUT_EVERY,
    ClassificationScenes,
    SegmentationScenes,
    item_pool,
    make_classification_scenes,
    make_segmentation_scenes,
    read_boxes,
)
from drnet.errors import DataError

SRC = "packaged"


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "scenes.json"
    }


@pytest.mark.parametrize("background", ["texture", "black"])
def test_classification_box_is_the_tight_box_of_the_item(background):
    ds = ClassificationScenes("train", 40, canvas=64, background=background, source=SRC)
    for i in range(len(ds)):
        scene = ds.render(i)
        (placement,) = scene.placements
        assert placement.label == i % 10
        assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
        # the label map marks exactly the item, and the box is its tight box
        assert set(np.unique(scene.mask)) == {0, placement.label + 1}
        assert tight_box(scene.mask > 0) == placement.box
        x1, y1, x2, y2 = placement.box
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        if background == "black":  # every painted pixel is item, every item pixel is painted
            np.testing.assert_array_equal(scene.image.max(-1) > 0, scene.mask > 0)


def test_segmentation_labels_match_pixels():
    ds = SegmentationScenes(
        "train", 30, canvas=64, items=(2, 4), scale=(0.8, 1.6), background="black", source=SRC
    )
    seen_occlusion = False
    for i in range(len(ds)):
        scene = ds.render(i)
        assert 2 <= len(scene.placements) <= 4
        np.testing.assert_array_equal(scene.image.max(-1) > 0, scene.mask > 0)
        assert scene.mask.max() <= 10 and 255 not in scene.mask
        # every labelled pixel lies in the box of a placed item of that class
        covered = np.zeros_like(scene.mask, dtype=bool)
        for p in scene.placements:
            x1, y1, x2, y2 = p.box
            window = np.zeros_like(covered)
            window[y1:y2, x1:x2] = True
            covered |= window & (scene.mask == p.label + 1)
        np.testing.assert_array_equal(covered, scene.mask > 0)
        # the last item is on top: its box holds its own label wherever its colour is painted
        last = scene.placements[-1]
        x1, y1, x2, y2 = last.box
        assert (scene.mask[y1:y2, x1:x2] == last.label + 1).any()
        seen_occlusion |= any(
            not (scene.mask == p.label + 1).any() or tight_box(scene.mask == p.label + 1) != p.box
            for p in scene.placements[:-1]
        )
    assert seen_occlusion  # occlusion actually happens in this sample


def test_label_reflects_visible_item_on_overlap():
    # two items of different classes in a small canvas often overlap; the later one is on top
    ds = SegmentationScenes(
        "val", 30, canvas=32, items=(2, 2), scale=(1.0, 1.1), background="black", source=SRC
    )
    hidden = 0
    for i in range(len(ds)):
        scene = ds.render(i)
        first, second = scene.placements
        if first.label == second.label:
            continue
        top = scene.mask == second.label + 1
        assert top.sum() == second.area and tight_box(top) == second.box
        visible = (scene.mask == first.label + 1).sum()
        assert visible <= first.area
        hidden += visible < first.area
    assert hidden > 0


def test_splits_do_not_share_items():
    train_items = load_fashion_mnist("train", SRC)
    test_items = load_fashion_mnist("test", SRC)
    pools = {split: item_pool(split, SRC) for split in ("train", "holdout", "val")}
    assert pools["val"].items.split == "test" and pools["train"].items.split == "train"
    train_pool = {int(i) for c in pools["train"].by_class for i in train_items.indices[c]}
    holdout_pool = {int(i) for c in pools["holdout"].by_class for i in train_items.indices[c]}
    assert not train_pool & holdout_pool
    assert len(holdout_pool) == len(train_items) // HOLDOUT_EVERY
    used = {}
    for split in ("train", "holdout", "val"):
        ds = SegmentationScenes(split, 40, canvas=64, items=(1, 3), source=SRC)
        used[split] = {p.item for i in range(len(ds)) for p in ds.render(i).placements}
    assert used["train"] <= train_pool
    assert used["holdout"] <= holdout_pool
    assert used["val"] <= set(test_items.indices.tolist())
    # classification scenes draw from the same pools
    ds = ClassificationScenes("holdout", 30, source=SRC)
    assert {ds.render(i).placements[0].item for i in range(30)} <= holdout_pool


def test_scene_depends_only_on_seed_split_and_index():
    a = ClassificationScenes("train", 5, seed=3, source=SRC)
    b = ClassificationScenes("train", 500, seed=3, source=SRC)
    for i in (4, 2, 0):
        np.testing.assert_array_equal(a.render(i).image, b.render(i).image)
    assert not np.array_equal(
        a.render(0).image, ClassificationScenes("train", 5, seed=4, source=SRC).render(0).image
    )
    assert not np.array_equal(
        a.render(0).image, ClassificationScenes("holdout", 5, seed=3, source=SRC).render(0).image
    )


def test_classification_writer_is_deterministic_and_boxes_agree(tmp_path):
    kwargs = dict(canvas=48, scale=(0.8, 1.2), seed=7, source=SRC)
    summary = make_classification_scenes(tmp_path / "a", 20, 10, 10, **kwargs)
    make_classification_scenes(tmp_path / "b", 20, 10, 10, **kwargs)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert summary.counts == {"train": 20, "val": 10, "holdout": 10}
    root = tmp_path / "a"
    # ImageFolder layout: one folder per class name, images named by scene index
    for split, n in summary.counts.items():
        images = sorted(root.glob(f"{split}/*/*.png"))
        assert len(images) == n
        assert {p.parent.name for p in images} <= set(CLASS_NAMES)
    # CSV and VOC boxes agree with each other and with the rendered scene
    csv_boxes = read_boxes(root, "val")
    (root / "boxes_val.csv").unlink()
    voc_boxes = read_boxes(root, "val")
    assert csv_boxes == voc_boxes and len(csv_boxes) == 10
    ds = ClassificationScenes("val", 10, **kwargs)
    for i in range(10):
        scene = ds.render(i)
        name = CLASS_NAMES[scene.placements[0].label]
        path = f"val/{name}/{i:06d}.png"
        assert csv_boxes[path] == [(*scene.placements[0].box, name)]
        np.testing.assert_array_equal(np.asarray(Image.open(root / path)), scene.image)
    header = (root / "boxes_train.csv").read_text().splitlines()[0]
    assert header == "image,x1,y1,x2,y2,label"


def test_classification_dataset_targets_follow_imagefolder_order(tmp_path):
    ds = ClassificationScenes("val", 10, source=SRC)
    assert ds.classes == sorted(CLASS_NAMES)
    for i in range(10):
        image, target = ds[i]
        assert image.mode == "RGB" and image.size == (64, 64)
        assert ds.classes[target] == CLASS_NAMES[i % 10]
    images, targets, boxes = ds.arrays()
    assert images.shape == (10, 64, 64, 3) and targets.tolist() == [ds[i][1] for i in range(10)]
    assert boxes.shape == (10, 4)


def test_segmentation_writer_layout(tmp_path):
    root = tmp_path / "seg"
    summary = make_segmentation_scenes(
        root, 12, 6, canvas=48, items=(1, 3), scale=(0.8, 1.5), seed=1, source=SRC
    )
    assert summary.counts == {"train": 12, "val": 6}
    info = json.loads((root / "info.json").read_text())
    assert info["classes"] == 11 and info["class_names"][0] == "background"
    assert info["class_names"][1:] == list(CLASS_NAMES)
    assert len(info["mean"]) == len(info["std"]) == 3
    # mean/std are the training images' statistics, in [0, 1] units
    train = (
        np.stack(
            [
                np.asarray(Image.open(root / line))
                for line in (root / "train_images.txt").read_text().splitlines()
            ]
        ).reshape(-1, 3)
        / 255.0
    )
    np.testing.assert_allclose(info["mean"], train.mean(0), atol=1e-5)
    np.testing.assert_allclose(info["std"], train.std(0), atol=1e-5)
    ds = SegmentationScenes("val", 6, canvas=48, items=(1, 3), scale=(0.8, 1.5), seed=1, source=SRC)
    for split, n in summary.counts.items():
        images = (root / f"{split}_images.txt").read_text().splitlines()
        labels = (root / f"{split}_labels.txt").read_text().splitlines()
        assert len(images) == len(labels) == n
        for i, (image_path, label_path) in enumerate(zip(images, labels, strict=True)):
            label = Image.open(root / label_path)
            assert label.mode == "L" and label.size == Image.open(root / image_path).size
            values = np.asarray(label)
            assert values.max() <= 10
            if split == "val":
                np.testing.assert_array_equal(values, ds.render(i).mask)
    image, label = ds[0]
    assert image.mode == "RGB" and label.mode == "L"


def test_out_dir_rules(tmp_path):
    root = tmp_path / "cls"
    make_classification_scenes(root, 10, 10, 0, canvas=32, scale=(0.8, 1.0), source=SRC)
    with pytest.raises(DataError, match="already holds scenes; pass --overwrite"):
        make_classification_scenes(root, 10, 10, canvas=32, scale=(0.8, 1.0), source=SRC)
    summary = make_classification_scenes(
        root, 5, 3, 0, canvas=32, scale=(0.8, 1.0), box_format="csv", source=SRC, overwrite=True
    )
    assert len(list(root.glob("train/*/*.png"))) == 5  # earlier scenes are gone
    assert not (root / "boxes").exists() and summary.counts["val"] == 3
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not written by drnet data scenes"):
        make_segmentation_scenes(other, 4, 4, source=SRC, overwrite=True)
    assert (other / "precious.txt").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(canvas=32, scale=(1.0, 1.5)), "larger than the 32 px canvas"),
        (dict(scale=(1.2, 1.0)), "scale must be"),
        (dict(background="pink"), "background must be one of texture, black"),
        (dict(box_format="json"), "box_format must be one of"),
        (dict(seed=-1), "seed must be >= 0"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        make_classification_scenes(tmp_path / "x", 2, 2, source=SRC, **kwargs)


def test_cli_writes_scenes(tmp_path, capsys):
    out = tmp_path / "seg"
    argv = [
        "data",
        "scenes",
        "segmentation",
        str(out),
        "--train",
        "4",
        "--test",
        "2",
        "--canvas",
        "40",
        "--scale",
        "0.8",
        "1.2",
        "--fashion-mnist",
        "packaged",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "4 train, 2 val" in capsys.readouterr().out
    assert len((out / "val_labels.txt").read_text().splitlines()) == 2
    assert main(argv) == 2  # refuses to write over without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_scenes_from_canonical_files(tmp_path):
    # a tiny canonical folder: item i has label i % 10 and every pixel equal to i
    for stem, n in (("train", 200), ("t10k", 50)):
        images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        labels = np.arange(n, dtype=np.uint8) % 10
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, array.ndim])
            header += b"".join(n.to_bytes(4, "big") for n in array.shape)
            (tmp_path / f"{stem}-{kind}-ubyte").write_bytes(header + array.tobytes())
    ds = ClassificationScenes("holdout", 30, canvas=32, scale=(0.8, 1.0), source=tmp_path)
    assert ds.pool.items.source == str(tmp_path)
    # class k has items k, k+10, ...; every tenth of them (k+90, k+190) is reserved for holdout
    for i in range(30):
        (placement,) = ds.render(i).placements
        assert placement.item in (i % 10 + 90, i % 10 + 190)
    # items 0..10 are too dark to see (mask is pixels > 10): the generator draws another item
    ds = ClassificationScenes("val", 20, canvas=32, scale=(0.8, 1.0), source=tmp_path)
    assert all(ds.render(i).placements[0].item > 10 for i in range(20))
