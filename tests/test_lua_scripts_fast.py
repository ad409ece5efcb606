"""Every Lua script of core/lua/, run directly on the fast tier's real Redis: its keys and its reply,
edge cases included (the job gone, a redelivery, a closed job). The loader (core/scripts.py) and
the scripts' shape (named KEYS/ARGV locals, a header saying what they return) are checked too.

The modules' own tests run the same scripts through their Python callers (test_record_fast.py,
test_chunk_start_fast.py, ...); these pin what each script does with its keys, whoever calls it.
"""

import json
import re
from typing import Any

import pytest
import redis

from core import job_keys, jobs, kept_uploads, metrics, scripts

LUA_FILES = sorted(scripts.LUA_DIR.glob("*.lua"))
# The scripts with `${NAME}` placeholders, and the values their callers fill them with.
VALUES: dict[str, dict[str, object]] = {
    "jobs_record": {
        "ANSWER_MAX_ITEMS": jobs.ANSWER_MAX_ITEMS,
        "KEPT_EXTRA_SECONDS": kept_uploads.KEPT_EXTRA_SECONDS,
        **metrics.LUA_VALUES,
    },
}
NOW = 1_700_000_000.0


@pytest.fixture
def r(redis_client: redis.Redis) -> redis.Redis:
    redis_client.flushall()
    return redis_client


def run(client: redis.Redis, name: str, keys: list[str], args: list[Any]) -> Any:
    return scripts.register(client, name, **VALUES.get(name, {}))(keys=keys, args=args)


def run_json(client: redis.Redis, name: str, keys: list[str], args: list[Any]) -> Any:
    return json.loads(run(client, name, keys, args))


# The loader, and the scripts' shape.


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda p: p.stem)
def test_each_script_loads_on_redis_and_says_what_its_keys_args_and_reply_are(r: redis.Redis, path) -> None:
    source = scripts.source(path.stem, **VALUES.get(path.stem, {}))
    assert r.script_load(source)  # compiles: a syntax error would raise here
    header = path.read_text().split("\n\n")[0]
    for part in ("-- KEYS:", "-- ARGV:", "-- Returns"):
        assert part in header, f"{path.name}: its header comment has no {part!r}"
    # Every KEYS[n]/ARGV[n] is named once, in a local at the top; the rest of the script uses the names.
    for line in path.read_text().splitlines():
        if re.search(r"(KEYS|ARGV)\[\d+\]", line):
            assert line.startswith("local "), (
                f"{path.name}: {line!r} indexes KEYS/ARGV outside the top locals"
            )


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda p: p.stem)
def test_each_script_is_run_by_the_module_it_is_named_after(path) -> None:
    """`<module>_<name>.lua` (core/scripts.py): some core module registers it by that name."""
    registered = {
        m for p in scripts.LUA_DIR.parent.glob("*.py") for m in re.findall(r'"([a-z_]+)"', p.read_text())
    }
    assert path.stem in registered


def test_shared_code_is_included_once_per_script() -> None:
    record = scripts.source("jobs_record", **VALUES["jobs_record"])
    finish = scripts.source("jobs_finish")
    for function in ("local function observe", "local function close_job", "local function give_back"):
        assert record.count(function) == 1
    for function in ("local function close_job", "local function give_back", "local function is_open"):
        assert finish.count(function) == 1
    assert "${" not in record and str(jobs.ANSWER_MAX_ITEMS) in record


def test_a_placeholder_without_its_value_or_a_value_without_its_placeholder_is_refused() -> None:
    with pytest.raises(ValueError, match="placeholders"):
        scripts.source("jobs_record")
    with pytest.raises(ValueError, match="placeholders"):
        scripts.source("jobs_finish", ANSWER_MAX_ITEMS=1)


# core/jobs.py, core/sweep_state.py, core/idempotency.py, core/webhook_state.py.


def _job(r: redis.Redis, job_id: str = "j1", total: int = 2, **fields: Any) -> str:
    key = job_keys.job(job_id)
    r.hset(
        key,
        mapping={"status": "queued", "created_at": NOW - 5, "total": total, "done": 0, "failed": 0, **fields},
    )
    r.expire(key, 3600)
    r.zadd(job_keys.ACTIVE, {job_id: NOW - 5})
    return key


