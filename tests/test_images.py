"""Images as people have them: EXIF orientation and high bit depths (drnet.data.images), through
both readers (classification/localization and segmentation)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from drnet.data.classification import load_rgb
from drnet.data.images import as_rgb
from drnet.data.segmentation import read_image


def test_16_bit_greyscale_is_scaled_by_range_not_clipped_white(tmp_path):
    ramp = (np.arange(64 * 32, dtype=np.uint32).reshape(32, 64) * 32).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # PIL reads it as 16/32-bit integers
    expected = np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    for array in (np.asarray(load_rgb(path)), read_image(path).permute(1, 2, 0).numpy()):
        assert array.shape == (32, 64, 3)
        assert np.array_equal(array[..., 0], expected) and np.array_equal(array[..., 2], expected)
        assert array.min() == 0 and 200 < array.max() <= 255  # a ramp, not all white


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),  # float in [0, 1]
        (np.array([[0, 100, 255]], dtype=np.int32), [0, 100, 255]),  # already 8-bit values
        (np.array([[0, 70000, 140000]], dtype=np.int32), [0, 128, 255]),  # beyond 16 bits: by max
    ],
)
def test_other_high_depth_modes(values, expected):
    image = Image.fromarray(values)
    assert image.mode in ("F", "I")
    assert np.asarray(as_rgb(image))[0, :, 0].tolist() == expected


def test_exif_orientation_is_applied(tmp_path):
    """A landscape JPEG stored with "rotate 90" (orientation 6) is read as the portrait image a
    person sees, with the marked corner where the viewer shows it."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:4, :4] = 255  # top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    for array in (np.asarray(load_rgb(path)), read_image(path).permute(1, 2, 0).numpy()):
        assert array.shape == (40, 20, 3)  # portrait, as viewed
        assert array[:4, -4:].mean() > 200 and array[:4, :4].mean() < 50  # now top-right


def test_pils_decompression_bomb_guard_is_one_data_error_naming_the_file(tmp_path, monkeypatch):
    from PIL import Image

    from drnet.data.classification import load_rgb
    from drnet.data.segmentation import read_image
    from drnet.errors import DataError

    path = tmp_path / "bomb.png"
    Image.new("RGB", (20, 20)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 400 px > 2 x 10: PIL refuses to open
    for reader in (load_rgb, read_image):
        with pytest.raises(DataError, match=r"bomb\.png.*--max-pixels"):
            reader(path)
