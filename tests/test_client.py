"""The Python client and the `digitq` command against the real stack (workers, HTTP).

The command runs as a subprocess (its console script), so its exit codes, piped output and
Ctrl-C handling are the ones a user gets.
"""

import contextlib
import csv
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import redis

from core.jobs import JobStore
from devstack.embedded_redis import free_port
from devstack.stack import Stack
from digitq import Client, ProblemError, Unreachable
from digitq.multipart import zip_folder
from tests.helpers import make_zip, png, wait_until, workers_paused

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

DIGITQ = str(Path(sys.executable).parent / "digitq")  # the console script pyproject installs


def digitq(stack: Stack, *args: str, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIGITQ_URL": stack.api_url}
    return subprocess.run([DIGITQ, *args], env=env, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray]) -> Path:
    """30 MNIST digits as PNGs in a folder with a subfolder; the label is in the name."""
    root = tmp_path_factory.mktemp("scans") / "scans"
    X, y = digits
    for i in range(30):  # the digits come sorted by label: take every 160th for all ten
        where = root / ("sub" if i % 3 == 0 else "")
        where.mkdir(parents=True, exist_ok=True)
        (where / f"{i:03d}-label{y[i * 160]}.png").write_bytes(png(255 - X[i * 160]))
    return root


def label(name: str) -> int:
    return int(name.rsplit("label", 1)[1][0])


def test_folder_and_zip_with_wait_and_csv(stack: Stack, folder: Path, tmp_path: Path, digits) -> None:
    X, y = digits
    archive = tmp_path / "more.zip"
    archive.write_bytes(make_zip({f"z/{i}-label{y[i]}.png": png(255 - X[i]) for i in range(40, 5000, 500)}))
    out = tmp_path / "results.csv"

    done = digitq(stack, "submit", str(folder), str(archive), "--wait", "--out", str(out))

    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)  # piped: JSON
    assert job["status"] == "succeeded" and job["counts"] == {"total": 40, "done": 40, "failed": 0}
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40 and [int(r["index"]) for r in rows] == list(range(40))
    names = [r["name"] for r in rows]
    assert "scans/sub/000-label0.png" in names and names[-1].startswith("z/4540-")  # folder name kept
    right = sum(int(r["digit"]) == label(r["name"]) for r in rows)
    assert right >= 36, f"only {right}/40 right: {rows}"


