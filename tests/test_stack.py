"""`make run`'s launcher: it prints the URLs, stops everything on SIGTERM, refuses a busy port,
restarts children that die, and leaves none behind even when it is SIGKILLed."""

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import PROJECT_ROOT
from devstack.embedded_redis import free_port
from tests.helpers import all_results, make_zip, png, wait_for_job, wait_until

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def launch(tmp_path: Path, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE, **env: str):
    env = {**os.environ, "DATA_DIR": str(tmp_path), "REDIS_URL": "", "LOG_LEVEL": "WARNING", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "devstack"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
    )


@pytest.mark.parametrize(
    "stop", ["SIGTERM to the launcher", "Ctrl-C to the process group", "SIGKILL to the launcher"]
)
def test_run_prints_urls_and_stops_every_process(tmp_path: Path, stop: str) -> None:
    api_port, flower_port = free_port(), free_port()
    stack = launch(tmp_path, API_PORT=str(api_port), FLOWER_PORT=str(flower_port))
    try:
        assert stack.stdout is not None
        lines = []
        while not any("Ctrl-C" in line for line in lines):
            line = stack.stdout.readline()
            assert line, f"the stack exited: {stack.stderr.read() if stack.stderr else ''}"
            lines.append(line)
        output = "".join(lines)
        assert f"http://127.0.0.1:{api_port}" in output and f"http://127.0.0.1:{flower_port}" in output
        ready_url = f"http://127.0.0.1:{api_port}/ready"
        wait_until(lambda: httpx.get(ready_url).status_code == 200, 60, 0.2, "the worker's model")
        children = descendants(stack.pid)
        assert len(children) >= 5  # redis, worker + pool, api, flower
    finally:
        if stop.startswith("Ctrl-C"):
            os.killpg(stack.pid, signal.SIGINT)
        elif stop.startswith("SIGKILL"):
            stack.kill()  # no clean-up code runs: the kernel signals the children (PDEATHSIG)
        else:
            stack.send_signal(signal.SIGTERM)
        _, errors = stack.communicate(timeout=60)
    if stop.startswith("SIGKILL"):
        assert stack.returncode == -signal.SIGKILL
    else:
        assert stack.returncode == 0, errors
        # Redis goes last: no worker or API lost its connection while shutting down.
        assert "Connection refused" not in errors and "Traceback" not in errors, errors
    wait_until(lambda: not any(alive(pid) for pid in children), 10, 0.1, "every child to be gone")


def test_a_launcher_killed_while_its_worker_starts_leaves_nothing_behind(tmp_path: Path) -> None:
    """The case first reported: SIGKILLed a few seconds into `make run`, before the worker is up,
    it left its embedded redis-server running."""
    stack = launch(tmp_path, API_PORT=str(free_port()), FLOWER_PORT=str(free_port()))
    try:
        redis_server = lambda: [p for p in descendants(stack.pid) if "redis-server" in cmdline(p)]  # noqa: E731
        wait_until(redis_server, 60, 0.05, "redis-server to start")
        wait_until(lambda: child_running(stack.pid, "worker.app"), 60, 0.05, "the worker to start")
        children = descendants(stack.pid)
        assert redis_server()  # killed mid start-up: the worker is still loading its model
    finally:
        stack.kill()
        stack.communicate(timeout=60)
    wait_until(lambda: not any(alive(pid) for pid in children), 10, 0.1, "every child to be gone")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def child_running(launcher: int, marker: str) -> int | None:
    """The pid of the launcher's child whose command line contains `marker`."""
    for line in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        if marker in cmdline(int(line)) and alive(int(line)):
            return int(line)
    return None


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], httpx.Client, Path]]:
    """`make run` (the launcher with its supervisor) with one single-process worker; its log file."""
    log = tmp_path / "launcher.log"
    env = {"API_PORT": str(free_port()), "FLOWER_PORT": str(free_port()), "WORKER_PROCESSES": "1"}
    env |= {"CHUNK_SIZE": "50", "VISIBILITY_TIMEOUT": "5"}
    with log.open("w") as out:
        stack = launch(tmp_path, stdout=out, stderr=subprocess.STDOUT, **env)
    client = httpx.Client(base_url=f"http://127.0.0.1:{env['API_PORT']}", timeout=30)
    try:
        wait_until(lambda: ready(client), 90, 0.2, "the stack to be ready")
        yield stack, client, log
    finally:
        client.close()
        stack.send_signal(signal.SIGTERM)
        stack.wait(60)


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/ready").status_code == 200
    except httpx.HTTPError:
        return False


def submit_and_wait_until_started(client: httpx.Client, archive: bytes) -> str:
    job_id = client.post("/jobs", files=[("files", ("big.zip", archive))]).json()["id"]
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["counts"]["done"], 60, 0.02, "the job to start")
    return job_id


def assert_every_item_once(client: httpx.Client, job_id: str, total: int) -> None:
    job = wait_for_job(client, job_id, timeout=180)
    assert job["status"] == "succeeded" and job["counts"] == {"total": total, "done": total, "failed": 0}
    items = all_results(client, job_id)
    assert [it["index"] for it in items] == list(range(total))
    assert all(it["status"] == "done" for it in items)


def test_a_killed_worker_node_is_restarted_and_the_job_ends_exactly_once(supervised, digits) -> None:
    stack, client, log = supervised
    images, _ = digits
    total = 1000
    archive = make_zip({f"{i:04d}.png": png(images[i]) for i in range(total)})
    job_id = submit_and_wait_until_started(client, archive)
    worker = child_running(stack.pid, "worker.app")
    assert worker is not None
    node = {worker} | descendants(worker)  # the worker and its pool processes
    assert len(node) >= 2
    for pid in node:
        os.kill(pid, signal.SIGKILL)

    # The API keeps answering while the worker is down and while it comes back.
    # (A SIGKILLed process is not a zombie at once: wait for a worker that is not one of them.)
    def restarted() -> int | None:
        pid = child_running(stack.pid, "worker.app") if client.get("/health").status_code == 200 else None
        return pid if pid not in node else None

    wait_until(restarted, 60, 0.1, "a new worker process")
    assert_every_item_once(client, job_id, total)
    assert not any(alive(pid) for pid in node)
    assert "worker1 exited with code -9" in log.read_text() and "worker1 restarted" in log.read_text()


def test_a_killed_api_is_restarted_and_loses_no_job(supervised, digits) -> None:
    stack, client, log = supervised
    images, _ = digits
    total = 500
    archive = make_zip({f"{i:04d}.png": png(images[i]) for i in range(total)})
    job_id = client.post("/jobs", files=[("files", ("big.zip", archive))]).json()["id"]
    api = child_running(stack.pid, "uvicorn")
    assert api is not None
    os.kill(api, signal.SIGKILL)
    wait_until(lambda: ready(client), 60, 0.1, "the API to answer again")
    assert child_running(stack.pid, "uvicorn") not in (None, api)
    assert_every_item_once(client, job_id, total)
    assert "api exited with code -9" in log.read_text()


def test_busy_port_fails_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = launch(tmp_path, API_PORT=str(port), FLOWER_PORT=str(free_port()))
        _, stderr = stack.communicate(timeout=60)
    assert stack.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in stderr and "API_PORT" in stderr
    assert not (tmp_path / "redis").exists()  # nothing was started
