"""Several hosts on one machine: `make run-cluster` → `python -m devstack.cluster` (issue 23).

What a deployment over several machines looks like, with nothing shared but Redis and S3:
- one Redis (embedded) and one S3 server (moto's server mode) holding the uploads and the models;
- API processes on API_PORT and API_PORT + 1 (2 by default), each with a data directory of its own;
- worker hosts `host1`…`host3`, each a process group of its own (a Celery node `worker@hostN` and
  its pool), with its own DATA_DIR and model cache under DATA_DIR/cluster/hostN: the model comes
  from S3 (signed, verified), the uploads are read from S3 by ranged GETs. The group leader's pid
  is in DATA_DIR/cluster/hostN.pid: `kill -9 -- -$(cat data/cluster/host2.pid)` loses a machine;
- Flower once.

The secrets are one set for the whole deployment (DATA_DIR/cluster/secrets, or the environment):
every host gets the same Redis password, admin key, webhook secret and model-signing key through
its environment, as hosts of a real deployment get them from one secret store; no host generates
its own.

Ctrl-C stops everything. The APIs, Flower, Redis and S3 are restarted if they die (as `make run`
does); a worker host is not: it is a lost machine, and the other hosts finish its work (its
unacknowledged chunk comes back after VISIBILITY_TIMEOUT).

Built on devstack/stack.py's `Stack`: the same spawning, stopping and supervision.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3

from core.config import PROJECT_ROOT, Settings, get_settings, open_api_refusal
from devstack import secret_files
from devstack.embedded_redis import free_port
from devstack.stack import Stack, StackError, Supervisor, ensure_port_free, serve

BUCKET = "digitq"
HOSTS = 3
APIS = 2
# moto keeps no credentials of its own; any non-empty pair is accepted. Never real AWS here:
# AWS_ENDPOINT_URL points every client at the local server.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "digitq-cluster", "AWS_SECRET_ACCESS_KEY": "digitq-cluster-local"}


class Cluster:
    def __init__(
        self, settings: Settings, env: dict[str, str] | None = None, api_ports: list[int] | None = None
    ) -> None:
        self.root = settings.data_dir / "cluster"
        self.settings = settings.model_copy(update={"data_dir": self.root})
        self.stack = Stack(self.settings, env)
        self.api_ports = api_ports or [settings.api_port + n for n in range(APIS)]
        self.s3_url = ""
        self.hosts: list[str] = []

    @property
    def api_urls(self) -> list[str]:
        return [f"http://{self.settings.api_host}:{port}" for port in self.api_ports]

    def pid_file(self, host: str) -> Path:
        return self.root / f"{host}.pid"

    def start(self, hosts: int = HOSTS, flower: bool = True) -> None:
        stack, s = self.stack, self.settings
        # Refuse a busy port or an open API beyond loopback before starting anything (as make run).
        if refusal := open_api_refusal(s, s.api_host):
            raise StackError(refusal)
        for port in self.api_ports:
            ensure_port_free(s.api_host, port, "API_PORT")
        if flower:
            ensure_port_free(s.flower_host, s.flower_port, "FLOWER_PORT")
        secret_files.private_dir(self.root)
        self._shared_secrets()
        self.start_s3()
        stack.start_redis()
        self.push_model()
        for n in range(hosts):
            self.start_host(f"host{n + 1}")
        for n, port in enumerate(self.api_ports):
            stack.start_api(f"api{n + 1}", port, {"DATA_DIR": str(self.root / f"api{n + 1}")})
        if flower:
            stack.start_flower()
        for url in self.api_urls:
            stack.wait_for(f"{url}/health")
        if flower:
            stack.wait_for(f"{stack.flower_url}/healthcheck")

    def _shared_secrets(self) -> None:
        """One set for every host: from the environment if given, else generated once here."""
        stack, secrets = self.stack, self.root / "secrets"
        env = stack.env
        if not env.get("WEBHOOK_SECRET"):
            from core.webhooks import new_secret

            env["WEBHOOK_SECRET"] = secret_files.read_or_create(secrets / "webhook-secret", new_secret)
        if not env.get("ADMIN_API_KEYS"):
            env["ADMIN_API_KEYS"] = secret_files.read_or_create(secrets / "admin-api-key")
        if not env.get("MODEL_SIGNING_KEY"):
            env["MODEL_SIGNING_KEY"] = secret_files.read_or_create(secrets / "model-signing-key")

    def start_s3(self) -> None:
        port = free_port()
        self.s3_url = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self.stack._spawn("s3", args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.stack.starters["s3"] = self.start_s3_again
        self.stack.env.update(
            {
                **S3_CREDENTIALS,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.s3_url,
                "BLOB_URL": f"s3://{BUCKET}/uploads",
                "MODEL_REGISTRY": f"s3://{BUCKET}/models",
                "MODEL_URI": f"s3://{BUCKET}/models/latest",
            }
        )
        self.stack.wait_for(f"{self.s3_url}/moto-api/")
        self._s3().create_bucket(Bucket=BUCKET)

    def start_s3_again(self) -> None:
        """moto keeps its objects in memory: a restarted S3 is empty, so the model goes back in
        (uploads in flight are lost; their jobs fail their items, as with a lost bucket)."""
        port = int(self.s3_url.rsplit(":", 1)[1])
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self.stack._spawn("s3", args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.stack.wait_for(f"{self.s3_url}/moto-api/")
        self._s3().create_bucket(Bucket=BUCKET)
        self.push_model()

    def _s3(self):  # noqa: ANN202 - boto3's client types are generated
        return boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1", **_aws_keys())

    def push_model(self) -> None:
        """The local model (models/LATEST), signed, as the registry's latest: what every host pulls."""
        env = {**self.stack.env, "REDIS_URL": self.stack.redis_url or ""}
        done = subprocess.run(
            [sys.executable, "-m", "ml", "push", str(PROJECT_ROOT / "models")],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise StackError(f"could not push the model to the local S3: {done.stderr.strip()[-500:]}")

    def start_host(self, host: str) -> subprocess.Popen[bytes]:
        """A worker host: its own process group, data directory and (empty at first) model cache."""
        home = secret_files.private_dir(self.root / host)
        own = {"DATA_DIR": str(home), "MODEL_CACHE_DIR": str(home / "model-cache")}
        process = self.stack.start_worker(host, node=f"worker@{host}", own_env=own)
        self.pid_file(host).write_text(f"{process.pid}\n")
        if host not in self.hosts:
            self.hosts.append(host)
        return process

    def kill_host(self, host: str) -> None:
        """SIGKILL the host's whole process group (a lost machine); it stays dead."""
        process = self.stack.processes.pop(host)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        self.stack.stop()
        for host in self.hosts:
            self.pid_file(host).unlink(missing_ok=True)


def _aws_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


def main() -> int:
    cluster = Cluster(get_settings())

    def start() -> str:
        cluster.start()
        stack = cluster.stack
        return (
            "\ndigitq cluster is up\n"
            + "".join(f"  API {n + 1}   {url}\n" for n, url in enumerate(cluster.api_urls))
            + f"  Flower  {stack.flower_url}   (login user:password in {stack.flower_auth_file})\n"
            + f"  S3      {cluster.s3_url}   (moto: uploads and models, bucket {BUCKET})\n"
            + "".join(
                f"  {host}   worker@{host}, pid file {cluster.pid_file(host)}, data {cluster.root / host}\n"
                for host in cluster.hosts
            )
            + f"  Secrets (shared by every host) in {cluster.root / 'secrets'}\n"
            + f"Lose a host: kill -9 -- -$(cat {cluster.pid_file('host2')})   Ctrl-C stops everything.\n"
        )

    return serve(start, cluster.stop, lambda: Supervisor(cluster.stack, keep_dead=set(cluster.hosts)))


if __name__ == "__main__":
    raise SystemExit(main())
