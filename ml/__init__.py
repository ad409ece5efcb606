"""Digit recognition model: preprocessing, HOG + SVM pipeline, artifacts, fast batched inference.

No HTTP or queue imports here; api/ and worker/ build on this package.

The names below load on first use (PEP 562): `import ml.preprocess` or `ml.views` must not pull
in scikit-learn, so that the API (which never imports it) can decode images as workers do.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml.artifacts import (
        ModelIntegrityError,
        read_metadata,
        resolve_local_model_dir,
        save_model,
        sha256_file,
    )
    from ml.model import DigitModel, Prediction
    from ml.preprocess import ImageError

_WHERE = {
    "DigitModel": "ml.model",
    "Prediction": "ml.model",
    "ImageError": "ml.preprocess",
    "ModelIntegrityError": "ml.artifacts",
    "read_metadata": "ml.artifacts",
    "resolve_local_model_dir": "ml.artifacts",
    "save_model": "ml.artifacts",
    "sha256_file": "ml.artifacts",
}

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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ml' has no attribute {name!r}")
