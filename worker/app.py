"""The Celery worker application: `celery -A worker.app worker`.

Signals wire in the operations side: logging (ours, not Celery's), Sentry, the model loaded in
the main process before the pool forks (worker_init), and the main process' background duties
(worker_ready, worker/scheduler.py): heartbeat, reloads, webhook deliveries, sweeps.
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
_member: Any = None
_webhooks: Any = None
_scheduler: Any = None


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
def start_duties(sender: Any = None, **_: Any) -> None:
    """The main process' background duties (worker/scheduler.py), once the pool is up."""
    global _member, _webhooks, _scheduler
    from core.connections import get_job_store
    from worker.models import FleetMember
    from worker.scheduler import Scheduler, duties
    from worker.webhooks import Deliverer

    settings = get_settings()
    _member = FleetMember(sender.hostname, settings)
    _member.beat()  # before the signal returns: /ready sees this worker at once
    _webhooks = Deliverer(get_job_store(), settings)
    _scheduler = Scheduler(duties(_member, _webhooks, app, settings))
    _scheduler.start()


@worker_shutdown.connect
def stop_duties(**_: Any) -> None:
    if _scheduler is not None:
        _scheduler.stop()
    if _webhooks is not None:
        _webhooks.stop()  # the events being sent come due again after their lease
    if _member is not None:
        _member.leave()
