"""What a reviewer needs to know (issue 20): coverage, the share of items the low-confidence flag
leaves unflagged, and the accuracy (and errors) among them."""

import numpy as np

from ml.evaluate import classification_metrics, summary


def test_coverage_and_accuracy_among_the_unflagged() -> None:
    proba = np.full((5, 10), 0.01)
    for row, (digit, confidence) in enumerate([(1, 0.9), (2, 0.95), (3, 0.99), (4, 0.5), (5, 0.4)]):
        proba[row, digit] = confidence
    y = np.array([1, 2, 7, 4, 0])  # one confident item wrong, one flagged item wrong
    metrics = classification_metrics(proba, y, threshold=0.8)
    assert metrics["coverage"] == 0.6 and metrics["low_confidence_rate"] == 0.4
    assert metrics["accuracy_when_confident"] == 2 / 3 and metrics["errors_when_confident"] == 1
    assert {"coverage", "accuracy_when_confident", "errors_when_confident"} <= set(summary(metrics))
