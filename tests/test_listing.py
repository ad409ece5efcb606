"""Fast tier (real Redis, no workers): GET /jobs listing, metadata, JSONL and `status=` on results,
CSV formula injection."""

import csv
import io
import json
import time

import pytest
import redis
from fastapi.testclient import TestClient

from core import listing
from core.connections import get_job_store
from core.job_keys import PREFIX
from core.jobs import ItemResult
from tests.helpers import make_zip, png


@pytest.fixture
def one_png(digits) -> bytes:
    return png(digits[0][0])


def submit(client: TestClient, data: bytes, name: str = "a.png", **form: str) -> dict:
    response = client.post("/jobs", files=[("files", (name, data))], data=form)
    assert response.status_code == 202, response.text
    return response.json()


def list_all(client: TestClient, url: str, **kw) -> tuple[list[dict], int]:
    """Every job by following `next`; and how many pages that took."""
    jobs, pages = [], 0
    next_url: str | None = url
    while next_url:
        page = client.get(next_url, **kw).json()
        jobs += page["items"]
        next_url = page["next"]
        pages += 1
    return jobs, pages


def test_metadata_is_stored_and_echoed(app_client: TestClient, one_png: bytes) -> None:
    labels = {"batch": "2026-11-25", "customer": "acme", "note": "x" * 512}
    job = submit(app_client, one_png, metadata=json.dumps(labels))
    assert job["metadata"] == labels
    assert app_client.get(f"/jobs/{job['id']}").json()["metadata"] == labels
    assert app_client.get("/jobs").json()["items"][0]["metadata"] == labels
    plain = submit(app_client, one_png)
    assert plain["metadata"] == {} and plain["webhook"] is None


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "JSON object is needed, not list"),
        (json.dumps({f"k{i}": "v" for i in range(17)}), "17 keys; at most 16"),
        (json.dumps({"n": 3}), "values must be strings"),
        (json.dumps({"n": None}), "values must be strings"),
        (json.dumps({"n": "v" * 513}), "value of 513 characters"),
        (json.dumps({"k" * 513: "v"}), "key of 513 characters"),
    ],
)
def test_bad_metadata_is_a_422_that_says_why(app_client: TestClient, one_png: bytes, metadata, says) -> None:
    response = app_client.post("/jobs", files=[("files", ("a.png", one_png))], data={"metadata": metadata})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert says in response.json()["detail"]
    assert app_client.get("/jobs").json()["items"] == []  # nothing was created


def test_listing_pages_newest_first(app_client: TestClient, one_png: bytes) -> None:
    ids = [submit(app_client, one_png)["id"] for _ in range(25)]
    jobs, pages = list_all(app_client, "/jobs?limit=10")
    assert pages == 3
    assert [j["id"] for j in jobs] == ids[::-1]
    first = app_client.get("/jobs?limit=10").json()
    assert len(first["items"]) == 10 and first["next"] == f"/jobs?limit=10&after={ids[-10]}"
    # a job submitted while a client pages does not shift its pages
    submit(app_client, one_png)
    second = app_client.get(first["next"]).json()
    assert [j["id"] for j in second["items"]] == ids[-11:-21:-1]


def test_listing_filters_by_status(app_client: TestClient, one_png: bytes) -> None:
    ids = [submit(app_client, one_png)["id"] for _ in range(12)]
    cancelled = ids[::3]
    for job_id in cancelled:
        assert app_client.delete(f"/jobs/{job_id}").json()["status"] == "cancelled"
    jobs, _ = list_all(app_client, "/jobs?limit=2&status=cancelled")
    assert [j["id"] for j in jobs] == cancelled[::-1]
    queued, _ = list_all(app_client, "/jobs?limit=5&status=queued")
    assert {j["id"] for j in queued} == set(ids) - set(cancelled)
    assert all(j["status"] == "queued" for j in queued)
    assert list_all(app_client, "/jobs?status=succeeded")[0] == []


def test_a_filtered_page_reads_a_bounded_number_of_jobs(app_client: TestClient, one_png: bytes) -> None:
    ids = [submit(app_client, one_png)["id"] for _ in range(7)]
    app_client.delete(f"/jobs/{ids[0]}")  # the oldest: found only after reading every other job
    store = get_job_store()
    first = listing.page(store, None, limit=10, status="cancelled", budget=4)  # type: ignore[arg-type]
    assert first.jobs == [] and first.next_after == ids[3]  # stopped after 4, says where to go on
    second = listing.page(store, None, limit=10, after=first.next_after, status="cancelled", budget=4)  # type: ignore[arg-type]
    assert [j.id for j in second.jobs] == [ids[0]] and second.next_after is None


