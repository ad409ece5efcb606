"""Container health check for every role of the digitq image: `python docker/healthcheck.py`.

DIGITQ_ROLE=api     -> GET http://127.0.0.1:8000/health answers 200
DIGITQ_ROLE=flower  -> GET http://127.0.0.1:5555/healthcheck answers 200
DIGITQ_ROLE=worker  -> this container's worker heartbeat (digitq:worker:worker@<hostname>) is in
                       Redis; a worker heartbeats only once its model is loaded.
DIGITQ_ROLE=job     -> always healthy (one-shot steps such as the model push)
"""

import os
import socket
import sys
import urllib.request


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - fixed local URL
            return response.status == 200
    except OSError:
        return False


def worker_alive() -> bool:
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=4)
    return bool(client.exists(f"digitq:worker:worker@{socket.gethostname()}"))


def main() -> int:
    role = os.environ.get("DIGITQ_ROLE", "api")
    if role == "api":
        ok = http_ok(f"http://127.0.0.1:{os.environ.get('API_PORT', '8000')}/health")
    elif role == "flower":
        ok = http_ok(f"http://127.0.0.1:{os.environ.get('FLOWER_PORT', '5555')}/healthcheck")
    elif role == "worker":
        ok = worker_alive()
    else:
        ok = True
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
