"""Every key digitq leaves in Redis expires or is a known bounded structure (issue 8, item 4).

Redis runs without `maxmemory` and keeps an append-only file: a key that neither expires nor is
bounded grows both forever. This runs real jobs end to end (with an Idempotency-Key, a cancel,
a scrape of /ready and /metrics) and then inspects every key in the database. (The bulk lane's
window keys, which only exist while a job is in flight, are checked in tests/test_fairness.py.)
"""

import fnmatch

import httpx
import pytest
import redis

from tests.helpers import make_zip, png, running_stack, wait_for_job

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

# Keys allowed to live without a TTL, each with why it is bounded. Anything else must expire.
BOUNDED = {
    "digitq.interactive": "the interactive lane: drained first; jobs of <= INTERACTIVE_MAX_ITEMS images",
    "digitq.bulk": "the bulk lane: at most BULK_IN_FLIGHT_CHUNKS chunks (core/dispatch.py's window)",
    "digitq:metrics": "one hash with a fixed set of fields (counters and histogram buckets)",
    "digitq:model:current": "one version name",
    "digitq:labelled": "the labelled-data store's index: <= MAX_LABELLED_ITEMS fields (core/labelled.py)",
    "unacked": "kombu: messages being worked on, at most one per pool process (prefetch 1)",
    "unacked_index": "kombu: the index of `unacked`, same size",
    "unacked_mutex": "kombu: a lock, short-lived",
    "_kombu.binding*": "kombu: exchange bindings, one set per queue, fixed",
    "digitq:webhook:secret:*": "one small hash per API key (keys come from API_KEYS only): its webhook "
    "signing secrets, which must not expire under its receivers (core/webhook_secrets.py)",
}


def _bounded(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in BOUNDED)


def test_every_key_expires_or_is_bounded(tmp_path, digits) -> None:
    with running_stack(tmp_path, WORKER_PROCESSES="1") as stack:
        with httpx.Client(base_url=stack.api_url, timeout=30) as api:
            archive = make_zip({f"d/{i}.png": png(digits[0][i]) for i in range(20)} | {"bad.png": b"nope"})
            files = [("files", ("a.zip", archive)), ("files", ("b.png", png(digits[0][30])))]
            first = api.post("/jobs", files=files, headers={"Idempotency-Key": "expiry-test"})
            assert first.status_code == 202, first.text
            job = wait_for_job(api, first.json()["id"])
            assert job["counts"] == {"total": 22, "done": 22, "failed": 1}
            labelled = api.put(f"/jobs/{job['id']}/items/0/label", json={"digit": 3})
            assert labelled.status_code == 200, labelled.text
            cancelled = api.post("/jobs", files=files[1:]).json()["id"]
            api.delete(f"/jobs/{cancelled}")
            wait_for_job(api, cancelled)
            # A refused upload is counted (api/gate.py): its counter must expire too.
            assert api.post("/jobs", files=[("files", ("x.txt", b"not an image"))]).status_code == 415
            assert api.get("/metrics").status_code == 200
            assert api.get("/ready").status_code == 200

        client = redis.Redis.from_url(stack.redis_url or "")
        keys = sorted(k.decode() for k in client.scan_iter(count=1000))
        assert f"digitq:job:{job['id']}:results" in keys  # the test saw what it is about
        assert f"digitq:job:{job['id']}:deliveries" in keys  # chunk starts (poison chunks)
        assert f"digitq:job:{job['id']}:labels" in keys  # people's labels (core/labels.py)
        assert "digitq:uploads:kept" in keys  # uploads kept for review (core/kept_uploads.py)
        assert "digitq:labelled" in keys
        assert "digitq:quota:queued:anonymous" in keys  # and the quotas (core/quotas.py)
        assert "digitq:quota:outstanding" in keys  # images outstanding per lane: expires like the quotas
        assert any(k.startswith("digitq:quota:refused:") for k in keys)
        assert any(k.startswith("digitq:quota:bucket:") for k in keys) and "digitq:quota:waiting" in keys
        forever = [k for k in keys if client.ttl(k) == -1 and not _bounded(k)]
        assert forever == [], f"keys without a TTL that are not known to be bounded: {forever}"
