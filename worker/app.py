"""The Celery worker application: `celery -A worker.app worker`."""

import logging
import os
from typing import Any

from celery.signals import worker_init

from core.config import get_settings
from core.queue import get_celery

# One BLAS/OpenMP thread per pool process: the pool already uses every core.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

app = get_celery()
app.conf.include = ["worker.tasks"]
log = logging.getLogger(__name__)


@worker_init.connect
def load_model(**_: Any) -> None:
    # In the main process before the pool forks: no chunk is taken before a model is loaded,
    # and the pool processes share the model's memory.
    from worker import models

    models.load_default(get_settings())
