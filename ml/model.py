"""The serving model: decode + preprocess uploads, classify them as one batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.artifacts import load_pipeline
from ml.preprocess import ImageError, decode_image, preprocess_batch, preprocess_bytes


@dataclass(frozen=True)
class Prediction:
    digit: int | None
    confidence: float | None
    low_confidence: bool
    error: str | None = None


class DigitModel:
    """A loaded, integrity-checked model version. Thread-safe for prediction (read-only).

    The scikit-learn Pipeline is the model: deskew -> HOG -> PCA -> calibrated kernel SVC,
    each step vectorised over the batch; serving is `pipeline.predict_proba` on the chunk.
    """

    def __init__(self, pipeline, metadata: dict, model_dir: Path | None = None):
        self.pipeline = pipeline
        self.model_dir = model_dir
        self.metadata = metadata
        self.version: str = metadata["version"]
        self.low_confidence_threshold: float = float(metadata["low_confidence_threshold"])
        self.classes = np.asarray(pipeline.classes_)

    @classmethod
    def load(cls, model_dir: Path) -> DigitModel:
        """Load `model_dir` (a version dir); raises ModelIntegrityError on a sha256 mismatch."""
        pipeline, metadata = load_pipeline(Path(model_dir))
        return cls(pipeline, metadata, Path(model_dir))

    def predict_proba_arrays(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) MNIST-convention digits -> calibrated class probabilities (N, 10)."""
        images = np.asarray(images, dtype=np.float32).reshape(-1, 28 * 28)
        if len(images) == 0:
            return np.empty((0, len(self.classes)))
        return self.pipeline.predict_proba(images)

    def predict_arrays(self, images: np.ndarray) -> list[Prediction]:
        """Classify already-preprocessed (N, 28, 28) digits (0..255 ink on 0) as one batch."""
        proba = self.predict_proba_arrays(images)
        best = proba.argmax(axis=1)
        return [self._prediction(int(self.classes[k]), float(p[k])) for k, p in zip(best, proba, strict=True)]

    def predict_images(self, blobs: Sequence[bytes]) -> list[Prediction]:
        """Decode, preprocess and classify raw image files; bad items get an error, never raise.

        Decoding is per file; preprocessing and the pipeline run on the whole batch."""
        results: list[Prediction | None] = [None] * len(blobs)
        ok_index: list[int] = []
        grays: list[np.ndarray] = []
        for i, blob in enumerate(blobs):
            try:
                grays.append(decode_image(blob))
                ok_index.append(i)
            except ImageError as exc:
                results[i] = Prediction(None, None, False, str(exc))
            except Exception:  # a decoder bug must not sink the whole batch
                results[i] = Prediction(None, None, False, "could not process image")
        try:
            digits, errors = preprocess_batch(grays)
        except Exception:  # never expected; keep the per-item guarantee all the same
            return self._one_by_one(blobs)
        good = [k for k, error in enumerate(errors) if error is None]
        for k, error in enumerate(errors):
            if error is not None:
                results[ok_index[k]] = Prediction(None, None, False, error)
        if good:
            for k, pred in zip(good, self.predict_arrays(digits[good]), strict=True):
                results[ok_index[k]] = pred
        return results  # type: ignore[return-value]

    def _one_by_one(self, blobs: Sequence[bytes]) -> list[Prediction]:
        """The slow, fully isolated path: one image at a time, each failure its own."""
        out = []
        for blob in blobs:
            try:
                out.append(self.predict_arrays(preprocess_bytes(blob)[None])[0])
            except ImageError as exc:
                out.append(Prediction(None, None, False, str(exc)))
            except Exception:
                out.append(Prediction(None, None, False, "could not process image"))
        return out

    def _prediction(self, digit: int, confidence: float) -> Prediction:
        return Prediction(digit, confidence, confidence < self.low_confidence_threshold, None)
