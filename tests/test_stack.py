"""`make run`'s launcher: it prints the URLs, stops everything on SIGTERM, refuses a busy port."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.config import PROJECT_ROOT
from devstack.embedded_redis import free_port

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


def launch(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATA_DIR": str(tmp_path), "REDIS_URL": "", "LOG_LEVEL": "WARNING", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "devstack.stack"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
    )


@pytest.mark.parametrize("stop", ["SIGTERM to the launcher", "Ctrl-C to the process group"])
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
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{api_port}/ready").status_code != 200:  # worker has its model
            assert time.monotonic() < deadline, "the worker never became ready"
            time.sleep(0.2)
        children = descendants(stack.pid)
        assert len(children) >= 5  # redis, worker + pool, api, flower
    finally:
        if stop.startswith("Ctrl-C"):
            os.killpg(stack.pid, signal.SIGINT)
        else:
            stack.send_signal(signal.SIGTERM)
        _, errors = stack.communicate(timeout=60)
    assert stack.returncode == 0, errors
    # Redis goes last: no worker or API lost its connection while shutting down.
    assert "Connection refused" not in errors and "Traceback" not in errors, errors
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, [pid for pid in children if alive(pid)]
        time.sleep(0.1)


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