def test_keys_list_only_their_own_jobs(make_client, one_png: bytes) -> None:
    client = make_client(API_KEYS="k1,k2")
    k1, k2 = {"X-API-Key": "k1"}, {"X-API-Key": "k2"}
    mine = [
        client.post("/jobs", files=[("files", ("a.png", one_png))], headers=k1).json()["id"] for _ in range(3)
    ]
    theirs = [
        client.post("/jobs", files=[("files", ("a.png", one_png))], headers=k2).json()["id"] for _ in range(2)
    ]
    assert [j["id"] for j in list_all(client, "/jobs?limit=2", headers=k1)[0]] == mine[::-1]
    assert [j["id"] for j in list_all(client, "/jobs", headers=k2)[0]] == theirs[::-1]
    assert client.get("/jobs").status_code == 401
    # another key's job is no cursor either (it would tell that the job exists)
    response = client.get(f"/jobs?after={theirs[0]}", headers=k1)
    assert response.status_code == 400 and "not one of your jobs" in response.json()["detail"]


def test_listing_query_is_validated(app_client: TestClient) -> None:
    assert app_client.get("/jobs?limit=101").status_code == 422
    assert app_client.get("/jobs?limit=0").status_code == 422
    assert app_client.get("/jobs?status=done").status_code == 422


def test_the_owner_index_expires_and_is_pruned(
    make_client, one_png: bytes, redis_client: redis.Redis
) -> None:
    client = make_client(JOB_TTL_SECONDS="100")
    key = listing.index_key(None)
    redis_client.zadd(key, {"gone": time.time() - 1000})  # a job older than the TTL
    submit(client, one_png)
    assert redis_client.zscore(key, "gone") is None
    assert 0 < redis_client.ttl(key) <= 100


def write_jobs(redis_client: redis.Redis, n: int) -> None:
    """`n` queued jobs of the open API's owner, written straight to Redis (newest last)."""
    now = time.time()
    pipe = redis_client.pipeline(transaction=False)
    for i in range(n):
        job_id = f"{i:032x}"
        fields = {"status": "queued", "created_at": now - n + i, "total": 1, "done": 0, "failed": 0}
        pipe.hset(PREFIX + job_id, mapping=fields)
        listing.add(pipe, None, job_id, now - n + i, 3600 * 24 * 7)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def commands(redis_client: redis.Redis) -> int:
    """Commands Redis has run so far, those of scripts and pipelines included."""
    return sum(stats["calls"] for stats in redis_client.info("commandstats").values())


def test_a_page_reads_a_bounded_number_of_keys_whatever_the_jobs(
    app_client: TestClient, redis_client: redis.Redis
) -> None:
    """An index per owner: a page of 100 costs a few hundred commands with 3,000 jobs as with 100
    (a SCAN, or reading every job, costs 3,000 or more). The budget of a filtered page:
    test_a_filtered_page_reads_a_bounded_number_of_jobs."""
    n = 3_000
    write_jobs(redis_client, n)

    def counted(url: str) -> tuple[int, dict]:
        before = commands(redis_client)
        response = app_client.get(url)
        assert response.status_code == 200
        return commands(redis_client) - before, response.json()

    first_n, first = counted("/jobs?limit=100")
    assert first["items"][0]["id"] == f"{n - 1:032x}" and len(first["items"]) == 100
    deep_n, deep = counted(f"/jobs?limit=100&after={n - 2000:032x}")
    assert deep["items"][0]["id"] == f"{n - 2001:032x}" and len(deep["items"]) == 100
    assert first_n < 500 and deep_n < 500, (first_n, deep_n)


@pytest.mark.perf
def test_listing_stays_fast_with_100000_jobs(app_client: TestClient, redis_client: redis.Redis) -> None:
    """The same as test_a_page_reads_a_bounded_number_of_keys_whatever_the_jobs, in seconds."""
    n = 100_000
    write_jobs(redis_client, n)

    def timed(url: str) -> tuple[float, dict]:
        started = time.perf_counter()
        response = app_client.get(url)
        assert response.status_code == 200
        return time.perf_counter() - started, response.json()

    first_s, first = timed("/jobs?limit=100")
    assert first["items"][0]["id"] == f"{n - 1:032x}" and len(first["items"]) == 100
    deep_s, deep = timed(f"/jobs?limit=100&after={90_000:032x}")
    assert deep["items"][0]["id"] == f"{89_999:032x}"
    filtered_s, filtered = timed("/jobs?limit=100&status=failed")  # none match: a bounded read
    assert filtered["items"] == [] and filtered["next"]
    # generous bounds on a loaded 2-core machine; reading 100,000 hashes takes seconds
    assert first_s < 1 and deep_s < 1 and filtered_s < 3, (first_s, deep_s, filtered_s)


FORMULAS = ["=1+2.png", "+SUM(A1).png", "-2+3.png", "@cmd.png", "\tx.png", "\rnote.png"]


def test_csv_cells_never_start_a_formula(app_client: TestClient, one_png: bytes) -> None:
    archive = make_zip({name: one_png for name in [*FORMULAS, "plain.png", "a=b.png"]})
    job = submit(app_client, archive, name="f.zip")
    text = app_client.get(f"/jobs/{job['id']}/results?format=csv").text
    names = [row["name"] for row in csv.DictReader(io.StringIO(text, newline=""))]
    assert names == ["'" + n for n in FORMULAS] + ["plain.png", "a=b.png"]
    # JSON keeps the names as they are: only spreadsheets evaluate cells
    assert [i["name"] for i in app_client.get(f"/jobs/{job['id']}/results").json()["items"]][:1] == [
        "=1+2.png"
    ]


