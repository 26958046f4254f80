"""The paper's box rule, cell-to-pixel mapping and IoU, on hand-made response maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import drnet.tasks.boxes as boxes_module
from drnet.tasks.boxes import (
    box_centre_offset,
    box_from_class_map,
    boxes_from_class_map,
    cell_boxes_to_pixels,
    centred_box,
    dominant_masks,
    iou,
    normalize_response,
    scale_boxes,
    upsample_class_map,
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
    with pytest.raises(ValueError, match="resolution"):
        box_from_class_map(torch.zeros(2, 2, 2), 0, 0.5, (16, 16), resolution="subpixel")
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


def test_box_centre_offset_uses_the_best_matching_ground_truth_box():
    truth = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0]])
    assert box_centre_offset(torch.tensor([22.0, 19.0, 44.0, 29.0]), truth).tolist() == [3, -1]
    assert box_centre_offset(torch.tensor([1.0, 0.0, 11.0, 10.0]), truth).tolist() == [1, 0]


# ------------------------------------------------------------------------------ pixel boxes
def pixel_box(cmap: torch.Tensor, cls: int, t: float, size, **kwargs) -> list[float]:
    return box_from_class_map(cmap, cls, t, size, resolution="pixel", **kwargs).tolist()


@pytest.mark.parametrize(("height", "width"), [(32, 40), (21, 30), (9, 17), (1, 1), (57, 3)])
def test_upsampling_is_bilinear_with_cell_j_on_pixel_8j_plus_3_5(height: int, width: int):
    torch.manual_seed(0)
    cmap = torch.randn(3, -(-height // 8), -(-width // 8))
    up = upsample_class_map(cmap, (height, width))
    expected = F.interpolate(cmap[None], scale_factor=8, mode="bilinear", align_corners=False)
    assert up.shape == (3, height, width)
    assert torch.allclose(up, expected[0, :, :height, :width], atol=1e-6)
    # A hot cell j peaks on the two pixels around 8j + 3.5, symmetrically.
    hot = torch.zeros(1, 3, 4)
    hot[0, 1, 2] = 1.0
    row = upsample_class_map(hot, (24, 32))[0, 11]
    assert row.argmax() in (19, 20) and row[19] == row[20] and row[18] == row[21]


def test_a_hot_cell_gives_a_pixel_box_around_its_middle():
    cmap = torch.zeros(2, 4, 4)
    cmap[0, 1, 2] = 1.0  # cell (1, 2): pixels [16, 24) x [8, 16), middle (19.5, 11.5)
    # raw t = 0: every pixel the bilinear kernel reaches, up to 4 px past the cell on each side
    assert pixel_box(cmap, 0, 0.0, (32, 32), mode="raw") == [12, 4, 28, 20]
    # t = 0.5: the pixels more than half as hot as the cell are exactly the cell
    assert pixel_box(cmap, 0, 0.5, (32, 32)) == [16, 8, 24, 16]
    assert pixel_box(cmap, 0, 0.8, (32, 32)) == [19, 11, 21, 13]  # the middle pixels
    # A hot cell in the clipped corner of an odd-sized image stays inside the image.
    corner = torch.zeros(2, 3, 4)
    corner[0, 2, 3] = 1.0
    assert pixel_box(corner, 0, 0.0, (21, 30), mode="raw") == [20, 12, 30, 21]
    assert pixel_box(corner, 0, 0.5, (21, 30)) == [24, 16, 30, 21]


def test_pixel_threshold_edges_and_fallback():
    cmap = torch.stack([torch.ones(2, 3), torch.zeros(2, 3)])
    # raw thresholds are strict: a response equal to t does not pass, even after up-sampling
    boxes, empty = boxes_from_class_map(
        cmap, [0], [0.999, 1.0], (16, 24), mode="raw", resolution="pixel"
    )
    assert boxes[0, 0].tolist() == [0, 0, 24, 16] and empty.tolist() == [[False, True]]
    assert boxes[0, 1].tolist() == [0, 0, 8, 8]  # empty: the peak cell, as for cell boxes
    # The up-sampled peak of a lone hot cell is (15/16)^2 of the cell's: t = 0.9 leaves nothing
    # (t is normalised on the cells), and the fallback is the same peak cell as for cell boxes.
    hot = torch.zeros(2, 3, 3)
    hot[0, 1, 1] = 1.0
    boxes, empty = boxes_from_class_map(hot, [0], [0.87, 0.88], (24, 24), resolution="pixel")
    assert empty.tolist() == [[False, True]] and boxes[0, 1].tolist() == [8, 8, 16, 16]
    boxes, _ = boxes_from_class_map(
        hot, [0], [0.88], (24, 24), resolution="pixel", fallback="image"
    )
    assert boxes[0, 0].tolist() == [0, 0, 24, 24]


def test_the_pixel_dominant_class_comes_from_all_classes():
    cmap = torch.zeros(3, 1, 3)
    cmap[0, 0, 0] = 1.0
    cmap[2, 0, 1] = 1.0  # class 2, not asked for, takes over half-way between the two cells
    assert pixel_box(cmap, 0, 0.0, (8, 24), mode="raw") == [0, 0, 8, 8]
    cmap[2] = 0.0  # without it class 0 reaches 4 px further
    assert pixel_box(cmap, 0, 0.0, (8, 24), mode="raw") == [0, 0, 12, 8]


def test_pixel_ties_count_for_every_tied_class_in_any_order():
    torch.manual_seed(1)
    cmap = torch.randn(3, 3, 4)
    cmap[1] = cmap[0]  # classes 0 and 1 tie at every pixel
    boxes, empty = boxes_from_class_map(cmap, [0, 1], [0.3], (24, 29), resolution="pixel")
    assert torch.equal(boxes[0], boxes[1]) and not empty.any()
    swapped = cmap[[2, 1, 0]]
    assert torch.equal(
        boxes_from_class_map(swapped, [2], [0.3], (24, 29), resolution="pixel")[0][0], boxes[0]
    )


def test_pixel_boxes_agree_with_cell_boxes_on_block_constant_maps():
    generator = torch.Generator().manual_seed(0)

    def draw(high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=generator))

    thresholds = [0.0, 0.25, 0.5, 0.75, 0.99]
    for _ in range(60):
        rows, cols = 2 + draw(5), 2 + draw(5)
        size = (8 * rows - draw(8), 8 * cols - draw(8))  # odd sizes too
        i1, j1 = draw(rows), draw(cols)
        i2, j2 = i1 + draw(rows - i1), j1 + draw(cols - j1)
        cmap = torch.stack([torch.zeros(rows, cols), torch.ones(rows, cols)])
        cmap[0, i1 : i2 + 1, j1 : j2 + 1] = 2.0  # class 0 on a block of cells, class 1 elsewhere
        cell, _ = boxes_from_class_map(cmap, [0], thresholds, size)
        pixel, empty = boxes_from_class_map(cmap, [0], thresholds, size, resolution="pixel")
        # the bilinear spread moves an edge by at most half a cell
        assert (cell - pixel)[~empty].abs().max() <= 4
        if i2 > i1 and j2 > j1:  # half-way between two cells is the cell edge: exactly equal
            assert torch.equal(cell[0, 2], pixel[0, 2])


def test_large_images_are_processed_in_bands_with_the_same_boxes(monkeypatch):
    torch.manual_seed(2)
    cmap = torch.randn(6, 9, 7)
    args = ([4, 0, 5], [0.0, 0.4, 0.8], (70, 53))
    whole = boxes_from_class_map(cmap, *args, resolution="pixel")
    monkeypatch.setattr(boxes_module, "PIXEL_BAND_ELEMENTS", 1000)  # one row a band
    banded = boxes_from_class_map(cmap, *args, resolution="pixel")
    assert torch.equal(whole[0], banded[0]) and torch.equal(whole[1], banded[1])
