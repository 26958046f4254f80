"""Segmentation datasets (three layouts), their error messages, joint transforms, palettes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import make_list_dataset, save_image
from PIL import Image
from torchvision import tv_tensors

from drnet.constants import CITYSCAPES_MEAN
from drnet.data.cityscapes import label_ids_to_train_ids, prepare_cityscapes
from drnet.data.palettes import CITYSCAPES_PALETTE, colorize, get_palette, overlay
from drnet.data.segmentation import detect_layout, open_segmentation_dataset
from drnet.data.transforms import (
    segmentation_eval_transform,
    segmentation_train_transform,
)
from drnet.errors import DataError


def test_list_layout(tmp_path):
    root = make_list_dataset(tmp_path / "d", n_train=3, n_val=1, size=24)
    ds = open_segmentation_dataset(root, "train")
    assert detect_layout(root) == "list" and len(ds) == 3 and ds.num_classes == 3
    assert ds.mean == (0.4, 0.3, 0.35)
    image, label = ds[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert label.shape == (24, 24) and label.dtype == torch.int64
    raw = np.asarray(Image.open(root / "images/train_0.png"), dtype=np.float32) / 255
    expected = (raw[..., 0] - 0.4) / 0.25
    assert torch.allclose(image[0], torch.from_numpy(expected), atol=1e-5)
    assert set(label.unique().tolist()) <= {0, 1, 2, 255}
    assert ds.name(0) == "images/train_0"


def test_list_layout_list_dir_and_unlabeled_split(tmp_path):
    root = make_list_dataset(tmp_path / "d", n_train=2, n_val=1, size=16)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "test_images.txt").write_text("images/val_0.png\n")
    with pytest.raises(DataError, match="test_labels.txt"):
        open_segmentation_dataset(root, "test", list_dir=lists)
    ds = open_segmentation_dataset(root, "test", list_dir=lists, require_labels=False)
    assert (ds[0][1] == 255).all()


def test_cityscapes_layout_and_prepare(tmp_path):
    root = tmp_path / "cs"
    stem = "aachen_000000_000019"
    save_image(root / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png", np.zeros((8, 16, 3)))
    ids = np.array([[0, 7, 26, 33] * 4] * 8, dtype=np.uint8)  # unlabeled, road, car, bicycle
    save_image(root / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png", ids)
    assert detect_layout(root) == "cityscapes"
    with pytest.raises(DataError, match="cityscapes-prepare"):
        open_segmentation_dataset(root, "train")
    assert prepare_cityscapes(root, progress=False) == {"written": 1, "skipped": 0}
    assert prepare_cityscapes(root, progress=False) == {"written": 0, "skipped": 1}
    ds = open_segmentation_dataset(root, "train")
    assert ds.num_classes == 19 and ds.mean == CITYSCAPES_MEAN and ds.class_names[13] == "car"
    _, label = ds[0]
    assert label[0, :4].tolist() == [255, 0, 13, 18]
    assert ds.name(0) == f"aachen/{stem}_leftImg8bit"
    assert label_ids_to_train_ids(np.array([24, 9, 255])).tolist() == [11, 255, 255]


def test_cityscapes_trainids_suffix(tmp_path):
    root = tmp_path / "cs"
    save_image(root / "leftImg8bit/val/x/a_1_leftImg8bit.png", np.zeros((4, 4, 3)))
    save_image(root / "gtFine/val/x/a_1_gtFine_trainIds.png", np.full((4, 4), 5))
    ds = open_segmentation_dataset(root, "val")
    assert ds[0][1].unique().tolist() == [5]


@pytest.mark.parametrize("pattern", ["images/{split}", "{split}/images"])
def test_folder_layout(tmp_path, pattern):
    root = tmp_path / "f"
    img_dir = root / pattern.format(split="train")
    mask_dir = root / pattern.replace("images", "masks").format(split="train")
    for name in ("a", "sub/b"):
        save_image(img_dir / f"{name}.jpg", np.full((6, 5, 3), 128))
        save_image(mask_dir / f"{name}.png", np.ones((6, 5)))
    (root / "info.json").write_text(json.dumps({"mean": [0.5] * 3, "std": [0.5] * 3}))
    # info.json alone would mean "list layout": the folder layout is chosen explicitly
    ds = open_segmentation_dataset(root, "train", num_classes=2, layout="folder")
    assert len(ds) == 2 and [ds.name(i) for i in range(2)] == ["a", "sub/b"]
    assert ds.mean == (0.5, 0.5, 0.5)
    (root / "info.json").unlink()
    assert detect_layout(root) == "folder"
    save_image(img_dir / "c.png", np.zeros((6, 5, 3)))
    with pytest.raises(DataError, match="no mask of the same name.*c"):
        open_segmentation_dataset(root, "train", num_classes=2)


def test_errors_name_the_file(tmp_path):
    root = make_list_dataset(tmp_path / "d", n_train=2, n_val=1, size=16)
    with pytest.raises(DataError, match="the number of classes"):
        (root / "info.json").write_text(json.dumps({"mean": [0.5] * 3, "std": [0.5] * 3}))
        open_segmentation_dataset(root, "train")
    with pytest.raises(DataError, match="missing_images.txt"):
        open_segmentation_dataset(root, "missing", num_classes=3)
    (root / "empty_images.txt").write_text("\n")
    with pytest.raises(DataError, match="empty_images.txt is empty"):
        open_segmentation_dataset(root, "empty", num_classes=3)
    ds = open_segmentation_dataset(root, "train", num_classes=3)
    save_image(root / "labels/train_0.png", np.zeros((16, 16, 3)))
    with pytest.raises(DataError, match=r"labels/train_0.png is an RGB image"):
        ds[0]
    save_image(root / "labels/train_0.png", np.full((16, 16), 7))
    with pytest.raises(DataError, match=r"train_0.png has values \[7\] outside \[0, 3\)"):
        ds[0]
    save_image(root / "labels/train_0.png", np.zeros((16, 15)))
    with pytest.raises(DataError, match="train_0.png is 15x16 but image"):
        ds[0]
    (root / "images/train_1.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read image .*train_1.png"):
        ds[1]
    with pytest.raises(DataError, match="does not exist"):
        open_segmentation_dataset(tmp_path / "nowhere", "train")


def _pair(h=20, w=30):
    label = torch.zeros(1, h, w, dtype=torch.uint8)
    label[:, :, w // 2 :] = 1
    label[:, : h // 4] = 2
    image = (label.repeat(3, 1, 1) * 100).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(label)


def test_train_transform_keeps_image_and_label_aligned():
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    t = segmentation_train_transform(16, mean, std)
    for seed in range(10):
        torch.manual_seed(seed)
        image, label = t(*_pair())
        assert image.shape == (3, 16, 16) and label.shape == (1, 16, 16)
        assert label.dtype == torch.int64
        assert torch.equal((image[0] * 255 / 100).round().long(), label[0])


def test_train_transform_pads_and_fills_with_ignore():
    t = segmentation_train_transform(48, (0.0,) * 3, (1.0,) * 3, random_scale=2, random_rotate=30)
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        image, label = t(*_pair())
        assert label.shape == (1, 48, 48)
        seen |= set(label.unique().tolist())
        assert (label == 255).any()  # padding and rotation corners
    assert seen <= {0, 1, 2, 255}
    torch.manual_seed(3)
    a = t(*_pair())
    torch.manual_seed(3)
    b = t(*_pair())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_eval_transform_only_normalises():
    image, label = segmentation_eval_transform((0.5,) * 3, (0.5,) * 3)(*_pair())
    assert image.shape == (3, 20, 30) and label.shape == (1, 20, 30)
    assert image.min() == -1.0


def test_palettes_and_overlay():
    assert np.array_equal(get_palette(19), CITYSCAPES_PALETTE)
    pal = get_palette(5)
    assert pal.shape == (5, 3) and len({tuple(c) for c in pal}) == 5
    colours = colorize(np.array([[0, 1], [4, 255]]), pal)
    assert colours.shape == (2, 2, 3) and colours[1, 1].tolist() == [0, 0, 0]
    assert colours[0, 1].tolist() == pal[1].tolist()
    mixed = overlay(np.full((2, 2, 3), 200, np.uint8), np.zeros((2, 2, 3), np.uint8), 0.25)
    assert mixed[0, 0, 0] == 150
