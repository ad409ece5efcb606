"""Candidate against current: both models on the same held-out digits, McNemar's exact test.

The items are the held-out parts of the data (sources.split, the seed `train` uses: neither
model was fitted or tuned on them if both were trained on these sources). Only the digits the
two models disagree on carry information: `b` the candidate gets right and the current model
wrong, `c` the reverse. Under "equally good" b ~ Binomial(b + c, 1/2); the two-sided exact
p-value is `scipy.stats.binomtest(b, b + c).pvalue`. Significant at ALPHA: "better" or
"worse" by the sign of b - c; otherwise "no significant difference".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest

from ml import data, sources
from ml.preprocess import to_mnist_batch

ALPHA = 0.05


def mcnemar(candidate_right: np.ndarray, current_right: np.ndarray, alpha: float = ALPHA) -> dict:
    """McNemar's exact test on paired correctness (boolean arrays over the same items)."""
    candidate_right = np.asarray(candidate_right, dtype=bool)
    current_right = np.asarray(current_right, dtype=bool)
    b = int((candidate_right & ~current_right).sum())
    c = int((~candidate_right & current_right).sum())
    p_value = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    significant = p_value < alpha
    verdict = "no significant difference"
    if significant:
        verdict = "better" if b > c else "worse"
    return {
        "b": b,
        "c": c,
        "p_value": p_value,
        "alpha": alpha,
        "significant": significant,
        "verdict": verdict,
    }


def held_out_items(extra: Sequence[sources.Source], bundled: bool = True) -> list[sources.Part]:
    chosen = ([sources.bundled()] if bundled else []) + list(extra)
    if not chosen:
        raise sources.SourceError("nothing to compare on: --no-bundled needs at least one --data")
    return [sources.split(s, data.HOLDOUT_SEED) for s in chosen]


def compare(candidate, current, parts: Sequence[sources.Part]) -> dict:
    """`candidate` and `current` (DigitModels) on every part's held-out digits, as served."""
    X = np.concatenate([p.X_holdout for p in parts])
    y = np.concatenate([p.y_holdout for p in parts])
    if not len(y):
        raise sources.SourceError("the data has no held-out digits to compare on")
    digits = to_mnist_batch(X)
    cand_right = candidate.classes[candidate.predict_proba_arrays(digits).argmax(axis=1)] == y
    curr_right = current.classes[current.predict_proba_arrays(digits).argmax(axis=1)] == y
    per_source, start = [], 0
    for part in parts:
        n = len(part.y_holdout)
        rows = slice(start, start + n)
        start += n
        per_source.append(
            {
                "kind": part.source.kind,
                "name": part.source.name,
                "sha256": part.source.provenance()["sha256"],
                "items": n,
                "candidate_accuracy": float(cand_right[rows].mean()) if n else None,
                "against_accuracy": float(curr_right[rows].mean()) if n else None,
                **(mcnemar(cand_right[rows], curr_right[rows]) if n else {}),
            }
        )
    return {
        "candidate": candidate.version,
        "against": current.version,
        "items": int(len(y)),
        "candidate_accuracy": float(cand_right.mean()),
        "against_accuracy": float(curr_right.mean()),
        **mcnemar(cand_right, curr_right),
        "per_source": per_source,
        "compared_at": dt.datetime.now(dt.UTC).isoformat(),
    }


def describe(record: dict) -> str:
    lines = [
        f"{record['candidate']} vs {record['against']} on {record['items']} held-out digits: "
        f"{record['candidate_accuracy']:.4f} vs {record['against_accuracy']:.4f}",
        f"  discordant pairs: candidate right only {record['b']}, current right only {record['c']}; "
        f"McNemar exact p = {record['p_value']:.4g} -> {record['verdict']} (alpha {record['alpha']})",
    ]
    for row in record["per_source"]:
        if row["items"]:
            lines.append(
                f"  {row['kind']} {row['name']}: {row['items']} digits, {row['candidate_accuracy']:.4f} vs "
                f"{row['against_accuracy']:.4f}, p = {row['p_value']:.4g} ({row['verdict']})"
            )
    return "\n".join(lines)
