"""The digitq client: a Python API (`digitq.Client`, `digitq.AsyncClient`) and the `digitq` command.

`pip install digitq` installs these alone (httpx and tqdm, no server dependencies):

    from digitq import Client
    with Client("http://127.0.0.1:8000", api_key="...") as dq:
        job = dq.submit(["scans/"], wait=True)
        for item in dq.results(job):
            print(item.name, item.digit, item.confidence)

More in examples/ (checked by mypy in `make lint`).
"""

from importlib.metadata import PackageNotFoundError, version

from digitq.async_client import AsyncClient
from digitq.client import Client
from digitq.models import DigitqError, Item, Job, Prediction, ProblemError, Unreachable

try:
    __version__ = version("digitq")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncClient", "Client", "DigitqError", "Item", "Job", "Prediction", "ProblemError", "Unreachable",
    "__version__",
]  # fmt: skip
