"""Secrets the local stack generates for itself (Redis password, Flower login), kept in DATA_DIR.

Each lives in a file only its owner can read (0600, in a 0700 directory), is created once and
reused by later runs (the append-only Redis data stays readable with the same password), and
reaches the child processes through their environment — never a command line, which any local
user can read in `ps`.
"""

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by its owner only; tighten it if it already exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def read_or_create(path: Path, make: Callable[[], str] | None = None) -> str:
    """The secret stored at `path`, generated (URL-safe, 256 bits unless `make`) on first use."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)  # an older run may have left it readable
        return path.read_text().strip()
    value = make() if make else secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value


def redact(url: str) -> str:
    """A URL with its password replaced by `***`, for printing."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def token() -> str:
    return secrets.token_urlsafe(24)
