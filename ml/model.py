"""The serving model: decode + preprocess uploads, classify them as one batch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml import serving
from ml.artifacts import load_pipeline
from ml.preprocess import FIELD, ImageError, decode_image, preprocess_batch, to_mnist


@dataclass(frozen=True)
class Prediction:
    digit: int | None
    confidence: float | None
    low_confidence: bool
    error: str | None = None


@dataclass(frozen=True)
class Prepared:
    """One decoded image, at most 28x28: a finished digit, or a 28x28 image still to preprocess."""

    array: np.ndarray
    final: bool


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
        return serving.predict_proba(self.pipeline, images)

    def predict_arrays(self, images: np.ndarray) -> list[Prediction]:
        """Classify already-preprocessed (N, 28, 28) digits (0..255 ink on 0) as one batch."""
        proba = self.predict_proba_arrays(images)
        best = proba.argmax(axis=1)
        return [self._prediction(int(self.classes[k]), float(p[k])) for k, p in zip(best, proba, strict=True)]

    def prepare(self, blob: bytes) -> Prepared:
        """Decode one image and bring it down to 28x28 at once (raises ImageError), so that a
        caller going through a chunk holds one full-size image at a time, never all of them.

        A 28x28 image is kept as decoded: `predict_prepared` preprocesses those as one batch."""
        gray = decode_image(blob)
        if gray.shape == (FIELD, FIELD):
            return Prepared(gray, final=False)
        return Prepared(to_mnist(gray), final=True)

    def predict_prepared(self, prepared: Sequence[Prepared]) -> list[Prediction]:
        """Classify prepared images as one batch; an image that turns out blank gets an error."""
        results: list[Prediction | None] = [None] * len(prepared)
        digits = np.zeros((len(prepared), FIELD, FIELD), dtype=np.float32)
        good = [i for i, p in enumerate(prepared) if p.final]
        for i in good:
            digits[i] = prepared[i].array
        raw = [i for i, p in enumerate(prepared) if not p.final]
        try:
            fields, errors = preprocess_batch([prepared[i].array for i in raw])
        except Exception:  # never expected; keep the per-item guarantee all the same
            fields, errors = self._one_by_one([prepared[i].array for i in raw])
        for k, i in enumerate(raw):
            if errors[k] is None:
                digits[i] = fields[k]
                good.append(i)
            else:
                results[i] = Prediction(None, None, False, errors[k])
        good.sort()
        if good:
            for i, pred in zip(good, self.predict_arrays(digits[good]), strict=True):
                results[i] = pred
        return results  # type: ignore[return-value]

    def predict_images(self, blobs: Iterable[bytes]) -> list[Prediction]:
        """Decode, preprocess and classify raw image files; bad items get an error, never raise.

        Each file is decoded and brought down to 28x28 as it comes (`prepare`: the iterable may
        be lazy), and the small arrays are classified as one batch."""
        out: list[Prediction | Prepared] = []
        for blob in blobs:
            try:
                out.append(self.prepare(blob))
            except ImageError as exc:
                out.append(Prediction(None, None, False, str(exc)))
            except Exception:  # a decoder bug must not sink the whole batch
                out.append(Prediction(None, None, False, "could not process image"))
        ready = [p for p in out if isinstance(p, Prepared)]
        predicted = iter(self.predict_prepared(ready))
        return [next(predicted) if isinstance(p, Prepared) else p for p in out]

    @staticmethod
    def _one_by_one(grays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str | None]]:
        """The slow, fully isolated path: one image at a time, each failure its own."""
        out = np.zeros((len(grays), FIELD, FIELD), dtype=np.float32)
        errors: list[str | None] = [None] * len(grays)
        for k, gray in enumerate(grays):
            try:
                out[k] = to_mnist(gray)
            except ImageError as exc:
                errors[k] = str(exc)
            except Exception:
                errors[k] = "could not process image"
        return out, errors

    def _prediction(self, digit: int, confidence: float) -> Prediction:
        return Prediction(digit, confidence, confidence < self.low_confidence_threshold, None)
