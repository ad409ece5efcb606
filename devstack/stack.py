"""The whole local stack in one process tree: `make run` → `python -m devstack`.

Starts Redis (embedded unless REDIS_URL is set), the Celery worker(s), the API and Flower,
prints the URLs, and on Ctrl-C or SIGTERM stops them all, process groups included, so no
pool process is left behind. The tests and the benchmark start the same stack from here.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.config import PROJECT_ROOT, Settings, get_settings
from devstack.embedded_redis import EmbeddedRedis


class StackError(RuntimeError):
    pass


def ensure_port_free(host: str, port: int, variable: str) -> None:
    with socket.socket() as sock:
        # SO_REUSEADDR as uvicorn uses it: TIME_WAIT connections are fine, a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"{host}:{port} is already in use ({exc.strerror}); is another digitq running? "
                f"Stop it or set {variable} to a free port."
            ) from None


class Stack:
    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        """`env` holds extra environment variables for the processes (they read their settings there)."""
        self.settings = settings
        self.redis: EmbeddedRedis | None = None
        self.redis_url = settings.redis_url
        self.env = {**os.environ, **(env or {})}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.webhook_secret_file: Path | None = None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "Stack":
        """A stack whose settings (here and in every process) are the environment plus `env`."""
        settings = Settings(**{key.lower(): value for key, value in env.items()})  # type: ignore[arg-type]
        return cls(settings, env)

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    @property
    def flower_url(self) -> str:
        return f"http://{self.settings.flower_host}:{self.settings.flower_port}"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = {**self.env, "REDIS_URL": self.redis_url or "", "DATA_DIR": str(self.settings.data_dir)}
        # A session of its own, so stop() can signal the worker and its pool processes at once.
        process = subprocess.Popen(args, env=env, cwd=PROJECT_ROOT, start_new_session=True)
        self.processes[name] = process
        return process

    def start_redis(self) -> None:
        if not self.redis_url:
            self.redis = EmbeddedRedis(self.settings.data_dir / "redis")
            self.redis_url = self.redis.start()

    def start_worker(self, name: str = "worker1") -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-n", f"{name}@%h"]
        args += ["-c", str(self.settings.worker_processes), "--loglevel", self.settings.log_level]
        return self._spawn(name, args)

    def start_api(self) -> None:
        s = self.settings
        ensure_port_free(s.api_host, s.api_port, "API_PORT")
        args = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", s.api_host]
        args += ["--port", str(s.api_port), "--log-level", s.log_level.lower()]
        self._spawn("api", args)

    def start_flower(self) -> None:
        s = self.settings
        ensure_port_free(s.flower_host, s.flower_port, "FLOWER_PORT")
        args = [sys.executable, "-m", "celery", "--broker", self.redis_url or "", "flower"]
        args += [f"--address={s.flower_host}", f"--port={s.flower_port}"]
        # Flower reads FLOWER_BASIC_AUTH (user:password) itself, which keeps it out of `ps`;
        # without it, its HTTP API is open, as suits a local stack bound to 127.0.0.1.
        if not os.environ.get("FLOWER_BASIC_AUTH"):
            self.env.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
        self._spawn("flower", args)

    def start(self, flower: bool = True) -> None:
        # Refuse a busy port before starting anything, so a second `make run` leaves nothing behind.
        s = self.settings
        ensure_port_free(s.api_host, s.api_port, "API_PORT")
        if flower:
            ensure_port_free(s.flower_host, s.flower_port, "FLOWER_PORT")
        self.start_redis()
        if not self.settings.webhook_secret:  # webhooks signed with a secret kept in DATA_DIR
            from core.webhooks import ensure_secret

            self.webhook_secret_file = ensure_secret(self.settings.data_dir)
            self.env["WEBHOOK_SECRET"] = self.webhook_secret_file.read_text().strip()
        for n in range(self.settings.workers):
            self.start_worker(f"worker{n + 1}")
        self.start_api()
        if flower:
            self.start_flower()
        self.wait_for(f"{self.api_url}/health")
        if flower:
            self.wait_for(f"{self.flower_url}/healthcheck")

    def wait_for(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise StackError(f"{url} did not answer within {timeout:.0f}s")

    def wait_for_workers(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` Celery workers answer a ping (each has loaded its model by then)."""
        from core.queue import make_celery

        app = make_celery(self.settings.model_copy(update={"redis_url": self.redis_url}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if len(app.control.ping(timeout=1.0) or []) >= count:
                return
        raise StackError(f"{count} worker(s) did not answer within {timeout:.0f}s")

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise StackError(f"{name} exited with code {process.returncode}")

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(ProcessLookupError):  # pool processes that outlived their parent
            os.killpg(process.pid, signal.SIGKILL)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop_process(name)
        if self.redis:
            self.redis.stop()


def main() -> int:
    settings = get_settings()
    stack = Stack(settings)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        stack.start()
        print(
            f"\ndigitq is up (Redis {stack.redis_url})\n"
            f"  API     {stack.api_url}   (docs: {stack.api_url}/docs)\n"
            f"  Flower  {stack.flower_url}\n"
            + (f"  Webhook secret in {stack.webhook_secret_file}\n" if stack.webhook_secret_file else "")
            + "Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stopping:
            stack.check_alive()
            time.sleep(0.5)
        return 0
    except StackError as exc:
        print(f"digitq: {exc}", file=sys.stderr)
        return 1
    finally:
        print("digitq: stopping…", file=sys.stderr, flush=True)
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