QUEUED, OUTSTANDING = "digitq:quota:queued:t", "digitq:quota:outstanding"
FLEET = "digitq:model:current"
INFLIGHT_INTERACTIVE = "digitq:fair:inflight:interactive"


def _record(r: redis.Redis, triples: list[Any], job_id: str = "j1", **options: Any) -> Any:
    keys = [job_keys.job(job_id), job_keys.results(job_id), QUEUED, OUTSTANDING]
    keys += [job_keys.ACTIVE, job_keys.CLOSED_CHANNEL, metrics.KEY, FLEET, INFLIGHT_INTERACTIVE]
    keys.append(kept_uploads.KEPT)
    return run_json(r, "jobs_record", keys, [repr(NOW), job_id, json.dumps(options), *triples])


def test_record_stores_counts_gives_back_and_closes_with_the_last_item(r: redis.Redis) -> None:
    key = _job(r, lane="bulk")
    r.set(QUEUED, 2, ex=60)
    r.hset(OUTSTANDING, "bulk", 2)
    r.expire(OUTSTANDING, 60)
    first = _record(r, [0, "[1,0.9,false,null]", 0], seconds=0.02, items=1)
    assert first == {"added": 1, "failed": 0, "closed": False, "status": "queued", "created_at": str(NOW - 5)}
    assert (r.get(QUEUED), r.hget(OUTSTANDING, "bulk"), r.hget(key, "done")) == (b"1", b"1", b"1")
    last = _record(r, [1, '[null,null,false,"bad"]', 1])
    assert (last["added"], last["failed"], last["closed"], last["status"]) == (1, 1, True, "succeeded")
    assert r.hget(key, "finished_at") == repr(NOW).encode()
    assert (r.get(QUEUED), r.hget(OUTSTANDING, "bulk")) == (b"0", b"0")
    assert r.zscore(job_keys.ACTIVE, "j1") is None
    assert 0 < r.pttl(job_keys.results("j1")) <= 3600_000  # dies with its job
    figures = {k.decode(): v for k, v in r.hgetall(metrics.KEY).items()}
    assert figures["items_processed"] == b"2" and figures["items_failed"] == b"1"
    assert figures["jobs_finished:succeeded"] == b"1" and figures["job_seconds:count"] == b"1"
    assert figures["chunk_seconds:count"] == b"1"


def test_record_of_a_redelivered_chunk_adds_and_gives_back_nothing(r: redis.Redis) -> None:
    _job(r, lane="bulk")
    r.set(QUEUED, 5, ex=60)
    _record(r, [0, "[1,0.9,false,null]", 0])
    again = _record(r, [0, "[7,0.1,false,null]", 0])
    assert (again["added"], again["closed"], again["status"]) == (0, False, "queued")
    assert r.hget(job_keys.results("j1"), "0") == b"[1,0.9,false,null]"
    assert r.get(QUEUED) == b"4"


def test_record_on_a_closed_job_stores_late_results_but_gives_nothing_back_nor_closes_again(
    r: redis.Redis,
) -> None:
    key = _job(r, status="cancelled", lane="bulk")
    r.set(QUEUED, 3, ex=60)
    late = _record(r, [0, "[1,0.9,false,null]", 0])
    assert (late["added"], late["closed"], late["status"]) == (1, False, "cancelled")
    assert r.get(QUEUED) == b"3" and r.hget(key, "status") == b"cancelled"
    assert r.hget(metrics.KEY, "jobs_finished:cancelled") is None


def test_record_never_recreates_a_quota_count_that_expired(r: redis.Redis) -> None:
    _job(r, total=1, lane="bulk")
    assert _record(r, [0, "[1,0.9,false,null]", 0])["closed"]
    assert not r.exists(QUEUED) and not r.exists(OUTSTANDING)


def test_record_of_a_gone_job_writes_nothing(r: redis.Redis) -> None:
    assert _record(r, [0, "[1,0.9,false,null]", 0], job_id="gone") == {"gone": True}
    assert r.keys("*") == []