def test_jsonl_out_and_results_command(stack: Stack, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    done = digitq(stack, "submit", str(folder), "--wait", "--out", str(out), "--metadata", "batch=7")
    assert done.returncode == 0, done.stderr
    items = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(items) == 30 and {i["status"] for i in items} == {"done"}
    assert set(items[0]) == {
        "index",
        "name",
        "status",
        "digit",
        "confidence",
        "low_confidence",
        "error",
        "label",
    }

    job_id = json.loads(done.stdout)["id"]
    piped = digitq(stack, "results", job_id)  # JSON lines when piped
    assert [json.loads(line) for line in piped.stdout.splitlines()] == items
    status = digitq(stack, "status", job_id)
    assert status.returncode == 0 and json.loads(status.stdout)["id"] == job_id


def test_python_client_pages_progress_and_typed_results(stack: Stack, folder: Path) -> None:
    seen: list[tuple[int, int]] = []
    with Client(stack.api_url) as dq:
        job = dq.submit([folder], wait=True, progress=lambda j: seen.append((j.counts.done, j.counts.total)))
        assert job.status == "succeeded" and job.finished and job.counts.total == 30
        assert seen and seen[-1] == (30, 30)
        items = list(dq.results(job, page_size=7))  # five pages, followed through `next`
        assert [i.index for i in items] == list(range(30))
        assert all(isinstance(i.digit, int) and 0 <= i.confidence <= 1 for i in items)
        assert dq.get(job.id).model_version == job.model_version


def test_problem_details_are_one_exception(stack: Stack, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with Client(stack.api_url) as dq:
        with pytest.raises(ProblemError) as unknown:
            dq.get("0" * 32)
        assert unknown.value.status == 404 and unknown.value.title and "job" in unknown.value.detail
        with pytest.raises(ProblemError) as refused:
            dq.submit([text])
        assert refused.value.status == 415 and "zip" in refused.value.detail
    cli = digitq(stack, "status", "0" * 32)
    assert cli.returncode == 1 and "404" in cli.stderr  # unknown or expired: the server cannot tell


def test_failed_and_cancelled_jobs_exit_1(stack: Stack, folder: Path) -> None:
    store = JobStore(redis.Redis.from_url(stack.redis_url), 3600)
    with Client(stack.api_url) as dq, workers_paused(stack):
        failing = dq.submit([folder])
        cancelled = dq.submit([folder])
        # A job-level error, as a worker records it after an internal error on some chunk
        store.fail(failing.id, "some items could not be processed because of an internal error")
        cancel = digitq(stack, "cancel", cancelled.id)
        assert cancel.returncode == 0 and json.loads(cancel.stdout)["status"] == "cancelled"
    failed = digitq(stack, "wait", failing.id)
    assert failed.returncode == 1 and json.loads(failed.stdout)["status"] == "failed"
    assert digitq(stack, "status", cancelled.id).returncode == 1


def test_unreachable_server_exits_3(tmp_path: Path) -> None:
    done = subprocess.run(
        [DIGITQ, "status", "abc", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3 and "cannot reach" in done.stderr and "DIGITQ_URL" in done.stderr


@pytest.mark.parametrize("args", [["submit"], ["submit", "x.png", "--metadata", "novalue"], ["bogus"]])
def test_usage_errors_exit_2(stack: Stack, folder: Path, args: list[str]) -> None:
    assert digitq(stack, *args).returncode == 2


def test_out_needs_a_known_format_before_anything_is_sent(stack: Stack, folder: Path) -> None:
    done = digitq(stack, "submit", str(folder), "--wait", "--out", "results.xlsx")
    assert done.returncode == 2 and ".csv or .jsonl" in done.stderr


class Reader(threading.Thread):
    """Collects what a pipe says as it comes (a question ends without a newline)."""

    def __init__(self, pipe) -> None:
        super().__init__(daemon=True)
        self.fd, self.parts = pipe.fileno(), []
        self.start()

    def run(self) -> None:
        while data := os.read(self.fd, 4096):
            self.parts.append(data)

    def text(self) -> str:
        return b"".join(self.parts).decode()


@pytest.mark.parametrize("answer", ["y", "n"])
def test_ctrl_c_during_wait_asks_whether_to_cancel(stack: Stack, folder: Path, answer: str) -> None:
    env = {**os.environ, "DIGITQ_URL": stack.api_url}
    with workers_paused(stack):
        proc = subprocess.Popen(
            [DIGITQ, "submit", str(folder), "--wait"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # as from a terminal: a background test run (`cmd &`) would pass SIGINT on as ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        try:
            err, out = Reader(proc.stderr), Reader(proc.stdout)
            wait_until(lambda: "waiting" in err.text(), 60, what=f"the wait to start: {err.text()}")
            job_id = err.text().split("job ", 1)[1].split()[0]
            proc.send_signal(signal.SIGINT)
            wait_until(lambda: "cancel job" in err.text(), 30, what=f"the question: {err.text()}")
            assert proc.stdin
            proc.stdin.write(f"{answer}\n".encode())
            proc.stdin.close()
            proc.wait(timeout=30)
            err.join(10)
            out.join(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        with Client(stack.api_url) as dq:
            status = dq.get(job_id).status
        if answer == "y":
            assert proc.returncode == 1 and status == "cancelled"
            assert json.loads(out.text())["status"] == "cancelled"
        else:
            assert proc.returncode == 130 and status == "queued" and f"digitq wait {job_id}" in err.text()
            with Client(stack.api_url) as dq:
                dq.cancel(job_id)


class DropFirstResponse:
    """A TCP proxy that forwards every request but drops the first response: a network error
    after the server did the work, the case an Idempotency-Key exists for."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.requests.append(b"")
            threading.Thread(target=self._serve, args=(client, len(self.requests) - 1), daemon=True).start()

    def _serve(self, client: socket.socket, n: int) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream))

        def pump_requests() -> None:
            while data := client.recv(65536):
                self.requests[n] += data
                upstream.sendall(data)

        threading.Thread(target=pump_requests, daemon=True).start()
        try:
            while data := upstream.recv(65536):
                if n == 0:
                    break  # the server answered; the client never hears it
                client.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):  # shutdown first: close() waits for the other thread's recv
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.server.close()


def test_retry_after_network_error_reuses_the_idempotency_key(stack: Stack, folder: Path) -> None:
    proxy = DropFirstResponse(int(stack.api_url.rsplit(":", 1)[1]))
    try:
        with Client(f"http://127.0.0.1:{proxy.port}") as dq:
            job = dq.submit([folder])
    finally:
        proxy.close()
    keys = [line.split(b":", 1)[1].strip() for r in proxy.requests for line in r.split(b"\r\n")
            if line.lower().startswith(b"idempotency-key:")]  # fmt: skip
    assert len(keys) == 2 and keys[0] == keys[1], proxy.requests
    assert job.replayed, "the retry created a second job instead of answering with the first"
    with Client(stack.api_url) as dq:  # the first attempt's job, the only one for this key
        again = dq.submit([folder], idempotency_key=keys[0].decode())
    assert again.id == job.id and again.replayed
    assert wait_until(lambda: Client(stack.api_url).get(job).finished, 60)


def test_folder_is_streamed_not_built_in_memory(stack: Stack, tmp_path: Path) -> None:
    noise = png(np.random.default_rng(0).integers(0, 256, (1000, 1000), dtype=np.uint8))
    big = tmp_path / "big"
    big.mkdir()
    for i in range(16):
        (big / f"{i}.png").write_bytes(noise)
    size = 16 * len(noise)
    assert size > 15_000_000
    sent: list[int] = []

    tracemalloc.start()
    try:
        with Client(stack.api_url) as dq:
            job = dq.submit([big], upload_progress=lambda done, _total: sent.append(done))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < size / 5, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB folder"
    assert len(sent) > 100 and sent[-1] >= size  # many blocks, not one
    assert job.counts.total == 16


def test_zip_folder_is_a_valid_zip_of_the_folder(folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "out.zip"
    archive.write_bytes(b"".join(zip_folder(folder)))
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        names = sorted(z.namelist())
    assert len(names) == 30 and all(n.startswith("scans/") for n in names)
    assert (folder / "sub" / "000-label0.png").read_bytes() == zipfile.ZipFile(archive).read(
        "scans/sub/000-label0.png"
    )


def test_unreachable_client_raises_unreachable() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", retries=1) as dq, pytest.raises(Unreachable):
        dq.get("abc")


def test_api_key_is_sent(keyed_stack: Stack, folder: Path) -> None:
    """With API keys, the client's key is accepted and a missing one is a 401 problem."""
    keyed = keyed_stack
    with Client(keyed.api_url) as anonymous, pytest.raises(ProblemError) as refused:
        anonymous.submit([folder])
    assert refused.value.status == 401
    with Client(keyed.api_url, api_key="k-one") as dq:
        assert dq.submit([folder], wait=True).status == "succeeded"
    env = {**os.environ, "DIGITQ_URL": keyed.api_url, "DIGITQ_API_KEY": "k-one"}
    listed = subprocess.run([DIGITQ, "status", "x" * 32], env=env, capture_output=True, text=True)
    assert listed.returncode == 1 and "404" in listed.stderr  # authorised, just unknown


def test_metadata_failed_items_and_listing(stack: Stack, folder: Path, tmp_path: Path, digits) -> None:
    X, _ = digits
    archive = tmp_path / "mixed.zip"
    archive.write_bytes(make_zip({"ok/1.png": png(255 - X[0]), "ok/2.png": png(255 - X[900]),
                                  "broken.png": b"\x89PNG\r\n\x1a\n not really"}))  # fmt: skip
    done = digitq(stack, "submit", str(archive), "--wait", "--metadata", "batch=7", "--metadata", "by=cli")
    assert done.returncode == 0, done.stderr  # a bad item is an error on that item, not the job
    job = json.loads(done.stdout)
    assert job["metadata"] == {"batch": "7", "by": "cli"} and job["counts"]["failed"] == 1

    failed = digitq(stack, "results", job["id"], "--failed")
    items = [json.loads(line) for line in failed.stdout.splitlines()]
    assert [i["name"] for i in items] == ["broken.png"] and items[0]["error"]
    out = tmp_path / "failed.csv"
    assert digitq(stack, "results", job["id"], "--failed", "--out", str(out)).returncode == 0
    assert [r["name"] for r in csv.DictReader(out.open())] == ["broken.png"]

    listed = digitq(stack, "list", "--limit", "100")
    assert job["id"] in [json.loads(line)["id"] for line in listed.stdout.splitlines()]
    with Client(stack.api_url) as dq:
        assert job["id"] in [j.id for j in dq.list(status="succeeded", page_size=2)]  # follows `next`
        assert all(j.status == "succeeded" for j in dq.list(status="succeeded", limit=5))


def test_webhook_option_reaches_the_server(stack: Stack, folder: Path) -> None:
    # This stack has no WEBHOOK_SECRET: the server refuses the webhook field, which proves it was sent.
    done = digitq(stack, "submit", str(folder), "--webhook", "https://example.org/hook")
    assert done.returncode == 2 and "webhook" in done.stderr.lower()


def on_a_terminal(stack: Stack, *args: str) -> str:
    """Run the command with its stdout on a pseudo-terminal, as a person sees it."""
    import pty

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column one
    env = {**os.environ, "DIGITQ_URL": stack.api_url}
    with subprocess.Popen([DIGITQ, *args], env=env, stdout=terminal, stderr=terminal) as proc:
        os.close(terminal)
        output = b""
        with contextlib.suppress(OSError):  # EIO once the command exits
            while chunk := os.read(controller, 4096):
                output += chunk
        assert proc.wait(timeout=60) == 0
    os.close(controller)
    return output.decode()


def test_human_output_on_a_terminal_json_when_forced(stack: Stack, folder: Path) -> None:
    with Client(stack.api_url) as dq:
        job = dq.submit([folder], wait=True)
    human = on_a_terminal(stack, "status", job.id)
    assert human.startswith(f"job {job.id} succeeded: 30/30 done, 0 failed"), human
    forced = on_a_terminal(stack, "status", job.id, "--json")
    assert json.loads(forced)["id"] == job.id
    bars = on_a_terminal(stack, "submit", str(folder), "--wait")  # progress bars on stderr
    assert "uploading: 100%" in bars and "recognising: 100%" in bars and "30/30" in bars, bars


def test_cli_retry_after_network_error_makes_one_job(stack: Stack, folder: Path) -> None:
    proxy = DropFirstResponse(int(stack.api_url.rsplit(":", 1)[1]))
    try:
        done = digitq(stack, "submit", str(folder), "--url", f"http://127.0.0.1:{proxy.port}")
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr
    keys = {line.split(b":", 1)[1].strip() for r in proxy.requests for line in r.split(b"\r\n")
            if line.lower().startswith(b"idempotency-key:")}  # fmt: skip
    assert len(proxy.requests) == 2 and len(keys) == 1  # two attempts, one key
    job_id = json.loads(done.stdout)["id"]
    with Client(stack.api_url) as dq:
        assert dq.submit([folder], idempotency_key=keys.pop().decode()).id == job_id
        dq.wait(job_id, timeout=60)
