"""`python -m ml compare`: McNemar's exact test, and two models with a known difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml import sources
from ml.cli import main
from ml.compare import compare, held_out_items, mcnemar
from ml.model import DigitModel
from tests.ml.tiny import digits, tiny_model, write_idx


def test_mcnemar_counts_only_the_discordant_pairs() -> None:
    both = np.ones(500, dtype=bool)
    cand = np.concatenate([both, np.ones(10, bool), np.zeros(1, bool)])
    curr = np.concatenate([both, np.zeros(10, bool), np.ones(1, bool)])
    better = mcnemar(cand, curr)
    assert (better["b"], better["c"]) == (10, 1)
    assert better["p_value"] == pytest.approx(2 * 12 / 2**11)  # 2 P(X <= 1), X ~ Bin(11, 1/2)
    assert better["verdict"] == "better" and better["significant"]
    assert mcnemar(curr, cand)["verdict"] == "worse"
    # 5 vs 2 of 7 discordant: p = 0.45, whatever the 500 agreements say.
    close = mcnemar(np.r_[both, [True] * 5, [False] * 2], np.r_[both, [False] * 5, [True] * 2])
    assert close["verdict"] == "no significant difference" and close["p_value"] == pytest.approx(0.453125)
    assert mcnemar(both, both)["p_value"] == 1.0


@pytest.fixture(scope="module")
def good_and_bad(tmp_path_factory) -> tuple[Path, Path]:
    """A model fitted on 600 digits and one fitted on 60: the first is clearly better."""
    models = tmp_path_factory.mktemp("models")
    return tiny_model(models, 600), tiny_model(models, 60, start=600)


def test_compare_finds_the_known_difference_on_the_same_items(good_and_bad, tmp_path: Path) -> None:
    good, bad = (DigitModel.load(p) for p in good_and_bad)
    X, y = digits(300, start=1000)  # neither model saw these
    write_idx(tmp_path, X, y, "t10k")
    parts = held_out_items([sources.load(str(tmp_path))], bundled=False)
    record = compare(bad, good, parts)
    assert record["items"] == 300 and record["per_source"][0]["items"] == 300
    assert record["candidate_accuracy"] < record["against_accuracy"]
    assert record["verdict"] == "worse" and record["p_value"] < 0.001
    gap = record["against_accuracy"] - record["candidate_accuracy"]
    assert record["c"] - record["b"] == round(300 * gap)
    # The other way round, the same discordant pairs swap.
    reverse = compare(good, bad, parts)
    assert (reverse["b"], reverse["c"], reverse["verdict"]) == (record["c"], record["b"], "better")
    assert reverse["p_value"] == pytest.approx(record["p_value"])
    # A model against itself: no discordant pair.
    same = compare(good, good, parts)
    assert (same["b"], same["c"], same["verdict"]) == (0, 0, "no significant difference")


def test_compare_command_prints_the_verdict(good_and_bad, tmp_path: Path, capsys) -> None:
    good, bad = good_and_bad
    X, y = digits(200, start=1500)
    write_idx(tmp_path, X, y, "t10k")
    assert main(["compare", str(bad), "--against", str(good), "--no-bundled", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "McNemar exact p =" in out and "-> worse" in out and "200 held-out digits" in out
