"""Confusion matrix, IoU and accuracy against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from drnet.errors import DataError
from drnet.metrics import ConfusionMatrix, confusion_matrix, format_iou_table, segmentation_metrics

# 5 classes; class 3 appears nowhere (its only prediction sits on an ignored pixel) -> NaN;
# class 4 is predicted once but never labelled -> IoU 0, counted in the mean.
TARGET = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 0]])
PRED = torch.tensor([[0, 1, 1, 3], [1, 2, 4, 0]])
HIST = [
    [2, 1, 0, 0, 0],
    [0, 2, 0, 0, 0],
    [0, 0, 1, 0, 1],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
]


def test_confusion_matrix_by_hand():
    assert confusion_matrix(PRED, TARGET, 5).tolist() == HIST


def test_metrics_by_hand():
    m = segmentation_metrics(torch.tensor(HIST))
    iou = m["iou"]
    assert iou[0] == pytest.approx(2 / 3)  # 2 / (3 + 2 - 2)
    assert iou[1] == pytest.approx(2 / 3)  # 2 / (2 + 3 - 2)
    assert iou[2] == pytest.approx(1 / 2)  # 1 / (2 + 1 - 1)
    assert math.isnan(iou[3])
    assert iou[4] == 0.0
    assert m["miou"] == pytest.approx(11 / 24)  # nanmean over 4 classes
    assert m["pixel_accuracy"] == pytest.approx(5 / 7)  # the ignored pixel is not counted
    assert m["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert m["pixels"] == [3, 2, 2, 0, 0]


def test_accumulates_over_batches_and_refuses_out_of_range_labels():
    cm = ConfusionMatrix(5)
    cm.update(PRED[:1], TARGET[:1])
    cm.update(PRED[1:], TARGET[1:])
    assert cm.hist.tolist() == HIST
    cm2 = ConfusionMatrix(2)
    cm2.update(torch.tensor([0, 1]), torch.tensor([0, 255]))
    assert cm2.hist.tolist() == [[1, 0], [0, 0]]
    assert cm2.compute()["miou"] == 1.0
    for bad in (7, -1):
        with pytest.raises(DataError, match=rf"label values \[{bad}\] outside \[0, 2\)"):
            cm2.update(torch.tensor([0, 1, 1]), torch.tensor([0, bad, 255]))
    assert cm2.hist.tolist() == [[1, 0], [0, 0]]  # nothing counted from the refused batch
    other = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, -100]), 2, ignore_index=-100)
    assert other.tolist() == [[1, 0], [0, 0]]


def test_parity_with_torchmetrics_absent_classes_included():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    hist = confusion_matrix(PRED, TARGET, 5)
    reference = tm.multiclass_confusion_matrix(PRED, TARGET, 5, ignore_index=255)
    assert hist.tolist() == reference.tolist()
    ours = segmentation_metrics(hist)
    # torchmetrics' per-class IoU (Jaccard); absent classes (NaN for us) it reports as 0, and its
    # "macro" average counts them, so compare per class and the mean over present classes.
    per_class = tm.multiclass_jaccard_index(PRED, TARGET, 5, average="none", ignore_index=255)
    present = [i for i, v in enumerate(ours["iou"]) if not math.isnan(v)]
    assert present == [0, 1, 2, 4]
    assert [ours["iou"][i] for i in present] == pytest.approx(per_class[present].tolist())
    assert ours["miou"] == pytest.approx(per_class[present].mean().item())
    accuracy = tm.multiclass_accuracy(PRED, TARGET, 5, average="micro", ignore_index=255)
    assert ours["pixel_accuracy"] == pytest.approx(accuracy.item())


def test_all_ignored_gives_nan_not_error():
    m = segmentation_metrics(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(m["miou"]) and math.isnan(m["pixel_accuracy"])


def test_table_lists_every_class():
    table = format_iou_table(segmentation_metrics(torch.tensor(HIST)), list("abcde"))
    lines = table.splitlines()
    assert len(lines) == 7 and lines[4].startswith("d") and "-" in lines[4]
    assert "45.83" in lines[-1]  # 11/24


def test_wilson_interval_by_hand():
    from drnet.metrics import wilson_interval

    low, high = wilson_interval(80, 100)
    # textbook value for 80/100 at 95%: [0.7112, 0.8666]
    assert low == pytest.approx(0.7112, abs=1e-4) and high == pytest.approx(0.8666, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) is None


def test_bootstrap_miou_interval_contains_the_estimate_and_narrows_with_more_images():
    from drnet.metrics import bootstrap_miou_interval, segmentation_metrics

    generator = torch.Generator().manual_seed(0)
    hists = torch.randint(0, 50, (200, 3, 3), generator=generator) + 200 * torch.eye(
        3, dtype=torch.long
    )
    miou = segmentation_metrics(hists.sum(0))["miou"]
    wide = bootstrap_miou_interval(hists[:20])
    narrow = bootstrap_miou_interval(hists)
    assert narrow[0] < miou < narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert bootstrap_miou_interval(hists, seed=1) != narrow  # a resampling, not a formula
    assert bootstrap_miou_interval(hists[:1]) is None