@pytest.mark.parametrize("separator", [";", ","])
def test_csv_cells_split_at_a_separator_never_start_a_formula(
    app_client: TestClient, one_png: bytes, separator: str
) -> None:
    """In a semicolon locale, `x;=1+2;.png` opened as three cells, the second a formula."""
    names = [f"x{separator}=1+2{separator}.png", f"a{separator} @cmd.png", f"b{separator}-1{separator}+2.png"]
    job = submit(app_client, make_zip({name: one_png for name in names}), name="s.zip")
    text = app_client.get(f"/jobs/{job['id']}/results?format=csv").text
    for line in text.splitlines()[1:]:
        for delimiter in ";,":  # however the spreadsheet splits the row
            cells = [cell.strip().strip('"').lstrip() for cell in line.split(delimiter)]
            assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], (delimiter, line)
    found = [row["name"] for row in csv.DictReader(io.StringIO(text, newline=""))]
    assert [name.replace("'", "") for name in found] == names  # only the marks were added


def test_jsonl_streams_one_item_per_line(app_client: TestClient, one_png: bytes) -> None:
    archive = make_zip({f"{i}.png": one_png for i in range(1500)})  # more than one streamed page
    job = submit(app_client, archive, name="d.zip")
    response = app_client.get(f"/jobs/{job['id']}/results?format=jsonl")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jsonl")
    lines = response.text.splitlines()
    items = [json.loads(line) for line in lines]
    assert [i["index"] for i in items] == list(range(1500))
    assert items[3] == {
        "index": 3, "name": "3.png", "status": "pending", "digit": None, "confidence": None,
        "low_confidence": False, "error": None, "label": None,
    }  # fmt: skip


def test_status_failed_on_every_format(app_client: TestClient, one_png: bytes) -> None:
    """Results written as a worker writes them (JobStore.record), read back filtered."""
    job = submit(app_client, make_zip({f"{i:02d}.png": one_png for i in range(30)}), name="d.zip")
    failed = [2, 3, 17, 29]
    results = [ItemResult(i, error="bad image") if i in failed else ItemResult(i, 7, 0.99) for i in range(30)]
    get_job_store().record(job["id"], results)
    base = f"/jobs/{job['id']}/results"

    items, pages, url = [], 0, f"{base}?status=failed&limit=3"
    while url:
        page = app_client.get(url).json()
        items += page["items"]
        url, pages = page["next"], pages + 1
    assert [i["index"] for i in items] == failed and pages == 2
    assert all(i["status"] == "failed" and i["error"] == "bad image" for i in items)

    jsonl = app_client.get(f"{base}?format=jsonl&status=failed").text.splitlines()
    assert [json.loads(line)["index"] for line in jsonl] == failed
    rows = list(csv.DictReader(io.StringIO(app_client.get(f"{base}?format=csv&status=failed").text)))
    assert [int(r["index"]) for r in rows] == failed
    done = app_client.get(f"{base}?format=jsonl&status=done").text.splitlines()
    assert len(done) == 30 - len(failed)
    assert app_client.get(f"{base}?status=nope").status_code == 422


def test_csv_rows_say_what_the_json_pages_say(app_client: TestClient, one_png: bytes) -> None:
    """The CSV is written straight from the stored results: every cell as the JSON item has it,
    for done, failed and still pending items."""
    job = submit(app_client, make_zip({f"{i:02d}.png": one_png for i in range(12)}), name="d.zip")
    results = [ItemResult(0, 3, 0.51234, True), ItemResult(1, error="-bad image"), ItemResult(2, 9, 1.0)]
    results += [ItemResult(i, 7, 0.99) for i in range(5, 12)]
    get_job_store().record(job["id"], results)  # items 3 and 4 stay pending
    base = f"/jobs/{job['id']}/results"
    items = app_client.get(f"{base}?limit=100").json()["items"]
    rows = list(csv.DictReader(io.StringIO(app_client.get(f"{base}?format=csv").text, newline="")))
    assert len(rows) == len(items) == 12
    for row, item in zip(rows, items, strict=True):
        assert row["index"] == str(item["index"]) and row["name"] == item["name"]
        assert row["status"] == item["status"]
        assert row["digit"] == ("" if item["digit"] is None else str(item["digit"]))
        assert row["confidence"] == ("" if item["confidence"] is None else f"{item['confidence']:.4f}")
        assert row["low_confidence"] == str(item["low_confidence"]).lower()
        assert row["error"] == ("'" + item["error"] if item["error"] else "")
    assert [r["status"] for r in rows[:5]] == ["done", "failed", "done", "pending", "pending"]
    assert rows[0]["confidence"] == "0.5123" and rows[0]["low_confidence"] == "true"
    assert rows[1]["error"] == "'-bad image"  # a formula start gets its quote