def test_a_one_trip_record_starts_the_job_or_names_the_fleets_other_version(r: redis.Redis) -> None:
    key = _job(r, total=1)
    r.set(FLEET, "v2")
    assert _record(r, [0, "[1,0.9,false,null]", 0], start=NOW - 1, model="v1", follow=True) == {"moved": "v2"}
    assert r.hget(key, "status") == b"queued" and not r.exists(job_keys.results("j1"))
    started = _record(r, [0, "[1,0.9,false,null]", 0], start=NOW - 1, model="v2", follow=True)
    assert started["closed"] and r.hget(key, "model_version") == b"v2"
    assert float(r.hget(key, "started_at") or 0) == NOW - 1


def test_a_one_trip_record_of_a_cancelled_job_writes_nothing(r: redis.Redis) -> None:
    key = _job(r, total=1, status="cancelled")
    reply = _record(r, [0, "[1,0.9,false,null]", 0], start=NOW, model="v1")
    assert (reply["added"], reply["closed"], reply["status"]) == (0, False, "cancelled")
    assert not r.exists(job_keys.results("j1")) and r.hget(key, "model_version") is None


def test_record_forgets_its_chunk_in_flight_unless_the_fleet_moved(r: redis.Redis) -> None:
    _job(r, total=1)
    r.set(FLEET, "v2")
    r.hset("digitq:fair:chunks:j1", mapping={"0": "c0"})
    r.zadd(INFLIGHT_INTERACTIVE, {"j1:0": NOW})
    forget = {"forget": "j1:0", "prefix": "digitq:fair:"}
    moved = _record(r, [0, "[1,0.9,false,null]", 0], start=NOW, model="v1", follow=True, **forget)
    assert moved == {"moved": "v2"} and r.zcard(INFLIGHT_INTERACTIVE) == 1  # recorded later: still carried
    assert _record(r, [0, "[1,0.9,false,null]", 0], start=NOW, model="v2", follow=True, **forget)["closed"]
    assert r.zcard(INFLIGHT_INTERACTIVE) == 0 and not r.exists("digitq:fair:chunks:j1")


def test_record_of_a_gone_job_still_forgets_its_chunk(r: redis.Redis) -> None:
    r.zadd(INFLIGHT_INTERACTIVE, {"gone:0": NOW})
    reply = _record(r, [0, "[1,0.9,false,null]", 0], job_id="gone", forget="gone:0", prefix="digitq:fair:")
    assert reply == {"gone": True} and r.zcard(INFLIGHT_INTERACTIVE) == 0


def test_record_keeps_the_upload_from_the_close_only(r: redis.Redis) -> None:
    _job(r, total=2)
    _record(r, [0, "[1,0.9,false,null]", 0], keep=60)
    assert not r.exists(kept_uploads.KEPT)  # not closed yet
    _record(r, [1, "[1,0.9,false,null]", 0], keep=60)
    assert r.zscore(kept_uploads.KEPT, "j1") == NOW + 60
    assert 60 < r.ttl(kept_uploads.KEPT) <= 60 + kept_uploads.KEPT_EXTRA_SECONDS


def _start(r: redis.Redis, indices: list[int], version: str = "v1", delivery: str = "0:0", **kw: Any) -> Any:
    keys = [job_keys.job("j1"), job_keys.results("j1"), job_keys.deliveries("j1"), FLEET]
    args = [NOW, version, delivery, 3600, int(kw.get("follow", False)), kw.get("uncounted", 0), *indices]
    return run_json(r, "jobs_start_chunk", keys, args)


def test_start_chunk_pins_the_version_marks_running_and_counts_the_delivery(r: redis.Redis) -> None:
    key = _job(r, webhook_url="https://example.org")
    r.hset(job_keys.results("j1"), "0", "[1,0.9,false,null]")
    first = _start(r, [0, 1], uncounted=1)
    assert first == {
        "status": "running",
        "model_version": "v1",
        "deliveries": 2,
        "has_webhook": True,
        "todo": [1],
    }
    assert (r.hget(key, "status"), r.hget(key, "started_at")) == (b"running", repr(NOW).encode())
    again = _start(r, [0, 1], version="v2")  # a redelivery: the first version stays
    assert (again["model_version"], again["deliveries"]) == ("v1", 3)
    assert 0 < r.ttl(job_keys.deliveries("j1")) <= 3600


