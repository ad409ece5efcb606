"""The deployment files agree with the code (issue 23): deploy/k8s/ validates against Kubernetes'
schemas (kubernetes-validate, its schemas bundled in the wheel: offline), strict for the core kinds;
KEDA's CRDs, which it has no schema for, are checked for what can be checked here; the names of
docker-compose.yml's environment and .env.example match the settings core/config.py reads.
Fast tier: no worker, no network."""

import re
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from kubernetes_validate import utils as kubernetes_validate

from core.config import PROJECT_ROOT, Settings
from core.queue import chunk_time_limits

K8S = PROJECT_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest minor still supported upstream when this was written
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
SETTINGS = {name.upper() for name in Settings.model_fields}
# Variables read by something other than core/config.py, each with its reader.
NOT_SETTINGS = {
    "AWS_ACCESS_KEY_ID": "boto3 (S3 credentials)",
    "AWS_SECRET_ACCESS_KEY": "boto3",
    "AWS_DEFAULT_REGION": "boto3",
    "AWS_ENDPOINT_URL": "boto3 (MinIO or another S3 endpoint)",
    "DIGITQ_ROLE": "docker/healthcheck.py: which check",
    "CELERY_BROKER_URL": "Flower's broker",
    "FLOWER_BASIC_AUTH": "Flower's login",
    "REDIS_PASSWORD": "KEDA's Redis trigger (keda.yaml); compose builds REDIS_URL from it",
}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return found


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def test_kubernetes_validate_works_offline_with_bundled_schemas() -> None:
    """The schemas ship in the wheel: nothing is fetched (a failure here means they moved)."""
    assert KUBERNETES_VERSION in {".".join(v.split(".")[:2]) for v in kubernetes_validate.all_versions()}


