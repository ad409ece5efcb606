"""One task for the one-trip chunks of concurrent submissions (core/batching.py, issue 22): the
grouping (fast tier, a real Redis broker, no workers) and, with real workers, each job of a batch
keeping its own results, state and published answer."""

import base64
import threading
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from core.batching import Batcher, send_batch
from core.config import Settings
from core.dispatch import INFLIGHT_INTERACTIVE, FairShare
from core.jobs import JobStore, new_job_id
from core.queue import INTERACTIVE, PROCESS_BATCH, PROCESS_CHUNK, Chunk, ChunkItem, make_celery
from core.uploads import Item, chunks
from devstack.stack import Stack
from tests.helpers import all_results, png, running_stack, wait_until


def one_image(job_id: str, image: bytes = b"x") -> Chunk:
    parts = {"0": base64.b64encode(image).decode()}
    return Chunk(job_id, (ChunkItem(0, 0),), "t", INTERACTIVE, parts, one_trip=True)


def test_the_chunks_waiting_go_together_up_to_the_limit(redis_url: str) -> None:
    """What arrived while a publish was in flight goes in the next batch, up to BATCH_MAX_IMAGES
    images; one task carries them, each chunk whole."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    app = make_celery(Settings(redis_url=redis_url))
    batcher = Batcher(app, max_images=4)
    waiting = [one_image(f"{n:032x}") for n in range(6)]
    for chunk in waiting:
        batcher.put(chunk)
    first, second = batcher.take(), batcher.take()
    assert first == waiting[:4] and second == waiting[4:] and batcher.take(block=False) == []
    send_batch(app, first)
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(INTERACTIVE)
        message = queue.get(timeout=5)
        assert message.headers["task"] == PROCESS_BATCH
        assert [Chunk.from_json(raw) for raw in message.payload[0][0]] == first
        message.ack()
        queue.close()


def test_a_batch_waits_only_for_submissions_on_their_way(redis_url: str) -> None:
    """Alone, a chunk goes at once (a 30 s window is not waited); with another submission of the
    process on its way (`arriving`), the batch waits for its chunk."""
    batcher = Batcher(make_celery(Settings(redis_url=redis_url)), max_images=64, window=30, publish=False)
    taken: list[list[Chunk]] = []
    alone, other = one_image("a" * 32), one_image("b" * 32)
    batcher.put(alone)
    taker = threading.Thread(target=lambda: taken.append(batcher.take()))
    taker.start()
    taker.join(timeout=10)
    assert not taker.is_alive() and taken == [[alone]]

    go = threading.Event()

    def on_its_way() -> None:
        with batcher.arriving():
            go.wait(timeout=10)
            batcher.submit(other)

    submitter = threading.Thread(target=on_its_way)
    submitter.start()
    wait_until(lambda: batcher._arriving == 1, what="the submission on its way")
    batcher.put(alone)
    taker = threading.Thread(target=lambda: taken.append(batcher.take()))
    taker.start()
    go.set()
    taker.join(timeout=20)
    submitter.join(timeout=10)
    assert taken[1] == [alone, other]


def test_a_lone_submission_is_published_by_its_own_thread_at_once(redis_url: str) -> None:
    """Nothing to group it with: no hand-over to the batcher's thread (its wake-up was most of a
    lone /predict's extra latency); with a batch being formed, a submission joins the thread's."""
    redis.Redis.from_url(redis_url).flushall()
    app = make_celery(Settings(redis_url=redis_url))
    batcher = Batcher(app, max_images=64)
    alone, queued = one_image("a" * 32), one_image("b" * 32)
    batcher.submit(alone)
    assert batcher._pid == 0  # no thread was started
    batcher.put(one_image("c" * 32))
    assert len(batcher.take(block=False)) == 1  # a batch being formed (not published here)
    batcher.submit(queued)  # not alone: handed to the thread, which publishes it
    with app.connection_for_write() as connection:
        lane = connection.SimpleQueue(INTERACTIVE)
        published = [lane.get(timeout=5) for _ in range(2)]
        assert [[Chunk.from_json(raw) for raw in m.payload[0][0]] for m in published] == [[alone], [queued]]
        for message in published:
            message.ack()
        lane.close()


def test_without_batching_a_job_is_its_own_task(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    client = make_client(BATCH_MAX_IMAGES="0")
    assert client.post("/jobs", files={"files": ("a.png", png(np.zeros((28, 28))))}).status_code == 202
    app = make_celery(Settings(redis_url=redis_url))
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(INTERACTIVE)
        message = queue.get(timeout=5)  # there already: published by the request itself
        assert message.headers["task"] == PROCESS_CHUNK
        message.ack()
        queue.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("batching"), WORKER_PROCESSES="1") as s:
        yield s


@pytest.mark.stack
def test_each_job_of_a_batch_gets_its_own_results(stack: Stack, digits) -> None:
    """Six jobs in one task: each job's result is what its image gets alone (no mix-up), each job
    closes on its own, and no chunk stays in flight."""
    images = [png(digits[0][i]) for i in range(0, 3000, 500)]  # six digits, six classes
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        alone = []
        for image in images:
            answer = api.post("/predict", files={"file": ("a.png", image)})
            assert answer.status_code == 200, answer.text
            alone.append(answer.json()["digit"])
    assert len(set(alone)) > 1  # a mix-up would show
    client = redis.Redis.from_url(stack.redis_url or "")
    settings = stack.settings.model_copy(update={"redis_url": stack.redis_url})
    store, fair = JobStore(client, 3600), FairShare(client, settings)
    batch = []
    for image in images:
        job_id = new_job_id()
        [items] = chunks([Item(name="a.png", part=0)], 250, 2**20)
        batch.append(Chunk(job_id, tuple(items), "t", INTERACTIVE, one_image(job_id, image).parts, True))
        pipe = client.pipeline()
        store.create(job_id, ["a.png"])
        fair.track(pipe, batch[-1:])
        pipe.execute()
    send_batch(make_celery(settings), batch)
    for chunk, digit in zip(batch, alone, strict=True):
        wait_until(lambda c=chunk: store.status(c.job_id) == "succeeded", 60, 0.02, "the job")
        (result,) = store.results(chunk.job_id, [0])
        assert result is not None and result.digit == digit
    wait_until(lambda: client.zcard(INFLIGHT_INTERACTIVE) == 0, 10, 0.05, "every chunk done")


@pytest.mark.stack
def test_concurrent_predicts_each_get_their_own_answer(stack: Stack, digits) -> None:
    images = [png(digits[0][i]) for i in range(0, 4800, 300)]  # sixteen images
    answers: dict[int, httpx.Response] = {}

    def predict(n: int) -> None:
        with httpx.Client(base_url=stack.api_url, timeout=60) as api:
            answers[n] = api.post("/predict", files={"file": (f"{n}.png", images[n])})

    threads = [threading.Thread(target=predict, args=(n,)) for n in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(answers) == list(range(len(images)))
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        for response in answers.values():
            assert response.status_code == 200, response.text
            answer = response.json()
            job = api.get(f"/jobs/{answer['job_id']}").json()
            assert job["status"] == "succeeded" and job["counts"]["done"] == 1
            (stored,) = all_results(api, answer["job_id"])
            assert stored["digit"] == answer["digit"]  # the published answer is the job's own
    assert len({r.json()["job_id"] for r in answers.values()}) == len(images)


@pytest.mark.stack
def test_a_redelivered_batch_runs_each_chunk_as_an_ordinary_one(stack: Stack, digits) -> None:
    """A batch that comes back (as kombu restores it after a death: here a consumer gone without
    acknowledging it) starts each chunk through the start script: each job gets its result once,
    and each chunk's uncounted first start is counted, so the poison limit holds per job."""
    from core.job_keys import DELIVERIES_SUFFIX, PREFIX

    client = redis.Redis.from_url(stack.redis_url or "")
    settings = stack.settings.model_copy(update={"redis_url": stack.redis_url})
    store, fair, celery = JobStore(client, 3600), FairShare(client, settings), make_celery(settings)
    batch = []
    for n in range(3):
        job_id = new_job_id()
        store.create(job_id, ["a.png"])
        batch.append(one_image(job_id, png(digits[0][n * 700])))
        pipe = client.pipeline()
        fair.track(pipe, batch[-1:])
        pipe.execute()
    workers = [name for name in stack.processes if name.startswith("worker")]
    for name in workers:
        stack.stop_process(name)
    try:
        send_batch(celery, batch)
        with celery.connection_for_write() as connection:
            queue = connection.SimpleQueue(INTERACTIVE)
            assert len(queue.get(timeout=10).payload[0][0]) == 3
        # Gone without an acknowledgement: kombu put it back, marked redelivered.
    finally:
        for name in workers:
            stack.start_worker(name)
    for chunk in batch:
        wait_until(lambda c=chunk: store.status(c.job_id) == "succeeded", 60, 0.05, "the job")
        assert client.hlen(f"{PREFIX}{chunk.job_id}:results") == 1
        assert client.hgetall(PREFIX + chunk.job_id + DELIVERIES_SUFFIX) == {b"0:0": b"2"}
    wait_until(lambda: client.zcard(INFLIGHT_INTERACTIVE) == 0, 10, 0.05, "every chunk done")