def test_start_chunk_with_nothing_to_do_counts_nothing(r: redis.Redis) -> None:
    key = _job(r)
    r.hset(job_keys.results("j1"), mapping={"0": "x", "1": "y"})
    assert _start(r, [0, 1]) == {"status": "queued", "deliveries": 0, "has_webhook": False}
    assert not r.exists(job_keys.deliveries("j1")) and r.hget(key, "status") == b"queued"


def test_start_chunk_of_a_gone_closed_or_moved_job(r: redis.Redis) -> None:
    assert _start(r, [0]) == {}
    _job(r, status="succeeded")
    assert _start(r, [0]) == {"status": "succeeded"}
    r.hset(job_keys.job("j1"), "status", "queued")
    r.set(FLEET, "v2")
    assert _start(r, [0], follow=True) == {"status": "queued", "fleet_version": "v2"}
    assert not r.exists(job_keys.deliveries("j1")) and r.hget(job_keys.job("j1"), "model_version") is None


def _finish(r: redis.Redis, error: str = "") -> Any:
    keys = [job_keys.job("j1"), QUEUED, OUTSTANDING, job_keys.ACTIVE, job_keys.CLOSED_CHANNEL, metrics.KEY]
    return run(r, "jobs_finish", keys, [NOW, "cancelled", error, "j1"])


def test_finish_closes_an_open_job_once_and_gives_back_what_it_had_not_done(r: redis.Redis) -> None:
    key = _job(r, total=5, done=2, lane="interactive")
    r.set(QUEUED, 4, ex=60)
    r.hset(OUTSTANDING, "interactive", 1)
    r.expire(OUTSTANDING, 60)
    assert _finish(r, "stopped") == 1
    assert (r.hget(key, "status"), r.hget(key, "error")) == (b"cancelled", b"stopped")
    assert r.get(QUEUED) == b"1" and r.hget(OUTSTANDING, "interactive") == b"0"  # never below zero
    assert r.zscore(job_keys.ACTIVE, "j1") is None and r.hget(metrics.KEY, "jobs_finished:cancelled") == b"1"
    assert _finish(r) == 0 and r.get(QUEUED) == b"1"  # closed already: nothing again
    r.delete(key)
    assert _finish(r) == 0 and not r.exists(key)


def test_set_if_exists_never_recreates_a_gone_job(r: redis.Redis) -> None:
    key = job_keys.job("j1")
    assert run(r, "jobs_set_if_exists", [key], ["error", "x"]) == -1 and not r.exists(key)
    _job(r)
    assert run(r, "jobs_set_if_exists", [key], ["error", "x"]) == 0
    assert run(r, "jobs_set_if_exists", [key], ["swept_at", "1", "sweeps"]) == 1
    assert run(r, "jobs_set_if_exists", [key], ["swept_at", "2", "sweeps"]) == 2
    assert r.hget(key, "error") == b"x" and r.ttl(key) > 0


def test_idempotency_claim_reserves_once_then_names_the_job(r: redis.Redis) -> None:
    key = job_keys.idempotency("c")
    assert run(r, "idempotency_claim", [key], ["job-a", 300]) is None
    assert run(r, "idempotency_claim", [key], ["job-b", 300]) == b"job-a"
    assert 0 < r.ttl(key) <= 300


def test_webhook_attempt_is_recorded_on_its_job_only_while_it_exists(r: redis.Redis) -> None:
    key = job_keys.job("j1")
    assert run(r, "webhook_state_attempted", [key], [500, "boom", 12.5, 0, 0]) == 0 and not r.exists(key)
    _job(r)
    assert run(r, "webhook_state_attempted", [key], [410, "gone", "", 0, 1]) == 1
    fields = {k.decode(): v.decode() for k, v in r.hgetall(key).items() if k.startswith(b"webhook_")}
    assert fields == {
        "webhook_attempts": "1",
        "webhook_last_status": "410",
        "webhook_last_error": "gone",
        "webhook_next_at": "",
        "webhook_gone": "1",
    }


