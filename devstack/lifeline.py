"""Children that do not outlive the launcher, even when it is SIGKILLed (no orphaned redis-server).

Linux's PR_SET_PDEATHSIG asks the kernel to signal a process when its parent dies; it is set in
the child between fork and exec (Popen's preexec_fn) and survives the exec. Celery's prefork
pool sets the same for its pool processes (SIGKILL), so a worker's death takes its pool with it.
"""

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
# Loaded once in the parent: the child, between fork and exec, must not import or allocate much.
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def die_with_parent(sig: int = signal.SIGKILL, umask: int | None = 0o077) -> Callable[[], None] | None:
    """A preexec_fn: the child gets `sig` when the launcher dies, and creates files with `umask`.

    Returns None off Linux (no such call; children are still stopped by a clean shutdown).
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def preexec() -> None:
        if umask is not None:
            os.umask(umask)
        _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0)
        # The launcher may have died between fork and prctl: then nothing would ever signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec
