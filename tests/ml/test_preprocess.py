"""Preprocessing: every input shape/mode/polarity ends up as an MNIST-convention digit."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ml.preprocess import MAX_PIXELS, ImageError, decode_image, preprocess_bytes, to_mnist
from tests.helpers import paper, png, upscale


def assert_mnist_like(out: np.ndarray) -> None:
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.max() == pytest.approx(255.0, abs=1.0)
    assert out.min() >= 0.0
    cy, cx = ndimage.center_of_mass(out)
    assert abs(cy - 14) < 0.6 and abs(cx - 14) < 0.6
    rows = np.flatnonzero((out > 30).any(axis=1))
    cols = np.flatnonzero((out > 30).any(axis=0))
    assert 17 <= max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 22
    # Background (corners) is black.
    assert out[:3, :3].max() < 1 and out[-3:, -3:].max() < 1


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation after a small blur, so a one-pixel resampling offset doesn't dominate."""
    a, b = (ndimage.gaussian_filter(np.asarray(x, dtype=float), 1.0) for x in (a, b))
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_mnist_digit_is_nearly_unchanged(seven):
    out = to_mnist(seven)
    assert_mnist_like(out)
    assert similarity(out, seven) > 0.9


def test_dark_on_light_is_inverted_and_matches_light_on_dark(seven):
    dark_on_light = preprocess_bytes(png(paper(seven)))
    light_on_dark = preprocess_bytes(png(255.0 - paper(seven)))
    assert_mnist_like(dark_on_light)
    assert similarity(dark_on_light, light_on_dark) > 0.98
    assert similarity(dark_on_light, seven) > 0.85


def test_off_centre_and_large_jpeg(seven):
    page = paper(seven, size=(600, 800), at=(450, 20), side=120)
    out = preprocess_bytes(png(page, "JPEG", quality=70))
    assert_mnist_like(out)
    assert similarity(out, seven) > 0.85


def test_uneven_lighting(seven):
    page = paper(seven, size=(240, 240), at=(60, 60), side=120)
    page += np.linspace(0, -120, 240)[None, :]  # a shadow across the page
    out = preprocess_bytes(png(page, "JPEG", quality=85))
    assert_mnist_like(out)
    assert similarity(out, seven) > 0.85


def test_dust_does_not_move_the_box(seven):
    page = paper(seven, size=(300, 300), at=(100, 100), side=100)
    page[5:8, 5:8] = 30  # a speck in the corner
    out = preprocess_bytes(png(page))
    assert similarity(out, seven) > 0.85


@pytest.mark.parametrize("mode", ["RGB", "P", "CMYK", "LA", "1"])
def test_modes(seven, mode):
    img = Image.fromarray(paper(seven).astype(np.uint8)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = preprocess_bytes(png(img, fmt))
    assert_mnist_like(out)
    assert similarity(out, seven) > 0.8


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "WEBP", "JPEG"])
def test_formats(seven, fmt):
    assert similarity(preprocess_bytes(png(paper(seven), fmt)), seven) > 0.85


def test_16_bit_grayscale(seven):
    page16 = (paper(seven) * 257).astype(np.uint16)
    out = preprocess_bytes(png(Image.fromarray(page16)))
    assert_mnist_like(out)
    assert similarity(out, seven) > 0.85
    arr = decode_image(png(Image.fromarray(page16)))
    assert arr.max() <= 255.0


def test_normal_rgba_opaque(seven):
    rgb = np.repeat(paper(seven)[..., None], 3, axis=2)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255.0)]).astype(np.uint8)
    assert similarity(preprocess_bytes(png(Image.fromarray(rgba, "RGBA"))), seven) > 0.85


def test_rgba_scan_with_transparent_margin(seven):
    rgb = np.repeat(paper(seven)[..., None], 3, axis=2)
    alpha = np.full(rgb.shape[:2], 255.0)
    alpha[:, :10] = 0  # transparent margin whose colour channels are black
    rgb[:, :10] = 0
    rgba = np.dstack([rgb, alpha]).astype(np.uint8)
    assert similarity(preprocess_bytes(png(Image.fromarray(rgba, "RGBA"))), seven) > 0.85


@pytest.mark.parametrize("ink_colour", [0, 255])
def test_ink_as_alpha_on_transparent(seven, ink_colour):
    """Strokes drawn in black (or white) whose alpha is the ink; everything else transparent."""
    alpha = upscale(seven, 120)
    rgb = np.full((120, 120, 3), float(ink_colour))
    rgba = np.dstack([rgb, alpha]).astype(np.uint8)
    out = preprocess_bytes(png(Image.fromarray(rgba, "RGBA")))
    assert_mnist_like(out)
    assert similarity(out, seven) > 0.85


