"""The digitq client: a Python API (`digitq.client`) and the `digitq` command (`digitq.cli`).

Free of server dependencies (httpx and the standard library only), so it installs anywhere:

    from digitq import Client
    with Client("http://127.0.0.1:8000", api_key="...") as dq:
        job = dq.submit(["scans/"], wait=True)
        for item in dq.results(job):
            print(item.name, item.digit, item.confidence)
"""

from digitq.client import Client, DigitqError, Item, Job, Prediction, ProblemError, Unreachable

__all__ = ["Client", "DigitqError", "Item", "Job", "Prediction", "ProblemError", "Unreachable"]
