"""Digit recognition model: preprocessing, HOG + SVM pipeline, artifacts, fast batched inference.

No HTTP or queue imports here; api/ and worker/ build on this package.
"""

from ml.artifacts import (
    ModelIntegrityError,
    read_metadata,
    resolve_local_model_dir,
    save_model,
    sha256_file,
)
from ml.model import DigitModel, Prediction
from ml.preprocess import ImageError

__all__ = [
    "DigitModel",
    "ImageError",
    "ModelIntegrityError",
    "Prediction",
    "read_metadata",
    "resolve_local_model_dir",
    "save_model",
    "sha256_file",
]
