"""Review and correct (issue 20), fast tier: item images, labels and the labelled-data store,
through the real API over a real Redis, no workers (uploads over 64 KiB are stored by the API)."""

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from core import kept_uploads
from core.blobs import LocalBlobStore
from core.feedback import export
from core.jobs import PREFIX, ItemResult, JobStore
from core.labels import key as labels_key
from tests.helpers import make_zip, png, wait_until
from worker.housekeeping import sweep_uploads

KEY, OTHER = "review-key-1", "review-key-2"
PAD = {".padding": os.urandom(70_000)}  # a hidden entry (not an item): the upload is stored, not inline


def digit(value: int, side: int = 28) -> np.ndarray:
    """A crude digit-like stroke (enough ink to preprocess)."""
    image = np.zeros((side, side), np.uint8)
    image[side // 5 : side - side // 5, side // 2 - side // 10 - value % 3 : side // 2 + side // 10] = 255
    return image


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


ENTRIES = {
    "forms/0.png": png(digit(1)),
    "forms/1.png": png(digit(7, 900)),
    "forms/bomb.png": bomb_png(50_000, 50_000),
    "forms/bad.png": b"\x89PNG\r\n\x1a\nnot really",
    "=sum.png": png(digit(4)),
}


def submit(client: TestClient, entries: dict[str, bytes] = ENTRIES, **headers: str) -> str:
    response = client.post(
        "/jobs", files=[("files", ("forms.zip", make_zip({**entries, **PAD})))], headers=headers
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


@pytest.fixture
def keyed(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(API_KEYS=f"{KEY},{OTHER}")


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def image(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"].startswith("private")
    return Image.open(io.BytesIO(response.content))


def test_a_zip_members_image_and_what_the_model_saw(keyed: TestClient) -> None:
    job = submit(keyed, **as_key(KEY))
    big = image(keyed.get(f"/jobs/{job}/items/1/image", headers=as_key(KEY)))
    assert max(big.size) == 256  # 900 px uploaded, scaled down
    seen = image(keyed.get(f"/jobs/{job}/items/1/image?view=model", headers=as_key(KEY)))
    assert seen.size == (28, 28) and np.asarray(seen).max() > 0
    assert image(keyed.get(f"/jobs/{job}/items/0/image", headers=as_key(KEY))).size == (28, 28)


def test_only_the_owner_sees_an_items_image(keyed: TestClient) -> None:
    job = submit(keyed, **as_key(KEY))
    other = keyed.get(f"/jobs/{job}/items/0/image", headers=as_key(OTHER))
    assert other.status_code == 404 and "there is no job" in other.json()["detail"]
    assert keyed.get(f"/jobs/{job}/items/0/image").status_code == 401
    assert keyed.get(f"/jobs/{job}/items/99/image", headers=as_key(KEY)).status_code == 404


def test_hostile_images_are_refused_as_classification_refuses_them(keyed: TestClient) -> None:
    job = submit(keyed, **as_key(KEY))
    bomb = keyed.get(f"/jobs/{job}/items/2/image", headers=as_key(KEY))
    assert bomb.status_code == 422 and "exceeds 40000000" in bomb.json()["detail"]
    bad = keyed.get(f"/jobs/{job}/items/3/image?view=model", headers=as_key(KEY))
    assert bad.status_code == 422 and "not a readable image" in bad.json()["detail"]


def test_an_oversized_entry_is_not_read(make_client: Callable[..., TestClient]) -> None:
    client = make_client(MAX_IMAGE_BYTES="100000")
    job = submit(client, {"a.png": png(digit(1)), "huge.bmp": b"BM" + os.urandom(150_000)})
    response = client.get(f"/jobs/{job}/items/1/image")
    assert response.status_code == 422 and "100000" in response.json()["detail"]


def test_an_expired_upload_is_a_404_that_says_so(app_client: TestClient) -> None:
    job = submit(app_client)
    assert app_client.delete(f"/jobs/{job}").status_code == 200  # cancelled: its upload is deleted
    response = app_client.get(f"/jobs/{job}/items/0/image")
    assert response.status_code == 404
    assert response.json()["title"] == "Upload expired" and "UPLOAD_KEEP_SECONDS" in response.json()["detail"]


def test_the_image_route_is_documented(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()["paths"]
    route = spec["/jobs/{job_id}/items/{index}/image"]["get"]
    assert "image/png" in route["responses"]["200"]["content"]
    assert (
        route["responses"]["404"]["content"]["application/problem+json"]["example"]["title"]
        == "Upload expired"
    )
    assert "example" in spec["/jobs/{job_id}/labels"]["post"]["requestBody"]["content"]["application/json"]


def labels_of(client: TestClient, job: str, **headers: str) -> list[int | None]:
    return [item["label"] for item in client.get(f"/jobs/{job}/results", headers=headers).json()["items"]]


def test_a_label_is_set_shown_in_every_format_and_cleared(app_client: TestClient, tmp_path: Path) -> None:
    job = submit(app_client)
    put = app_client.put(f"/jobs/{job}/items/1/label", json={"digit": 7})
    assert put.status_code == 200 and put.json()["label"] == 7
    assert labels_of(app_client, job) == [None, 7, None, None, None]
    rows = list(csv.DictReader(io.StringIO(app_client.get(f"/jobs/{job}/results?format=csv").text)))
    assert [r["label"] for r in rows] == ["", "7", "", "", ""]
    lines = app_client.get(f"/jobs/{job}/results?format=jsonl").text.splitlines()
    assert [json.loads(line)["label"] for line in lines] == [None, 7, None, None, None]
    store = LocalBlobStore(tmp_path / "labelled")
    assert list(store.keys("")) == [f"open/{job}-1.json"]
    assert app_client.put(f"/jobs/{job}/items/1/label", json={"digit": None}).json()["label"] is None
    assert labels_of(app_client, job) == [None] * 5
    assert list(store.keys("")) == []  # clearing the label removed its record
    assert 'digitq_labels_total{action="set"} 1.0' in app_client.get("/metrics").text
    assert 'digitq_labels_total{action="cleared"} 1.0' in app_client.get("/metrics").text


def test_only_the_owner_may_label(keyed: TestClient) -> None:
    job = submit(keyed, **as_key(KEY))
    assert (
        keyed.put(f"/jobs/{job}/items/0/label", json={"digit": 1}, headers=as_key(OTHER)).status_code == 404
    )
    batch = keyed.post(
        f"/jobs/{job}/labels", json={"labels": [{"index": 0, "digit": 1}]}, headers=as_key(OTHER)
    )
    assert batch.status_code == 404
    assert labels_of(keyed, job, **as_key(KEY)) == [None] * 5


def test_a_batch_with_offenders_applies_nothing(app_client: TestClient, redis_client: redis.Redis) -> None:
    job = submit(app_client)
    labels = [
        {"index": 0, "digit": 1},
        {"index": 9, "digit": 2},
        {"index": 1, "digit": 12},
    ]
    response = app_client.post(f"/jobs/{job}/labels", json={"labels": labels})
    assert response.status_code == 422, response.text
    assert [o.get("index") for o in response.json()["offenders"]] == [9, 1]
    assert "nothing was applied" in response.json()["detail"]
    unreadable = [labels[0], {"index": 3, "digit": 5}]  # not a readable image: nothing to keep
    response = app_client.post(f"/jobs/{job}/labels", json={"labels": unreadable})
    assert response.status_code == 422 and [o["index"] for o in response.json()["offenders"]] == [3]
    assert labels_of(app_client, job) == [None] * 5
    assert not redis_client.exists(labels_key(job))
    assert app_client.post(f"/jobs/{job}/labels", json={"labels": labels[:1]}).json()["set"] == 1


def test_a_csv_of_names_as_the_results_show_them(app_client: TestClient) -> None:
    job = submit(app_client)
    results_csv = app_client.get(f"/jobs/{job}/results?format=csv").text
    assert "'=sum" in results_csv  # the formula guard
    # '=sum.png as the results CSV shows it: the quote that keeps it from being a formula is no part of it.
    labels = "name,digit\nforms/0.png,1\nforms/1.png,7\n'=sum.png,4\n"
    response = app_client.post(f"/jobs/{job}/labels", files={"file": ("labels.csv", labels)})
    assert response.status_code == 200, response.text
    assert response.json()["set"] == 3 and labels_of(app_client, job) == [1, 7, None, None, 4]
    wrong = "name,digit\nforms/0.png,3\nnope.png,1\nforms/1.png,x\n"
    response = app_client.post(f"/jobs/{job}/labels", files={"file": ("labels.csv", wrong)})
    assert response.status_code == 422
    assert [(o["row"], o["name"]) for o in response.json()["offenders"]] == [
        (3, "nope.png"),
        (4, "forms/1.png"),
    ]
    assert labels_of(app_client, job) == [1, 7, None, None, 4]  # row 2 was not applied either
    no_header = app_client.post(f"/jobs/{job}/labels", files={"file": ("l.csv", "a,b\n1,2\n")})
    assert no_header.status_code == 422 and "name,digit" in no_header.json()["detail"]


def test_labels_outlive_the_job_in_the_store(
    app_client: TestClient, redis_client: redis.Redis, tmp_path: Path
) -> None:
    job = submit(app_client)
    app_client.post(
        f"/jobs/{job}/labels", json={"labels": [{"index": 0, "digit": 1}, {"index": 1, "digit": 7}]}
    )
    # Expires with the job: the job's TTL is read first, so the clock ticking between the two reads
    # can only make the labels' TTL smaller, never larger.
    job_ttl = redis_client.pttl(PREFIX + job)
    assert 0 < redis_client.pttl(labels_key(job)) <= job_ttl
    app_client.put(f"/jobs/{job}/items/1/label", json={"digit": 9})  # relabelled: replaces its record
    redis_client.delete(*redis_client.keys(PREFIX + job + "*"))  # what the job's expiry does
    assert app_client.get(f"/jobs/{job}").status_code == 404
    counts = export(tmp_path / "out", LocalBlobStore(tmp_path / "labelled"))
    assert counts == {1: 1, 9: 1}
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == [f"1/{job}-0-open.png", f"9/{job}-1-open.png"]
    record = json.loads((tmp_path / "labelled" / "open" / f"{job}-1.json").read_bytes())
    assert record["digit"] == 9 and record["key_id"] == "open" and record["predicted"] is None
    assert Image.open(tmp_path / "out" / "9" / f"{job}-1-open.png").size == (256, 256)  # the 900 px upload


def test_the_store_is_bounded_and_refuses_clearly(make_client: Callable[..., TestClient]) -> None:
    client = make_client(MAX_LABELLED_ITEMS="2")
    job = submit(client)
    assert client.post(f"/jobs/{job}/labels", json={"labels": [{"index": 0, "digit": 1}]}).status_code == 200
    assert (
        client.put(f"/jobs/{job}/items/0/label", json={"digit": 2}).status_code == 200
    )  # same item: no new record
    three = [{"index": 1, "digit": 7}, {"index": 4, "digit": 4}]
    full = client.post(f"/jobs/{job}/labels", json={"labels": three})
    assert full.status_code == 507 and "MAX_LABELLED_ITEMS" in full.json()["detail"]
    assert labels_of(client, job) == [2, None, None, None, None]
    assert client.put(f"/jobs/{job}/items/1/label", json={"digit": 7}).json()["label"] == 7


def test_a_key_deletes_its_labels_only(keyed: TestClient, tmp_path: Path) -> None:
    mine, theirs = submit(keyed, **as_key(KEY)), submit(keyed, **as_key(OTHER))
    keyed.put(f"/jobs/{mine}/items/0/label", json={"digit": 1}, headers=as_key(KEY))
    keyed.put(f"/jobs/{theirs}/items/0/label", json={"digit": 1}, headers=as_key(OTHER))
    store = LocalBlobStore(tmp_path / "labelled")
    assert len(list(store.keys(""))) == 2
    assert KEY not in "".join(store.keys(""))  # key ids, never the keys
    assert keyed.delete("/labels", headers=as_key(KEY)).json() == {"deleted": 1}
    assert [name.split("/")[1] for name in store.keys("")] == [f"{theirs}-0.json"]
    assert keyed.delete("/labels").status_code == 401


def test_a_finished_jobs_upload_is_kept_then_deleted(
    app_client: TestClient, redis_client: redis.Redis, tmp_path: Path
) -> None:
    job = submit(app_client)
    blobs, store = LocalBlobStore(tmp_path / "uploads"), JobStore(redis_client, 3600)
    store.record(job, [ItemResult(i, digit=1, confidence=0.9) for i in range(5)])  # as workers close it
    kept_uploads.release(blobs, redis_client, job, keep_seconds=3600)
    assert sweep_uploads(blobs, store) == []  # ended, but within its keep time
    assert app_client.get(f"/jobs/{job}/items/0/image").status_code == 200
    kept_uploads.release(blobs, redis_client, job, keep_seconds=1)
    wait_until(lambda: sweep_uploads(blobs, store), what="the upload's keep time to end")
    response = app_client.get(f"/jobs/{job}/items/0/image")
    assert response.status_code == 404 and response.json()["title"] == "Upload expired"
    assert redis_client.zscore(kept_uploads.KEPT, job) is None


def test_without_a_keep_time_the_upload_goes_as_the_job_ends(app_client: TestClient, tmp_path: Path) -> None:
    job = submit(app_client)
    blobs = LocalBlobStore(tmp_path / "uploads")
    kept_uploads.release(blobs, redis.Redis(), job, keep_seconds=0)  # Redis is not even asked
    assert not (tmp_path / "uploads" / job).exists()


def test_the_api_decodes_images_without_scikit_learn() -> None:
    """The API imports ml.preprocess and ml.views; ml/__init__.py must not pull in scikit-learn."""
    code = (
        "import sys, api.main; print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'joblib'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


def test_a_batch_is_bounded(app_client: TestClient) -> None:
    job = submit(app_client)
    many = {"labels": [{"index": 0, "digit": 1}] * 1001}
    response = app_client.post(f"/jobs/{job}/labels", json=many)
    assert response.status_code == 413 and "at most 1000" in response.json()["detail"]
    big_csv = "name,digit\n" + "forms/0.png,1\n" * 80_000  # over 1 MiB
    response = app_client.post(f"/jobs/{job}/labels", files={"file": ("l.csv", big_csv)})
    assert response.status_code == 413 and labels_of(app_client, job) == [None] * 5


def test_training_reads_back_what_people_labelled(make_client: Callable[..., TestClient], digits) -> None:
    """`python -m ml train --data feedback` (ml/sources.py) learns from the labels given through
    the API: the same digits, the people's digits (not the model's), through the real store."""
    from ml import sources

    client = make_client()
    X, y = digits
    job = submit(client, {f"form/{i}.png": png(X[i]) for i in range(4)})
    given = [(int(y[i]) + 1) % 10 for i in range(4)]  # what a person said, not what MNIST says
    labels = [{"index": i, "digit": digit} for i, digit in enumerate(given)]
    assert client.post(f"/jobs/{job}/labels", json={"labels": labels}).status_code == 200
    source = sources.load("feedback", export)  # DATA_DIR as the API's: make_client's environment
    assert source.kind == "feedback" and source.count == 4 and not source.skipped
    assert sorted(source.y.tolist()) == sorted(given)