@pytest.mark.parametrize("source,doc", manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_core_manifests_validate_strictly(source: str, doc: dict[str, Any]) -> None:
    if doc["kind"] in KEDA_KINDS:
        pytest.skip("a KEDA CRD: kubernetes-validate has no schema for it (checked below)")
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The check above can fail: a misspelt field (readinessProbe -> readynessProbe) is refused."""
    api = by_kind("Deployment")["digitq-api"]
    bad = yaml.safe_load(yaml.safe_dump(api))
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_every_manifest_kind_is_known() -> None:
    kinds = {doc["kind"] for _, doc in manifests()}
    assert kinds >= {"Deployment", "Service", "ConfigMap", "Secret", "ScaledObject"}
    for _, doc in manifests():
        if doc["kind"] not in KEDA_KINDS:
            continue
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_keda_scaled_object_targets_the_workers_with_a_floor(app_client: TestClient) -> None:
    """What KEDA's CRD would check, and what it cannot: the target and the auth exist, the floor is
    at least one worker, and each Prometheus query asks for a series /metrics/jobs really exports."""
    (scaled,) = by_kind("ScaledObject").values()
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] in by_kind("Deployment")
    assert spec["scaleTargetRef"]["name"] == "digitq-worker"
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    secret = by_kind("Secret")["digitq-secrets"]["stringData"]
    exported = app_client.get("/metrics/jobs").text
    lanes = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] in {"prometheus", "redis"}
        meta = trigger["metadata"]
        if trigger["type"] == "prometheus":
            metric, lane = re.fullmatch(r'sum\((\w+)\{lane="(\w+)"\}\)', meta["query"]).groups()  # type: ignore[union-attr]
            assert f'{metric}{{lane="{lane}"}}' in exported
            lanes.add(lane)
            assert int(meta["threshold"]) > 0
        else:
            assert meta["listName"] == "digitq.interactive"
            auth = by_kind("TriggerAuthentication")[trigger["authenticationRef"]["name"]]
            for ref in auth["spec"]["secretTargetRef"]:
                assert ref["name"] == "digitq-secrets" and ref["key"] in secret
    assert lanes == {"bulk", "interactive"}


def _container(name: str) -> dict[str, Any]:
    return by_kind("Deployment")[name]["spec"]["template"]["spec"]["containers"][0]


def test_api_probes_and_worker_grace() -> None:
    api = _container("digitq-api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    config = by_kind("ConfigMap")["digitq-settings"]["data"]
    settings = Settings(visibility_timeout=int(config["VISIBILITY_TIMEOUT"]))
    _, hard_limit = chunk_time_limits(settings)
    worker = by_kind("Deployment")["digitq-worker"]["spec"]["template"]["spec"]
    # A scale-down's SIGTERM lets the running chunk finish: grace beyond the hard limit.
    assert worker["terminationGracePeriodSeconds"] > hard_limit + 10
    assert "$WORKER_PROCESSES" in " ".join(worker["containers"][0]["command"])  # -c and the setting agree


def test_every_k8s_variable_is_read_and_secrets_are_in_the_secret() -> None:
    config = by_kind("ConfigMap")["digitq-settings"]["data"]
    secret = by_kind("Secret")["digitq-secrets"]["stringData"]
    for name in [*config, *secret]:
        assert name in SETTINGS or name in NOT_SETTINGS, f"{name}: nothing reads it"
    secret_fields = {
        name.upper() for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
    }
    assert secret_fields <= set(secret), f"not in the Secret: {secret_fields - set(secret)}"
    assert not secret_fields & set(config), "a secret in the ConfigMap"
    assert "REDIS_URL" in secret  # it carries the password
    for name, deployment in by_kind("Deployment").items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        refs = {next(iter(ref.values()))["name"] for ref in container.get("envFrom", [])}
        assert refs <= {"digitq-settings", "digitq-secrets"}, name
        resources = container["resources"]
        assert resources["requests"] and resources["limits"], f"{name}: no requests/limits"


# docker-compose.yml ---------------------------------------------------------------------------

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
DIGITQ_SERVICES = ("model-push", "api", "worker", "flower")
# Settings compose leaves at their defaults, each with why (the other direction of the check).
COMPOSE_DEFAULTS = {
    "DATA_DIR": "the image sets it (docker/Dockerfile)",
    "MODEL_CACHE_DIR": "the image sets it",
    "API_PORT": "the command's --port",
    "FLOWER_HOST": "the command's --address",
    "FLOWER_PORT": "the command's --port",
    "WORKERS": "make run only: compose scales the worker service instead",
    "TRUSTED_MODEL_SHA256": "compose signs with MODEL_SIGNING_KEY instead",
    "WEBHOOK_ALLOW_PRIVATE": "off: the SSRF guard stays on",
}


def _environment(service: str) -> dict[str, str]:
    env = COMPOSE["services"][service].get("environment") or {}
    return {k: str(v) for k, v in env.items()}


def test_compose_sets_only_variables_something_reads() -> None:
    for service in DIGITQ_SERVICES:
        for name in _environment(service):
            assert name in SETTINGS or name in NOT_SETTINGS, f"{service}: {name} is read by nothing"


def test_settings_reach_compose_or_have_a_reason() -> None:
    """The other direction, where it makes sense: each setting is in the digitq services' common
    environment (x-digitq), in the service that reads it, or left to its default for a reason."""
    named = set().union(*(_environment(s) for s in DIGITQ_SERVICES))
    tunables = {name for name in SETTINGS if name not in named and name not in COMPOSE_DEFAULTS}
    # Plain limits and tunables keep their defaults unless the operator adds them; secrets and
    # whatever decides where data lives must be there.
    must = {"REDIS_URL", "BLOB_URL", "MODEL_URI", "MODEL_REGISTRY", "API_KEYS", "ADMIN_API_KEYS"}
    must |= {"WEBHOOK_SECRET", "MODEL_SIGNING_KEY", "METRICS_TOKEN", "SENTRY_DSN", "WORKER_PROCESSES"}
    assert not must & tunables, f"missing from docker-compose.yml: {sorted(must & tunables)}"


def test_worker_processes_reaches_the_worker() -> None:
    """`-c` alone sized the pool; the heartbeat and the bulk window read WORKER_PROCESSES."""
    worker = COMPOSE["services"]["worker"]
    assert "WORKER_PROCESSES" in _environment("worker")
    c = worker["command"][worker["command"].index("-c") + 1]
    assert c == _environment("worker")["WORKER_PROCESSES"]


def test_env_example_holds_every_variable_compose_needs() -> None:
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    needed = set(re.findall(r"\$\{(\w+):\?", text))  # compose refuses to start without these
    optional = set(re.findall(r"\$\{(\w+):-", text))
    example = dict(
        line.split("=", 1)
        for line in (PROJECT_ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert needed <= set(example), f".env.example lacks {sorted(needed - set(example))}"
    secrets = {"WEBHOOK_SECRET", "API_KEYS", "ADMIN_API_KEYS", "METRICS_TOKEN"}
    assert secrets <= set(example) and secrets <= needed | optional
    assert example["WEBHOOK_SECRET"].startswith("whsec_")


def test_compose_services_do_not_run_as_root_or_listen_open() -> None:
    services = COMPOSE["services"]
    for name in ("redis", "minio"):
        user = str(services[name].get("user", ""))
        assert user and not user.startswith("0") and user != "root", f"{name} runs as root"
    for name, service in services.items():
        for port in service.get("ports", []):
            if name != "api":  # the API refuses to serve without API_KEYS (api/deps.py)
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_prometheus_scrapes_the_job_counters_once_with_the_token() -> None:
    config = yaml.safe_load((PROJECT_ROOT / "docker" / "prometheus.yml").read_text())
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    assert jobs["digitq-jobs"]["metrics_path"] == "/metrics/jobs"
    assert len(jobs["digitq-jobs"]["static_configs"][0]["targets"]) == 1
    assert jobs["digitq-api"]["metrics_path"] == "/metrics/process"
    for name in ("digitq-jobs", "digitq-api"):
        assert "credentials_file" in jobs[name]["authorization"]