# core/quotas.py.

BUCKET, WAITING = "digitq:quota:bucket:t", "digitq:quota:waiting"


def _admit(
    r: redis.Redis, images: int, tenant: str = "t", limit: int = 100, rate: float = 10.0, burst: float = 20
) -> Any:
    keys = [f"digitq:quota:bucket:{tenant}", WAITING, f"digitq:quota:queued:{tenant}", OUTSTANDING]
    args = [NOW, tenant, "digitq:quota:queued:", rate, burst, images, limit, 600, 3600, "bulk"]
    return run_json(r, "quotas_admit", keys, args)


def test_admit_reserves_all_or_nothing(r: redis.Redis) -> None:
    assert _admit(r, 0) == {"verdict": "ok"} and not r.exists(QUEUED)  # a check: nothing reserved
    assert _admit(r, 60) == {"verdict": "ok"}
    assert (r.get(QUEUED), r.hget(OUTSTANDING, "bulk"), r.zscore(WAITING, "t")) == (b"60", b"60", NOW)
    assert all(0 < r.ttl(k) <= 600 for k in (QUEUED, OUTSTANDING, WAITING)) and 0 < r.ttl(BUCKET) <= 3600
    assert _admit(r, 41) == {"verdict": "queued", "queued": 60}
    assert r.get(QUEUED) == b"60"


def test_admit_refuses_for_the_rate_only_while_another_tenant_waits(r: redis.Redis) -> None:
    assert _admit(r, 20, tenant="other")["verdict"] == "ok"
    assert _admit(r, 20)["verdict"] == "ok"  # a full bucket: its burst
    refused = _admit(r, 10)
    assert refused["verdict"] == "rate" and refused["retry_after"] == pytest.approx(10 / (10 / 2))


def test_a_full_bucket_stays_full_when_the_fleets_rate_grows(r: redis.Redis) -> None:
    """The check before the body fills a new bucket at the burst of the moment; the fleet's
    measured rate may grow before the submission: still full, not a refusal for the difference."""
    assert _admit(r, 5, tenant="other")["verdict"] == "ok"  # another tenant waits: the rate applies
    assert _admit(r, 0, rate=10, burst=20)["verdict"] == "ok"  # full at 20
    assert _admit(r, 200, rate=100, burst=200, limit=1000)["verdict"] == "ok"  # full at 200
    assert float(r.hget(BUCKET, "tokens") or -1) == 0  # and emptied by it
    assert _admit(r, 0, rate=10, burst=20)["verdict"] == "rate"  # empty stays empty as it shrinks


def test_refused_counts_in_a_window_started_by_the_first(r: redis.Redis) -> None:
    key = "digitq:quota:refused:t"
    assert [run(r, "quotas_refused", [key], [60]) for _ in range(3)] == [1, 2, 3]
    assert 0 < r.ttl(key) <= 60


def test_release_never_goes_below_zero_nor_keeps_a_key_at_zero(r: redis.Redis) -> None:
    r.set(QUEUED, 5, ex=60)
    r.hset(OUTSTANDING, "bulk", 5)
    assert run(r, "quotas_release", [QUEUED, OUTSTANDING], [2, "bulk"]) == 3
    assert 0 < r.ttl(QUEUED) <= 60 and r.hget(OUTSTANDING, "bulk") == b"3"
    assert run(r, "quotas_release", [QUEUED, OUTSTANDING], [9, "bulk"]) == -6
    assert not r.exists(QUEUED) and r.hget(OUTSTANDING, "bulk") is None


# core/dispatch.py.

FAIR = "digitq:fair:"
TENANTS, INFLIGHT = FAIR + "tenants", FAIR + "inflight"


def _waiting_chunks(r: redis.Redis, tenant: str, job_id: str, firsts: list[int]) -> None:
    r.hset(FAIR + "chunks:" + job_id, mapping={str(i): f"chunk {job_id}:{i}" for i in firsts})
    r.rpush(FAIR + "queue:" + job_id, *firsts)
    r.rpush(FAIR + "tenant:" + tenant, job_id)
    run(r, "dispatch_join", [TENANTS], [tenant, 600])


