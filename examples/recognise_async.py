"""The same with `AsyncClient`: several images recognised concurrently, then a job followed.

    DIGITQ_URL=http://127.0.0.1:8000 python examples/recognise_async.py a.png b.png scans/

Type-checked by `make lint` (mypy), and run against a live stack by tests/test_client.py.
"""

import asyncio
import os
import sys

from digitq import AsyncClient, Item, Prediction


async def main(images: list[str], folder: str) -> int:
    url = os.environ.get("DIGITQ_URL", "http://127.0.0.1:8000")
    async with AsyncClient(url, api_key=os.environ.get("DIGITQ_API_KEY")) as dq:
        answers: list[Prediction] = await asyncio.gather(*(dq.predict(image) for image in images))
        for image, answer in zip(images, answers, strict=True):
            print(f"{image}: {answer.digit} ({answer.confidence:.3f}, job {answer.job_id})")
        job = await dq.submit([folder])
        finished = await dq.wait(job, progress=lambda j: print(f"{j.counts.done}/{j.counts.total}"))
        items: list[Item] = [item async for item in dq.results(finished)]
        print(f"job {finished.id}: {finished.status}, {len(items)} items")
    return 0 if finished.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:-1], sys.argv[-1])))
