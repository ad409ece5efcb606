"""The model a worker serves, loaded once at start-up (before the pool forks, so the pool
processes share its memory) and looked up by version for each chunk."""

import logging
from pathlib import Path

from core.config import Settings
from ml import DigitModel
from ml.artifacts import resolve_local_model_dir

log = logging.getLogger(__name__)

_loaded: dict[str, DigitModel] = {}
_current: str | None = None


def load_default(settings: Settings) -> DigitModel:
    global _current
    model = DigitModel.load(resolve_local_model_dir(Path(settings.model_uri)))
    _loaded[model.version] = model
    _current = model.version
    log.info("model %s loaded from %s", model.version, settings.model_uri)
    return model


def current() -> DigitModel:
    if _current is None:
        raise RuntimeError("no model loaded")
    return _loaded[_current]


def get(version: str) -> DigitModel:
    """The model of this version; a job keeps the version its first chunk used."""
    if version not in _loaded:
        raise LookupError(f"model version {version} is not loaded on this worker")
    return _loaded[version]