def test_join_adds_a_tenant_to_the_ring_once(r: redis.Redis) -> None:
    for tenant in ("a", "b", "a"):
        run(r, "dispatch_join", [TENANTS], [tenant, 600])
    assert r.lrange(TENANTS, 0, -1) == [b"a", b"b"] and 0 < r.ttl(TENANTS) <= 600


def test_refill_shares_the_window_among_tenants_and_frees_a_finished_chunks_slot(r: redis.Redis) -> None:
    _waiting_chunks(r, "a", "ja", [0, 4, 8])
    _waiting_chunks(r, "b", "jb", [0])
    sent = run(r, "dispatch_refill", [TENANTS, INFLIGHT], [2, NOW, 600, FAIR])
    assert sent == [b"chunk ja:0", b"chunk jb:0"] and r.zcard(INFLIGHT) == 2
    assert run(r, "dispatch_refill", [TENANTS, INFLIGHT], [2, NOW, 600, FAIR]) == []  # the window is full
    again = run(r, "dispatch_refill", [TENANTS, INFLIGHT], [2, NOW, 600, FAIR, "jb:0"])
    assert again == [b"chunk ja:4"] and r.hget(FAIR + "chunks:jb", "0") is None
    assert r.lrange(TENANTS, 0, -1) == [b"a"]  # b has nothing waiting: out of the ring


def test_stale_claims_old_chunks_and_drops_those_of_gone_jobs(r: redis.Redis) -> None:
    r.hset(FAIR + "chunks:j", "0", "chunk j:0")
    r.zadd(INFLIGHT, {"j:0": NOW - 100, "gone:0": NOW - 100, "j:4": NOW})
    assert run(r, "dispatch_stale", [INFLIGHT], [NOW - 50, NOW, FAIR]) == [b"chunk j:0"]
    assert r.zrange(INFLIGHT, 0, -1, withscores=True) == [(b"j:0", NOW), (b"j:4", NOW)]


def test_done_forgets_a_finished_chunk_once(r: redis.Redis) -> None:
    r.hset(FAIR + "chunks:j", mapping={"0": "c0", "4": "c4"})
    r.zadd(INFLIGHT, {"j:0": NOW})
    run(r, "dispatch_done", [INFLIGHT], ["j:0", FAIR])
    run(r, "dispatch_done", [INFLIGHT], ["j:4", FAIR])  # not in flight: its waiting chunk stays
    assert r.zcard(INFLIGHT) == 0 and r.hkeys(FAIR + "chunks:j") == [b"4"]


# core/webhooks.py, core/webhook_receivers.py, core/webhook_secrets.py.

DUE, MSG = "digitq:webhooks:due", "digitq:webhook:msg:e1"


def test_enqueue_queues_an_event_once(r: redis.Redis) -> None:
    args = ["e1", "j1", "job.succeeded", NOW, 600, 700]
    assert run(r, "webhooks_enqueue", [MSG, DUE], args) == 1
    assert run(r, "webhooks_enqueue", [MSG, DUE], [*args[:3], NOW + 1, 600, 700]) == 0
    assert r.zscore(DUE, "e1") == NOW and r.hget(MSG, "attempts") == b"0"
    assert 0 < r.ttl(MSG) <= 600 and 0 < r.ttl(DUE) <= 700


def test_claim_pushes_due_events_to_their_leases_end(r: redis.Redis) -> None:
    r.zadd(DUE, {"e1": NOW - 1, "e2": NOW - 1, "later": NOW + 100})
    assert run(r, "webhooks_claim", [DUE], [NOW, NOW + 30, 1]) == [b"e1"]
    assert r.zscore(DUE, "e1") == NOW + 30 and r.zscore(DUE, "e2") == NOW - 1


def test_update_keeps_the_body_and_reschedules_only_an_event_that_exists(r: redis.Redis) -> None:
    r.hset(MSG, "attempts", 0)
    r.zadd(DUE, {"e1": NOW})
    assert run(r, "webhooks_update", [MSG, DUE], ["e1", "{}", NOW + 60, 700]) == 1
    assert (r.hget(MSG, "body"), r.hget(MSG, "attempts"), r.zscore(DUE, "e1")) == (b"{}", b"1", NOW + 60)
    r.delete(MSG)
    assert run(r, "webhooks_update", [MSG, DUE], ["e1", "", NOW + 90, 700]) == 0
    assert r.zscore(DUE, "e1") is None and not r.exists(MSG)


