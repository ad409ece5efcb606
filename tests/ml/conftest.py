"""Shared fixtures: the default trained model (trained once via `ml.train` if missing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml import DigitModel, resolve_local_model_dir
from ml.data import load_splits

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The default model (models/LATEST) — the suite normally runs after `make model`."""
    if (MODELS_DIR / "LATEST").exists():
        return resolve_local_model_dir(MODELS_DIR)
    from ml.train import train

    return train(tmp_path_factory.mktemp("models"), set_latest=True)


@pytest.fixture(scope="session")
def model(model_dir) -> DigitModel:
    return DigitModel.load(model_dir)


@pytest.fixture(scope="session")
def splits():
    return load_splits()


@pytest.fixture(scope="session")
def seven(splits) -> np.ndarray:
    """One held-out MNIST '7' (28x28, light ink on black) that doesn't touch the border."""
    sevens = splits.X_holdout[splits.y_holdout == 7]
    inside = [d for d in sevens if d[:2].max() == 0 and d[-2:].max() == 0]
    return inside[0]
