"""The Celery worker application: `celery -A worker.app worker`.

Signals wire in the operations side: logging (ours, not Celery's), Sentry, the model loaded in
the main process before the pool forks (worker_init), and the main process' threads
(worker_ready): the heartbeat/reload watcher, webhook deliveries, the bulk lane's sweeper.
Each task binds its own log context and records its own metrics (worker/tasks.py).
"""

import logging
import os
import sys
from typing import Any

from celery.signals import (
    setup_logging,
    worker_init,
    worker_ready,
    worker_shutdown,
)

from core import logs, sentry
from core.config import get_settings
from core.queue import get_celery

# One BLAS/OpenMP thread per pool process: the pool already uses every core.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

app = get_celery()
app.conf.include = ["worker.tasks"]
log = logging.getLogger(__name__)
sentry.init(get_settings(), "worker")  # before the fork: the pool processes inherit it
_watcher: Any = None
_webhooks: Any = None
_sweeper: Any = None


@setup_logging.connect
def configure_logging(**_: Any) -> None:
    logs.configure(get_settings(), "worker")


@worker_init.connect
def load_model(sender: Any = None, **_: Any) -> None:
    # In the main process before the pool forks: no chunk is taken before a model is loaded,
    # and the pool processes share the model's memory.
    from ml import ModelIntegrityError
    from worker import models

    logs.configure(get_settings(), "worker")  # Celery sets up logging only after this signal
    try:
        models.load_default(get_settings())
    except ModelIntegrityError as exc:
        log.critical("REFUSING the model: %s. The worker exits; push a good model or fix MODEL_URI.", exc)
        _flush_and_exit(models.INTEGRITY_EXIT_CODE, exc)
    except Exception as exc:  # a bad MODEL_URI, an unknown local version, ...
        log.critical("no model could be loaded: %s. The worker exits.", exc, exc_info=True)
        _flush_and_exit(1, exc)


def _flush_and_exit(code: int, exc: BaseException) -> None:
    import sentry_sdk

    sentry_sdk.capture_exception(exc)
    sentry_sdk.flush(timeout=5)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)  # Celery catches exceptions raised by signal handlers


@worker_ready.connect
def start_watcher(sender: Any = None, **_: Any) -> None:
    global _watcher
    from worker import models

    _watcher = models.Watcher(sender.hostname, get_settings())
    _watcher.tick()  # /ready sees this worker at once
    _watcher.start()
    start_webhooks()
    start_sweeper()


def start_webhooks() -> None:
    """Webhook events are sent by a thread of each worker's main process (worker/webhooks.py)."""
    global _webhooks
    from core.connections import get_job_store
    from worker.webhooks import Deliverer

    _webhooks = Deliverer(get_job_store(), get_settings())
    _webhooks.start()


def start_sweeper() -> None:
    global _sweeper
    from core.connections import get_fair_share
    from worker.sweeper import Sweeper

    _sweeper = Sweeper(app, get_fair_share())
    _sweeper.start()


@worker_shutdown.connect
def stop_watcher(**_: Any) -> None:
    if _watcher is not None:
        _watcher.stop()
    if _webhooks is not None:
        _webhooks.stop()
    if _sweeper is not None:
        _sweeper.stop()
