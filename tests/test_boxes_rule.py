"""The paper's box rule, cell-to-pixel mapping and IoU, on hand-made response maps."""

from __future__ import annotations

import pytest
import torch

from drnet.tasks.boxes import (
    box_from_class_map,
    boxes_from_class_map,
    cell_boxes_to_pixels,
    centred_box,
    dominant_masks,
    iou,
    normalize_response,
    scale_boxes,
)


def two_class_map(mask0: list[list[int]]) -> torch.Tensor:
    """Class 0 responds 2 where ``mask0`` is 1 and 0 elsewhere; class 1 is 1 everywhere."""
    m = torch.tensor(mask0, dtype=torch.float32)
    return torch.stack([2 * m, torch.ones_like(m)])


def test_single_region_box_in_pixels():
    cmap = two_class_map(
        [
            [0, 0, 0, 0],
            [0, 1, 1, 1],
            [0, 1, 1, 0],
            [0, 0, 0, 0],
        ]
    )
    box = box_from_class_map(cmap, 0, 0.5, (32, 32))
    assert box.tolist() == [8.0, 8.0, 32.0, 24.0]
    # class 1 dominates the complement; its smallest enclosing box is the whole map.
    assert box_from_class_map(cmap, 1, 0.0, (32, 32), mode="raw").tolist() == [0, 0, 32, 32]


def test_several_regions_are_enclosed_by_one_box():
    cmap = two_class_map(
        [
            [1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 1, 0],
        ]
    )
    assert box_from_class_map(cmap, 0, 0.5, (32, 40)).tolist() == [0, 0, 32, 32]


def test_position_must_be_dominant_not_just_strong():
    # Class 0 is high at (0, 0) and (0, 3), but class 1 is higher at (0, 3).
    cmap = torch.zeros(2, 2, 4)
    cmap[0, 0, 0] = 5.0
    cmap[0, 0, 3] = 5.0
    cmap[1, 0, 3] = 9.0
    assert box_from_class_map(cmap, 0, 0.5, (16, 32)).tolist() == [0, 0, 8, 8]


def test_ties_count_for_every_tied_class():
    cmap = torch.full((3, 2, 2), -1.0)
    cmap[2] = 0.0
    cmap[0, 0, 0] = cmap[1, 0, 0] = 4.0  # tie between classes 0 and 1 at (0, 0)
    cmap[1, 1, 1] = 4.0
    dominant = dominant_masks(cmap, [0, 1, 2])
    assert dominant[0].tolist() == [[True, False], [False, False]]
    assert dominant[1].tolist() == [[True, False], [False, True]]
    assert dominant[2].tolist() == [[False, True], [True, False]]
    # A three-way tie is dominant for all three.
    assert dominant_masks(torch.zeros(3, 1, 1), [0, 1, 2]).all()
    assert box_from_class_map(cmap, 1, 0.5, (16, 16)).tolist() == [0, 0, 16, 16]
    # The result does not depend on class order.
    swapped = cmap[[1, 0, 2]]
    assert torch.equal(
        box_from_class_map(swapped, 0, 0.5, (16, 16)), box_from_class_map(cmap, 1, 0.5, (16, 16))
    )


def test_threshold_is_strict_in_raw_mode():
    cmap = torch.zeros(2, 1, 3)
    cmap[0] = torch.tensor([[1.0, 0.5, 0.25]])
    cmap[1] = -1.0
    assert box_from_class_map(cmap, 0, 0.5, (8, 24), mode="raw").tolist() == [0, 0, 8, 8]
    assert box_from_class_map(cmap, 0, 0.49, (8, 24), mode="raw").tolist() == [0, 0, 16, 8]


def test_minmax_threshold_is_a_fraction_of_the_class_range():
    cmap = torch.zeros(2, 1, 4)
    cmap[0] = torch.tensor([[10.0, 20.0, 30.0, 50.0]])  # normalised: 0, .25, .5, 1
    cmap[1] = -100.0
    assert normalize_response(cmap[0]).tolist() == [[0.0, 0.25, 0.5, 1.0]]
    boxes, empty = boxes_from_class_map(cmap, [0], [0.0, 0.25, 0.5, 0.99], (8, 32))
    assert boxes[0].tolist() == [[8, 0, 32, 8], [16, 0, 32, 8], [24, 0, 32, 8], [24, 0, 32, 8]]
    assert not empty.any()
    # minmax is invariant to the scale and offset of the logits, raw is not.
    assert torch.equal(
        boxes_from_class_map(cmap * 3 + 7, [0], [0.3], (8, 32))[0],
        boxes_from_class_map(cmap, [0], [0.3], (8, 32))[0],
    )


def test_constant_map_counts_as_all_ones():
    assert normalize_response(torch.full((1, 2, 2), 3.0)).tolist() == [[[1.0, 1.0], [1.0, 1.0]]]
    cmap = torch.stack([torch.full((2, 2), 3.0), torch.zeros(2, 2)])
    assert box_from_class_map(cmap, 0, 0.9, (16, 16)).tolist() == [0, 0, 16, 16]