def test_renew_extends_only_the_leases_still_held(r: redis.Redis) -> None:
    r.zadd(DUE, {"held": NOW + 30, "settled": NOW + 300})
    renewed = run(
        r, "webhooks_renew", [DUE], [repr(NOW + 60), "held", repr(NOW + 30), "settled", repr(NOW + 30)]
    )
    assert (
        renewed == [b"held"] and r.zscore(DUE, "held") == NOW + 60 and r.zscore(DUE, "settled") == NOW + 300
    )


def test_receiver_slots_stop_at_the_cap_and_renew_only_a_held_slot(r: redis.Redis) -> None:
    key = "digitq:webhook:receiver:x"
    assert run(r, "webhook_receivers_take", [key], [NOW, NOW + 30, "e1", 1, 60_000]) == 1
    assert run(r, "webhook_receivers_take", [key], [NOW, NOW + 30, "e2", 1, 60_000]) == 0
    assert run(r, "webhook_receivers_take", [key], [NOW, NOW + 40, "e1", 1, 60_000]) == 1  # its own
    assert run(r, "webhook_receivers_take", [key], [NOW + 50, NOW + 80, "e2", 1, 60_000]) == 1  # e1 lapsed
    run(r, "webhook_receivers_renew", [key], [NOW + 99, "e1", 60_000])  # not held: not taken back
    run(r, "webhook_receivers_renew", [key], [NOW + 99, "e2", 60_000])
    assert r.zrange(key, 0, -1, withscores=True) == [(b"e2", NOW + 99)] and 0 < r.pttl(key) <= 60_000


def test_rotate_keeps_the_old_secret_for_its_grace(r: redis.Redis) -> None:
    key = "digitq:webhook:secret:o"
    run(r, "webhook_secrets_rotate", [key], ["first", NOW])
    assert r.hgetall(key) == {b"current": b"first"}
    run(r, "webhook_secrets_rotate", [key], ["second", NOW + 60])
    assert r.hgetall(key) == {
        b"current": b"second",
        b"previous": b"first",
        b"previous_until": repr(NOW + 60).encode(),
    }


# core/fleet.py, core/labels.py, core/labelled.py.


def test_release_deletes_only_this_reloads_candidate(r: redis.Redis) -> None:
    key = "digitq:model:candidate"
    r.set(key, "another")
    assert run(r, "fleet_release", [key], ["mine"]) == 0 and r.get(key) == b"another"
    r.set(key, "mine")
    assert run(r, "fleet_release", [key], ["mine"]) == 1 and not r.exists(key)


def test_labels_are_set_and_cleared_with_their_job_and_counted(r: redis.Redis) -> None:
    keys = [job_keys.job("j1"), job_keys.labels("j1"), metrics.KEY]
    assert run_json(r, "labels_set", keys, [0, 7]) == {"gone": True} and not r.exists(keys[1])
    _job(r)
    assert run_json(r, "labels_set", keys, [0, 7, 1, 3]) == {"set": 2, "cleared": 0}
    assert run_json(r, "labels_set", keys, [0, "", 2, ""]) == {"set": 0, "cleared": 1}
    assert r.hgetall(keys[1]) == {b"1": b"3"} and 0 < r.ttl(keys[1]) <= 3600
    assert (r.hget(metrics.KEY, "labels_set"), r.hget(metrics.KEY, "labels_cleared")) == (b"2", b"1")


def test_labelled_admit_adds_all_names_or_none_within_the_limit(r: redis.Redis) -> None:
    key = "digitq:labelled"
    assert run(r, "labelled_admit", [key], [3, "k", "a", "b"]) == 2
    assert run(r, "labelled_admit", [key], [3, "k", "a", "c"]) == 1  # `a` is there already
    assert run(r, "labelled_admit", [key], [3, "k", "d"]) == -1  # full: room for 0
    assert sorted(r.hkeys(key)) == [b"a", b"b", b"c"]