def test_palette_with_transparency(seven):
    alpha = upscale(seven, 100) > 128
    img = Image.new("P", (100, 100))
    img.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    img.putdata(alpha.ravel().astype(np.uint8).tolist())
    img.info["transparency"] = 0  # white index is transparent
    out = preprocess_bytes(png(img, transparency=0))
    assert similarity(out, seven) > 0.8


def test_exif_orientation_is_applied(seven):
    upright = paper(seven, size=(160, 160), at=(30, 30), side=100).astype(np.uint8)
    # Stored rotated; EXIF orientation 6 says "rotate 90° clockwise to display".
    stored = Image.fromarray(np.rot90(upright, k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = preprocess_bytes(png(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert similarity(out, seven) > 0.85


@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_is_an_error_not_a_guess(value):
    with pytest.raises(ImageError, match="blank"):
        preprocess_bytes(png(np.full((64, 64), float(value))))


def test_blank_paper_with_jpeg_noise_is_blank():
    rng = np.random.default_rng(0)
    page = 220 + rng.normal(0, 3, (300, 300)) + np.linspace(0, -20, 300)[None, :]
    with pytest.raises(ImageError, match="blank"):
        preprocess_bytes(png(page, "JPEG", quality=60))


def test_one_pixel_images():
    with pytest.raises(ImageError, match="blank"):
        preprocess_bytes(png(np.zeros((1, 1))))
    with pytest.raises(ImageError, match="blank"):
        preprocess_bytes(png(np.full((1, 1), 255.0)))


def test_tiny_image_with_a_stroke():
    img = np.full((5, 5), 255.0)
    img[:, 2] = 0.0  # a vertical bar: a "1"
    out = preprocess_bytes(png(img))
    assert out.shape == (28, 28) and out.max() > 200
    rows = np.flatnonzero((out > 30).any(axis=1))
    assert rows[-1] - rows[0] + 1 >= 18  # scaled up to the 20 px box


def large_page(seven) -> bytes:
    page = np.full((4000, 6000), 230.0)
    page[1000:3000, 2000:4000] -= upscale(seven, 2000) * 0.8
    return png(page, "JPEG", quality=80)


def test_large_image_is_downscaled_and_read(seven):
    assert similarity(preprocess_bytes(large_page(seven)), seven) > 0.85


@pytest.mark.perf
def test_large_image_is_downscaled_early_and_fast(seven):
    blob = large_page(seven)
    start = time.perf_counter()
    preprocess_bytes(blob)
    assert time.perf_counter() - start < 1.5


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (the pixel data never needs to exist)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(50000, 50000), (8000, 6000)])
def test_too_many_pixels(size):
    with pytest.raises(ImageError, match=f"image too large: .* exceeds {MAX_PIXELS}"):
        preprocess_bytes(png_header_only(*size))


@pytest.mark.parametrize("blob", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"GIF89a"])
def test_unreadable(blob):
    with pytest.raises(ImageError, match="not a readable image"):
        preprocess_bytes(blob)


@pytest.mark.parametrize("fmt", ["EPS", "PPM", "TGA", "ICO"])
def test_other_formats_are_never_decoded(seven, fmt):
    """Only the six accepted formats reach a decoder: EPS would run Ghostscript on the bytes."""
    blob = png(paper(seven), fmt)
    assert Image.open(io.BytesIO(blob)).format == fmt  # Pillow itself would open it
    with pytest.raises(ImageError, match="not a readable image"):
        preprocess_bytes(blob)


def test_truncated_file(seven):
    blob = png(paper(seven), "PNG")
    with pytest.raises(ImageError, match="not a readable image"):
        preprocess_bytes(blob[: len(blob) // 2])


def test_small_grey_png_fast_decode_equals_pillow(splits):
    for digit in splits.X_holdout[:50]:
        blob = png(digit)
        np.testing.assert_array_equal(
            decode_image(blob), np.asarray(Image.open(io.BytesIO(blob)), np.float32)
        )


@pytest.mark.parametrize("size", [28, 64])
def test_small_png_truncated_or_corrupt_is_an_image_error(seven, size):
    blob = png(upscale(seven, size))
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image(blob[: len(blob) // 2])
    corrupt = bytearray(blob)
    corrupt[-30] ^= 0xFF  # inside the IDAT data: CRC and zlib stream are now wrong
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image(bytes(corrupt))


def test_batch_preprocessing_equals_to_mnist(splits):
    """28x28 inputs go through the whole-batch path: same digits as `to_mnist` one by one."""
    from ml.preprocess import _to_mnist_fields, preprocess_batch

    grays = [decode_image(png(d)) for d in splits.X_holdout[:400]]
    ref = np.stack([to_mnist(g) for g in grays])
    _, ok = _to_mnist_fields(np.stack(grays))
    assert ok.mean() > 0.9  # the batch path really is the common one
    out, errors = preprocess_batch(grays)
    assert errors == [None] * len(grays)
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_batch_preprocessing_mixed_inputs(seven):
    """Dark-on-light and unevenly lit 28x28s, blanks, other sizes: each as `to_mnist` says."""
    from ml.preprocess import preprocess_batch

    shaded = 255.0 - seven + np.linspace(0, -60, 28)[None, :]
    speck = seven.copy()
    speck[1, 1] = 200.0  # dust far from the digit
    grays = [seven, 255.0 - seven, shaded, np.full((28, 28), 200.0), paper(seven), speck, np.zeros((28, 28))]
    out, errors = preprocess_batch([g.astype(np.float32) for g in grays])
    for i, gray in enumerate(grays):
        try:
            expected = to_mnist(gray.astype(np.float32))
        except ImageError as exc:
            assert errors[i] == str(exc) and not out[i].any()
            continue
        assert errors[i] is None
        np.testing.assert_allclose(out[i], expected, atol=1e-3)
    assert errors[3] and "blank" in errors[3] and errors[6]
    assert out[5][1:3, 1:3].max() == 0  # the speck was dropped


def test_batch_median_and_noise_equal_sorting():
    """The batch path's median and noise skip the sorts for rows that are mostly their minimum:
    equal to sorting every row, for rows just over, at and under half the minimum, and noisy ones."""
    from ml.preprocess import _centre_and_noise

    rng = np.random.default_rng(3)
    rows = rng.normal(10.0, 3.0, (8, 784)).astype(np.float32)
    for i, count in enumerate((391, 392, 393, 394, 784, 0)):
        rows[i, :count] = rows[i].min() - 1.0  # `count` values equal to the row's minimum
    rows[6] = rng.integers(0, 3, 784)  # few distinct values
    centre, noise = _centre_and_noise(rows.copy())
    k = rows.shape[1] // 2
    expected = np.sort(rows, axis=1)[:, k]
    np.testing.assert_array_equal(centre, expected)
    np.testing.assert_array_equal(noise, 1.4826 * np.sort(np.abs(rows - expected[:, None]), axis=1)[:, k])
    assert noise.dtype == np.float32 and noise[3] == 0 and noise[0] > 0


def test_batch_preprocessing_moves_off_centre_digits_like_to_mnist(splits):
    """Digits pushed into each corner and edge need large, mixed shifts (the batch path copies
    each distinct shift once): every one lands where `to_mnist` puts it."""
    from ml.preprocess import _to_mnist_fields, preprocess_batch

    grays = []
    for k, digit in enumerate(to_mnist(d.astype(np.float32)) for d in splits.X_holdout[:24]):
        ink = digit > 0
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        box = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        field = np.zeros((28, 28), dtype=np.float32)
        # One pixel off the edge: a border with ink is not the evenly lit paper the batch path takes.
        top = (1, 27 - box.shape[0], (28 - box.shape[0]) // 2)[k % 3]
        left = (1, 27 - box.shape[1], 3)[(k // 3) % 3]
        field[top : top + box.shape[0], left : left + box.shape[1]] = box
        grays.append(field)
    _, ok = _to_mnist_fields(np.stack(grays))
    assert ok.sum() >= 12  # most really go through the batch path
    out, errors = preprocess_batch(grays)
    assert errors == [None] * len(grays)
    np.testing.assert_array_equal(out, np.stack([to_mnist(g) for g in grays]))


def test_a_small_batch_is_to_mnist_exactly(seven):
    """A batch of one (a /predict image) skips the whole-batch path: `to_mnist`'s digit, bit for
    bit, and its error for a blank."""
    from ml.preprocess import SMALL_BATCH, preprocess_batch

    gray = seven.astype(np.float32)
    out, errors = preprocess_batch([gray] * SMALL_BATCH)
    assert errors == [None] * SMALL_BATCH
    np.testing.assert_array_equal(out, np.stack([to_mnist(gray)] * SMALL_BATCH))
    out, errors = preprocess_batch([np.zeros((28, 28), dtype=np.float32)])
    assert errors[0] and "blank" in errors[0] and not out.any()