def test_empty_region_falls_back_to_peak_cell_or_image():
    cmap = torch.zeros(2, 3, 3)
    cmap[0, 2, 1] = 1.0  # peak of class 0 at row 2, col 1; class 0 dominant only there
    cmap[1] = 2.0  # class 1 dominates everywhere: the region of class 0 is empty
    boxes, empty = boxes_from_class_map(cmap, [0], [0.0, 0.5], (20, 20))
    assert empty.tolist() == [[True, True]]
    assert boxes[0, 0].tolist() == [8, 16, 16, 20]  # peak cell, clipped to the 20-px image
    boxes, _ = boxes_from_class_map(cmap, [0], [0.5], (20, 20), fallback="image")
    assert boxes[0, 0].tolist() == [0, 0, 20, 20]
    # t >= 1 in minmax mode empties every region, even where the class dominates.
    boxes, empty = boxes_from_class_map(cmap, [1], [1.0], (20, 20))
    assert empty.item() and boxes[0, 0].tolist() == [0, 0, 8, 8]  # first of the tied peaks


def test_peak_fallback_ties_take_first_in_row_major_order():
    cmap = torch.zeros(2, 2, 2)
    cmap[0, 0, 1] = cmap[0, 1, 0] = 1.0
    assert box_from_class_map(cmap, 0, 1.0, (16, 16)).tolist() == [8, 0, 16, 8]


@pytest.mark.parametrize(("height", "width"), [(21, 30), (23, 17), (9, 9), (8, 8), (57, 1), (1, 1)])
def test_stride8_mapping_with_odd_sizes(height: int, width: int):
    rows, cols = -(-height // 8), -(-width // 8)  # the map of an H x W input is ceil(H/8)
    cmap = torch.zeros(2, rows, cols)
    cmap[0, -1, -1] = 1.0
    assert box_from_class_map(cmap, 0, 0.5, (height, width)).tolist() == [
        8 * (cols - 1),
        8 * (rows - 1),
        width,
        height,
    ]
    cmap[0] = 1.0  # the whole map
    assert box_from_class_map(cmap, 0, 0.5, (height, width)).tolist() == [0, 0, width, height]


def test_cell_boxes_to_pixels():
    cells = torch.tensor([[0, 0, 0, 0], [1, 2, 3, 2], [2, 0, 3, 3]])
    assert cell_boxes_to_pixels(cells, (27, 29)).tolist() == [
        [0, 0, 8, 8],
        [8, 16, 29, 24],
        [16, 0, 29, 27],
    ]
    assert cell_boxes_to_pixels(torch.tensor([1, 1, 1, 1]), (100, 100), stride=4).tolist() == [
        4,
        4,
        8,
        8,
    ]


def test_sweep_shapes_and_consistency_with_single_calls():
    torch.manual_seed(0)
    cmap = torch.randn(5, 4, 6)
    thresholds = [0.0, 0.3, 0.6, 0.9]
    boxes, empty = boxes_from_class_map(cmap, [3, 1, 4], thresholds, (29, 45))
    assert boxes.shape == (3, 4, 4) and empty.shape == (3, 4)
    for k, cls in enumerate([3, 1, 4]):
        for ti, t in enumerate(thresholds):
            assert torch.equal(boxes[k, ti], box_from_class_map(cmap, cls, t, (29, 45)))
    # A higher threshold never gives a larger box where the region is not empty.
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    area = torch.where(empty, torch.inf, area)
    for k in range(3):
        finite = area[k][area[k].isfinite()]
        assert torch.all(finite[1:] <= finite[:-1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        box_from_class_map(torch.zeros(2, 2, 2), 0, 0.5, (16, 16), mode="sigmoid")
    with pytest.raises(ValueError, match="fallback"):
        box_from_class_map(torch.zeros(2, 2, 2), 0, 0.5, (16, 16), fallback="none")
    with pytest.raises(ValueError, match=r"\[C, h, w\]"):
        box_from_class_map(torch.zeros(1, 2, 2, 2), 0, 0.5, (16, 16))


def test_iou_edge_cases():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert iou(a, a).item() == 1.0
    assert iou(a, torch.tensor([[10.0, 0.0, 20.0, 10.0]])).item() == 0.0  # touching edges
    assert iou(a, torch.tensor([[20.0, 20.0, 30.0, 30.0]])).item() == 0.0  # disjoint
    assert iou(a, torch.tensor([[0.0, 0.0, 5.0, 10.0]])).item() == 0.5  # contained, half
    assert iou(a, torch.tensor([[5.0, 0.0, 15.0, 10.0]])).item() == pytest.approx(1 / 3)
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert iou(point, point).item() == 0.0  # zero-area boxes: 0, not NaN
    assert iou(a, point).item() == 0.0
    assert iou(a, torch.zeros(0, 4)).shape == (1, 0)
    assert iou(torch.zeros(0, 4), a).shape == (0, 1)
    pairwise = iou(torch.cat([a, point]), torch.cat([a, a, point]))
    assert pairwise.shape == (2, 3) and not pairwise.isnan().any()


def test_scale_and_centred_boxes():
    box = torch.tensor([8.0, 4.0, 16.0, 12.0])
    assert scale_boxes(box, (16, 32), (32, 16)).tolist() == [4, 8, 8, 24]
    assert centred_box((100, 200), (0.5, 0.2)).tolist() == [50, 40, 150, 60]
