"""The cluster launcher's supervision (devstack/cluster.py): a lost worker host stays lost while
the other children are restarted. Fast tier: real (short-lived) processes, no stack."""

import subprocess
import sys
from pathlib import Path

from core.config import Settings
from devstack.stack import Stack, Supervisor


def exited() -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(9)"])
    process.wait()
    return process


def test_a_dead_host_stays_dead_and_others_come_back(tmp_path: Path) -> None:
    stack = Stack(Settings(data_dir=tmp_path))
    stack.processes = {"host1": exited(), "api1": exited()}
    restarted: list[str] = []
    stack.starters["api1"] = lambda: restarted.append("api1")
    stack.starters["host1"] = lambda: restarted.append("host1")
    supervisor = Supervisor(stack, first=1.0, keep_dead={"host1"})
    supervisor.poll(now=0.0)
    supervisor.poll(now=5.0)
    supervisor.poll(now=10.0)
    assert restarted == ["api1"]
    assert "host1" not in supervisor.due


def test_without_keep_dead_a_worker_is_restarted(tmp_path: Path) -> None:
    """The check above can fail: `make run`'s supervisor restarts the same child."""
    stack = Stack(Settings(data_dir=tmp_path))
    stack.processes = {"host1": exited()}
    restarted: list[str] = []
    stack.starters["host1"] = lambda: restarted.append("host1")
    supervisor = Supervisor(stack, first=1.0)
    supervisor.poll(now=0.0)
    supervisor.poll(now=5.0)
    assert restarted == ["host1"]
