"""Artifacts: save/load round trip, LATEST, integrity check."""

from __future__ import annotations

import json
import shutil

import pytest
from sklearn.dummy import DummyClassifier

from ml import DigitModel, ModelIntegrityError, read_metadata, resolve_local_model_dir, save_model
from ml.artifacts import MODEL_FILE, REQUIRED_METADATA, load_pipeline, sha256_file

META = {
    "training_data": "test",
    "params": {},
    "metrics": {},
    "library_versions": {},
    "low_confidence_threshold": 0.5,
}


def test_save_roundtrip_and_latest(tmp_path):
    clf = DummyClassifier().fit([[0], [1]], [0, 1])
    first = save_model(clf, META, tmp_path, version="v1")
    assert (tmp_path / "LATEST").read_text().strip() == "v1"
    second = save_model(clf, META, tmp_path, version="v2", set_latest=False)
    assert resolve_local_model_dir(tmp_path) == first
    assert resolve_local_model_dir(second) == second
    meta = read_metadata(first)
    assert meta["version"] == "v1"
    assert meta["sha256"] == sha256_file(first / MODEL_FILE)
    assert all(k in meta for k in REQUIRED_METADATA)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_default_version_name_has_date_kind_and_hash(tmp_path):
    clf = DummyClassifier().fit([[0], [1]], [0, 1])
    out = save_model(clf, META, tmp_path)
    date, kind, short = out.name.split("-")
    assert len(date) == 10 and kind == "hogsvm"
    assert read_metadata(out)["sha256"].startswith(short)


def test_tampered_model_is_refused(tmp_path):
    clf = DummyClassifier().fit([[0], [1]], [0, 1])
    out = save_model(clf, META, tmp_path, version="v1")
    load_pipeline(out)  # fine before tampering
    with open(out / MODEL_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError):
        load_pipeline(out)


def test_real_model_metadata(model_dir):
    meta = read_metadata(model_dir)
    assert meta["version"] == model_dir.name
    assert 0.5 <= meta["low_confidence_threshold"] < 1.0
    assert meta["metrics"]["holdout"]["accuracy"] >= 0.98
    assert meta["metrics"]["upload_like"]["accuracy"] >= 0.97
    # The metadata records the pipeline's own parameters (one place: the steps' __init__).
    pipeline = DigitModel.load(model_dir).pipeline
    recorded = meta["params"]["pipeline"]
    assert recorded["hog__cell_sizes"] == list(pipeline.get_params()["hog__cell_sizes"])
    assert recorded["pca__n_components"] == pipeline.get_params()["pca__n_components"]


def test_real_model_tampered_copy_refused(model_dir, tmp_path):
    copy = tmp_path / model_dir.name
    shutil.copytree(model_dir, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["sha256"] = "0" * 64
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError):
        DigitModel.load(copy)


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_local_model_dir(tmp_path)
