"""Review and correct (issue 20) with real workers: a finished job's images, labels on real
predictions through the client and the `digitq` command, and what the labelled-data store keeps."""

import csv
import io
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from core.feedback import export
from devstack.stack import Stack
from digitq import Client
from tests.helpers import make_zip, png, wait_for_job, wait_until
from tests.test_client import digitq

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)


def test_a_small_uploads_images_are_kept_after_its_job(stack: Stack, api: httpx.Client, digits) -> None:
    X, y = digits
    # <= 64 KiB: the upload travels inside its chunk's message; the worker keeps it for review.
    archive = make_zip({f"d/{i}.png": png(X[i * 400]) for i in range(5)})
    job = wait_for_job(api, api.post("/jobs", files={"files": ("small.zip", archive)}).json()["id"])
    assert job["status"] == "succeeded"
    # A small job's one chunk stores its upload just after it answered (worker/tasks.py).
    url = f"/jobs/{job['id']}/items/3/image?view=model"
    seen = wait_until(lambda: (r := api.get(url)).status_code == 200 and r, what="the image to be stored")
    assert Image.open(io.BytesIO(seen.content)).size == (28, 28)
    with Client(stack.api_url) as dq:
        applied = dq.label(job["id"], {3: int(y[1200]), 4: 0})
        assert applied["set"] == 2
        items = list(dq.results(job["id"]))
        assert [i.label for i in items] == [None, None, None, int(y[1200]), 0]
    record = json.loads((stack.settings.data_dir / "labelled" / "open" / f"{job['id']}-4.json").read_bytes())
    predicted = items[4]
    assert record["digit"] == 0 and record["model_version"] == job["model_version"]
    assert record["predicted"] == predicted.digit and record["confidence"] == predicted.confidence


def test_labels_from_a_csv_with_the_command(stack: Stack, api: httpx.Client, tmp_path: Path, digits) -> None:
    X, y = digits
    entries = {f"forms/{i}.png": png(255 - X[i * 250]) for i in range(8)}
    archive = make_zip({**entries, ".pad": os.urandom(70_000)})  # stored by the API, deleted by nobody yet
    job_id = api.post("/jobs", files={"files": ("forms.zip", archive)}).json()["id"]
    assert wait_for_job(api, job_id)["status"] == "succeeded"
    assert api.get(f"/jobs/{job_id}/items/7/image").status_code == 200  # kept after the job ended
    labels = tmp_path / "labels.csv"
    labels.write_text("name,digit\nforms/1.png,1\nforms/2.png,2\n")
    done = digitq(stack, "label", job_id, "--from", str(labels))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["set"] == 2
    lines = [json.loads(line) for line in digitq(stack, "results", job_id).stdout.splitlines()]
    assert [line["label"] for line in lines] == [None, 1, 2, None, None, None, None, None]
    rows = list(csv.DictReader(io.StringIO(api.get(f"/jobs/{job_id}/results?format=csv").text)))
    assert [r["label"] for r in rows[:3]] == ["", "1", "2"] and all(r["digit"] for r in rows)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name,digit\nforms/3.png,3\nforms/99.png,1\n")
    refused = digitq(stack, "label", job_id, "--from", str(wrong))
    assert refused.returncode != 0 and "forms/99.png" not in refused.stdout and "422" in refused.stderr
    out = tmp_path / "export"
    counts = export(out, stack.settings)
    assert counts.get(1, 0) >= 1 and counts.get(2, 0) >= 1
    assert (out / "2" / f"{job_id}-2-open.png").exists()
    assert np.asarray(Image.open(out / "2" / f"{job_id}-2-open.png")).shape == (28, 28)
