"""`python -m ml predict/evaluate` behaviour."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest

from ml.cli import build_parser, main
from tests.helpers import paper, png


def write_digits(folder, seven):
    folder.mkdir()
    (folder / "a.png").write_bytes(png(paper(seven)))
    (folder / "b.jpg").write_bytes(png(255.0 - paper(seven), "JPEG"))
    (folder / "blank.png").write_bytes(png(np.full((30, 30), 255.0)))
    (folder / "notes.txt").write_text("ignored")


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_subcommands_registered():
    parser = build_parser()
    for cmd in ("train", "evaluate", "predict"):
        assert parser.parse_args([cmd] + (["x"] if cmd == "predict" else [])).command == cmd


def test_predict_folder(tmp_path, capsys, seven, model_dir):
    write_digits(tmp_path / "in", seven)
    assert main(["predict", str(tmp_path / "in"), "--model", str(model_dir)]) == 0
    rows = read_csv(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["a.png", "b.jpg", "blank.png"]
    assert rows[0]["digit"] == "7" and rows[1]["digit"] == "7"
    assert rows[2]["digit"] == "" and "blank" in rows[2]["error"]
    assert 0 < float(rows[0]["confidence"]) <= 1


def test_predict_zip_to_file(tmp_path, seven, model_dir):
    zpath = tmp_path / "in.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("x/one.png", png(paper(seven)))
    out = tmp_path / "out.csv"
    assert main(["predict", str(zpath), "--model", str(model_dir), "--out", str(out)]) == 0
    rows = read_csv(out.read_text())
    assert rows == [{**rows[0], "name": "x/one.png", "digit": "7"}]


@pytest.mark.slow  # evaluates every split and draws the report: `make test` runs it, `make test-fast` not
def test_evaluate_writes_json_png_and_report(tmp_path, capsys, model_dir):
    report_dir = tmp_path / "report"
    args = ["evaluate", "--model", str(model_dir), "--out", str(tmp_path), "--report", str(report_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["sets"]["holdout"]["accuracy"] >= 0.98
    assert len(report["sets"]["holdout"]["confusion_matrix"]) == 10
    assert (tmp_path / "confusion_holdout.png").stat().st_size > 1000
    assert str(tmp_path / "confusion_holdout.png") in out
    # The model report (--report): three pictures and a Markdown summary that shows them.
    for name in ("confusion.png", "reliability.png", "worst_confused.png"):
        picture = report_dir / name
        assert picture.read_bytes().startswith(b"\x89PNG") and picture.stat().st_size > 5000
        assert str(picture) in out
    summary = (report_dir / "report.md").read_text()
    assert "| holdout | 1000 |" in summary
    assert summary.count("\n| 7 |") == 1 and "precision" in summary and "recall" in summary
    for name in ("confusion.png", "reliability.png", "worst_confused.png"):
        assert f"]({name})" in summary
