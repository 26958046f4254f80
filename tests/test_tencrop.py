"""Ten-crop classification testing (the DRN paper's Table 1): crops built by hand, scores equal
to the mean of the ten single-crop softmax scores, ``drnet classify eval --ten-crop``, and the
plain centre-crop path left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CPU, TINY_ARG, make_imagefolder, run_cli, save_tiny_model
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from drnet.data.classification import eval_transform, ten_crop_transform
from drnet.errors import DataError, DrnetError
from drnet.models.loading import ModelCard
from drnet.tasks.classify import ClassificationResult, evaluate_classifier, folder_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
CROP, RESIZE = 14, 20


def noise_image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def crops_by_hand(image: Image.Image) -> list[torch.Tensor]:
    """Resize + normalise, then slice the four corners and the centre and flip each."""
    resize = v2.Compose(
        [
            v2.Resize(RESIZE, antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(MEAN), list(STD)),
        ]
    )
    full = resize(image).as_subclass(torch.Tensor)
    h, w = full.shape[1:]
    top, left = int(round((h - CROP) / 2)), int(round((w - CROP) / 2))
    five = [
        full[:, :CROP, :CROP],
        full[:, :CROP, w - CROP :],
        full[:, h - CROP :, :CROP],
        full[:, h - CROP :, w - CROP :],
        full[:, top : top + CROP, left : left + CROP],
    ]
    return five + [crop.flip(-1) for crop in five]


# landscape and portrait, with odd and even margins around the crop
IMAGES = [noise_image(23, 29, 0), noise_image(31, 22, 1), noise_image(20, 27, 2)]


def test_ten_crop_transform_equals_the_crops_sliced_by_hand():
    for image in IMAGES:
        out = ten_crop_transform(CROP, RESIZE, MEAN, STD)(image)
        assert out.shape == (10, 3, CROP, CROP) and out.dtype == torch.float32
        assert torch.equal(out, torch.stack(crops_by_hand(image)))
        # the fifth crop is exactly the plain evaluation's centre crop
        assert torch.equal(out[4], eval_transform(CROP, RESIZE, MEAN, STD)(image))


def test_ten_crop_needs_a_resize_at_least_the_crop():
    with pytest.raises(DataError, match="resize 12 < crop 14"):
        ten_crop_transform(CROP, 12)


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    import drnet

    torch.manual_seed(0)
    model = drnet.create_model("drn_d_22", num_classes=3, channels=(8, 8, 16, 16, 32, 32, 32, 32))
    # random BatchNorm statistics, so the classes get distinct, image-dependent scores
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_ten_crop_scores_are_the_mean_of_the_ten_softmax_scores(tiny_model, monkeypatch):
    targets = [2, 0, 1]
    with torch.no_grad():
        expected = torch.stack(
            [
                torch.stack(
                    [tiny_model(crop[None]).softmax(dim=1)[0] for crop in crops_by_hand(image)]
                ).mean(dim=0)
                for image in IMAGES
            ]
        )
    seen: list[torch.Tensor] = []
    update = ClassificationResult.update

    def spy(self, logits, target):
        seen.append(logits.detach().cpu())
        update(self, logits, target)

    monkeypatch.setattr(ClassificationResult, "update", spy)
    transform = ten_crop_transform(CROP, RESIZE, MEAN, STD)
    data = [(transform(image), target) for image, target in zip(IMAGES, targets, strict=True)]
    result = evaluate_classifier(
        tiny_model, DataLoader(data, batch_size=2), ["a", "b", "c"], "cpu",
        fast=False, progress=False, ten_crop=True,
    )  # fmt: skip
    scores = torch.cat(seen).exp()
    assert scores.shape == (3, 3)
    assert (scores - expected).abs().max() < 1e-6
    assert result.ten_crop and result.num_images == 3
    predicted = expected.argmax(dim=1).tolist()
    assert [int(result.confusion[t].argmax()) for t in targets] == predicted
    assert result.topk[1] == sum(p == t for p, t in zip(predicted, targets, strict=True))
    loss = -expected[range(3), targets].log().mean()
    assert abs(result.metrics()["loss"] - float(loss)) < 1e-5


def test_plain_evaluation_is_the_centre_crop_by_hand(tiny_model):
    transform = eval_transform(CROP, RESIZE, MEAN, STD)
    data = [(transform(image), target) for image, target in zip(IMAGES, (0, 1, 1), strict=True)]
    result = evaluate_classifier(
        tiny_model, DataLoader(data, batch_size=2), ["a", "b", "c"], "cpu",
        fast=False, progress=False,
    )  # fmt: skip
    by_hand = ClassificationResult.empty(["a", "b", "c"])
    with torch.no_grad():
        for image, target in data:
            by_hand.update(tiny_model(image[None]), torch.tensor([target]))
    assert not result.ten_crop
    assert torch.equal(result.confusion, by_hand.confusion) and result.topk == by_hand.topk
    assert abs(result.loss_sum - by_hand.loss_sum) < 1e-5


def test_batch_shapes_that_do_not_match_the_mode_are_refused(tiny_model):
    plain = [(torch.zeros(3, CROP, CROP), 0)]
    with pytest.raises(DrnetError, match="ten_crop_transform"):
        evaluate_classifier(tiny_model, plain, ["a", "b", "c"], "cpu", progress=False,
                            fast=False, ten_crop=True)  # fmt: skip
    ten = [(torch.zeros(10, 3, CROP, CROP), 0)]
    with pytest.raises(DrnetError, match="ten_crop=True"):
        evaluate_classifier(tiny_model, ten, ["a", "b", "c"], "cpu", progress=False, fast=False)


def test_folder_dataset_ten_crop_items(tmp_path: Path):
    make_imagefolder(tmp_path, n_train=1, size=(23, 29))
    card = ModelCard("drn_d_22", 2, crop_size=CROP, resize_size=RESIZE)
    image, target = folder_dataset(tmp_path / "val", card, ten_crop=True)[1]
    assert image.shape == (10, 3, CROP, CROP) and target == 1
    assert folder_dataset(tmp_path / "val", card)[1][0].shape == (3, CROP, CROP)


def test_cli_ten_crop_writes_the_flag_and_a_top1(tmp_path: Path, capsys):
    data = make_imagefolder(tmp_path / "data", n_train=2, size=(23, 29))
    save_tiny_model(tmp_path / "model.pth", 2)
    common = ["classify", "eval", data / "val", "--weights", tmp_path / "model.pth",
              "--model", "drn_d_22", "--channels", TINY_ARG, "--crop-size", "16", *CPU]  # fmt: skip
    rc, out, _ = run_cli(capsys, *common, "--ten-crop", "-o", tmp_path / "ten")
    assert rc == 0 and "ten crops each" in out
    ten = json.loads((tmp_path / "ten" / "metrics.json").read_text())
    assert ten["ten_crop"] is True and ten["num_images"] == 4
    assert 0.0 <= ten["top1"] <= 1.0 and ten["top1"] * 4 == int(ten["top1"] * 4)
    rc, out, _ = run_cli(capsys, *common, "-o", tmp_path / "plain")
    assert rc == 0 and "ten crops" not in out
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert plain["ten_crop"] is False
    assert ten["loss"] != plain["loss"]  # the flag changed what was scored
