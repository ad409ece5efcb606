"""Training data sources (`python -m ml train --data`): each format, and each way it can be broken."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ml import sources
from ml.cli import main
from ml.sources import SourceError
from tests.ml.tiny import digits, idx_bytes, write_digit_folder, write_idx, write_zip


def test_idx_folder_reads_train_and_takes_t10k_as_its_held_out_part(tmp_path: Path) -> None:
    X, y = digits(50)
    write_idx(tmp_path, X[:40], y[:40], "train", gz=True)
    write_idx(tmp_path, X[40:], y[40:], "t10k", gz=False)
    source = sources.load(str(tmp_path))
    assert source.kind == "idx" and source.count == 50
    np.testing.assert_array_equal(source.X, np.rint(X[:40]))
    part = sources.split(source, seed=1)
    np.testing.assert_array_equal(part.y_holdout, y[40:])  # MNIST's own test files, not a draw
    prov = source.provenance()
    assert set(prov["files"]) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    }
    assert len(prov["sha256"]) == 64


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("magic", "wrong magic number"),
        ("shape", "images are 20x20"),
        ("label", "label 11 at item 3"),
        ("count", "has 30 images but"),
        ("truncated", "header says"),
        ("no-labels", "no matching train-labels"),
    ],
)
def test_a_broken_idx_file_is_an_error_naming_it(tmp_path: Path, broken: str, message: str) -> None:
    X, y = digits(30)
    images = idx_bytes(X, sources.IMAGES_MAGIC)
    labels = idx_bytes(y, sources.LABELS_MAGIC)
    bad_file = "train-images-idx3-ubyte"
    if broken == "magic":
        images = (0x0803 + 0x100).to_bytes(4, "big") + images[4:]
    elif broken == "shape":
        images = idx_bytes(np.zeros((30, 20, 20)), sources.IMAGES_MAGIC)
    elif broken == "label":
        y = y.copy()
        y[3] = 11
        labels, bad_file = idx_bytes(y, sources.LABELS_MAGIC), "train-labels-idx1-ubyte"
    elif broken == "count":
        labels, bad_file = idx_bytes(y[:29], sources.LABELS_MAGIC), "train-images-idx3-ubyte"
    elif broken == "truncated":
        images = images[:-5]
    (tmp_path / "train-images-idx3-ubyte").write_bytes(images)
    if broken != "no-labels":
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(SourceError, match=message) as err:
        sources.load(str(tmp_path))
    assert bad_file in str(err.value)


def test_a_corrupt_gzip_is_an_error_naming_it(tmp_path: Path) -> None:
    X, y = digits(10)
    write_idx(tmp_path, X, y)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(SourceError, match="train-labels-idx1-ubyte.gz"):
        sources.load(str(tmp_path))


def test_digit_folders_are_preprocessed_as_served_and_a_bad_image_is_skipped(tmp_path: Path) -> None:
    from ml.preprocess import preprocess_bytes
    from tests.ml.tiny import png

    X, y = digits(20)
    write_digit_folder(tmp_path, X, y)
    (tmp_path / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    source = sources.load(str(tmp_path))
    assert source.kind == "folder" and source.count == 20
    assert list(source.skipped) == ["3/broken.png"]
    assert "1 unreadable image(s) skipped" in source.summary() and "3/broken.png" in source.summary()
    assert source.provenance()["skipped"] == 1
    # The dark-on-light copy of digit 0 became exactly what /predict would classify.
    first = sorted((tmp_path / str(int(y[0]))).iterdir())[0]
    row = next(i for i, lab in enumerate(source.y) if lab == y[0])
    np.testing.assert_array_equal(source.X[row], preprocess_bytes(first.read_bytes()))
    assert png(X[0], dark_on_light=True) == (tmp_path / str(int(y[0])) / "d0.png").read_bytes()


def test_a_folder_that_is_not_a_digit_is_an_error(tmp_path: Path) -> None:
    X, y = digits(5)
    write_digit_folder(tmp_path, X, y)
    (tmp_path / "seven").mkdir()
    with pytest.raises(SourceError, match="seven: subfolder name is not a digit"):
        sources.load(str(tmp_path))


def test_zip_with_labels_csv(tmp_path: Path) -> None:
    X, y = digits(15)
    archive, labels = write_zip(tmp_path / "archive.zip", X, y)
    source = sources.load(f"{archive}:{labels}")
    assert source.kind == "zip" and source.count == 15
    np.testing.assert_array_equal(source.y, y)
    assert "labels.csv" not in source.provenance()["files"]  # the zip's entries + the CSV
    assert archive.with_suffix(".csv").name in source.files


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("img/99.png,3", "not in"),
        ("img/0.png,12", "label 12 is not a digit"),
        ("img/0.png", "not `name,digit`"),
    ],
)
def test_a_bad_labels_csv_is_an_error_naming_it(tmp_path: Path, row: str, message: str) -> None:
    X, y = digits(5)
    archive, labels = write_zip(tmp_path / "archive.zip", X, y)
    labels.write_text(labels.read_text() + row + "\n")
    with pytest.raises(SourceError, match=message) as err:
        sources.load(f"{archive}:{labels}")
    assert str(labels) in str(err.value)


def test_a_bad_image_in_a_zip_is_skipped_and_counted(tmp_path: Path) -> None:
    X, y = digits(5)
    archive, labels = write_zip(tmp_path / "archive.zip", X, y)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("img/bad.png", b"nope")
    labels.write_text(labels.read_text() + "img/bad.png,4\n")
    source = sources.load(f"{archive}:{labels}")
    assert source.count == 5 and list(source.skipped) == ["img/bad.png"]


def test_a_zip_without_labels_says_how_to_give_them(tmp_path: Path) -> None:
    X, y = digits(3)
    archive, _ = write_zip(tmp_path / "archive.zip", X, y)
    with pytest.raises(SourceError, match=r"archive.zip:labels.csv"):
        sources.load(str(archive))


def test_the_mnist_digest_check_refuses_a_wrong_file(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    good.write_bytes(b"pinned content")
    sources.check_digest(good, sources.sha256_bytes(b"pinned content"))
    with pytest.raises(SourceError, match="good.bin: SHA-256"):
        sources.check_digest(good, "0" * 64)
    # A cached MNIST file that is not the official one is refused, naming it; nothing downloads
    # (the file is there) and nothing is trained on it.
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in sources.MNIST_SHA256:
        (cache / name).write_bytes(b"not mnist")
    pinned = "train-images-idx3-ubyte.gz: SHA-256 .* does not match the pinned 440fcabf"
    with pytest.raises(SourceError, match=pinned):
        sources.fetch_mnist(cache)


def test_mnist_offline_is_a_clear_error(tmp_path: Path) -> None:
    # Port 9 on loopback: refused at once, no network involved.
    with pytest.raises(SourceError, match="could not download .* offline"):
        sources.fetch_mnist(tmp_path / "cache", base_url="http://127.0.0.1:9/")
    assert not list((tmp_path / "cache").iterdir())  # no partial file left behind


def test_a_training_digit_equal_to_a_held_out_one_is_dropped() -> None:
    X, y = digits(40)
    a = sources.Source("idx", "a", X[:30], y[:30], {})
    a.X_test, a.y_test = X[30:], y[30:]
    # b trains on two of a's held-out digits (dropped) and five of a's training digits (kept).
    b = sources.Source("folder", "b", np.r_[X[30:32], X[:5]], np.r_[y[30:32], y[:5]], {})
    b.X_test, b.y_test = X[35:36], y[35:36]
    parts, dropped = sources.drop_held_out([sources.split(a, 0), sources.split(b, 0)])
    assert dropped == 2 and len(parts[1].y_train) == 5


def test_train_with_data_records_provenance_and_per_source_scores(tmp_path: Path) -> None:
    X, y = digits(400)
    write_idx(tmp_path / "idx", X[:300], y[:300])
    write_digit_folder(tmp_path / "folder", X[300:], y[300:])
    (tmp_path / "folder" / "5" / "junk.png").write_bytes(b"junk")
    models = tmp_path / "models"
    args = ["train", "--no-bundled", "--models-dir", str(models), "--no-latest"]
    assert main([*args, "--data", str(tmp_path / "idx"), "--data", str(tmp_path / "folder")]) == 0
    meta = json.loads(next(models.glob("*/metadata.json")).read_text())
    idx, folder = meta["sources"]
    assert (idx["kind"], idx["count"], idx["held_out"], idx["train"]) == ("idx", 300, 30, 270)
    assert (folder["kind"], folder["count"], folder["skipped"], folder["held_out"]) == ("folder", 100, 1, 10)
    assert (idx["fitted"], folder["fitted"]) == (270, 90)  # no cap at this size
    assert idx["sha256"] == sources.load(str(tmp_path / "idx")).provenance()["sha256"]
    assert 0.5 < idx["held_out_accuracy"] <= 1 and folder["held_out_accuracy"] is not None
    assert "idx" in meta["training_data"] and "held-out part" in meta["training_data"]


def test_train_with_broken_data_exits_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\0\0\0\0")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(1), sources.LABELS_MAGIC))
    with pytest.raises(SystemExit, match="data error: .*train-images-idx3-ubyte: wrong magic"):
        main(["train", "--data", str(tmp_path), "--models-dir", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("digits_given", "copies"), [(4_000, 2), (8_000, 2), (12_000, 1), (24_000, 0)])
def test_fewer_distorted_copies_as_the_data_grows(digits_given: int, copies: int) -> None:
    from ml.train import DEFAULT_AUGMENT, MAX_AUGMENTED_ROWS, MAX_FIT_DIGITS, plan_fit

    y = np.arange(digits_given) % 10
    rows, augment = plan_fit(y, DEFAULT_AUGMENT, MAX_AUGMENTED_ROWS, MAX_FIT_DIGITS)
    assert len(rows) == digits_given and augment["copies"] == copies


def test_the_kernel_cap_fits_a_stratified_subsample() -> None:
    from ml.train import DEFAULT_AUGMENT, plan_fit

    y = np.r_[np.zeros(5_000, int), np.ones(15_000, int)]
    rows, augment = plan_fit(y, DEFAULT_AUGMENT, max_rows=24_000, max_digits=8_000)
    assert len(rows) == 8_000 and augment["copies"] == 2
    assert np.bincount(y[rows]).tolist() == [2_000, 6_000]  # the classes' shares kept
    again, _ = plan_fit(y, DEFAULT_AUGMENT, max_rows=24_000, max_digits=8_000)
    np.testing.assert_array_equal(rows, again)  # seeded: the same digits every time
