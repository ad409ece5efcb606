"""Recognise a folder of scans with the synchronous client, then one image inline.

    DIGITQ_URL=http://127.0.0.1:8000 python examples/recognise.py scans/ seven.png

Type-checked by `make lint` (mypy), and run against a live stack by tests/test_client.py.
"""

import os
import sys

from digitq import Client, Job, Prediction, ProblemError


def main(folder: str, image: str) -> int:
    with Client(
        os.environ.get("DIGITQ_URL", "http://127.0.0.1:8000"), os.environ.get("DIGITQ_API_KEY")
    ) as dq:
        job: Job = dq.submit([folder], wait=True, metadata={"source": "example"})
        print(f"job {job.id}: {job.status}, {job.counts.done}/{job.counts.total} done")
        for item in dq.results(job):
            print(item.index, item.name, item.digit, item.confidence)
        try:
            prediction: Prediction = dq.predict(image)
        except ProblemError as exc:  # an unreadable image is a 422 problem, never a crash
            print(f"{image}: {exc.status} {exc.title}: {exc.detail}")
            return 1
        print(f"{image}: {prediction.digit} ({prediction.confidence:.3f})")
    return 0 if job.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
