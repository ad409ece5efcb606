"""The Grafana dashboard and the Prometheus alert rules (docker/) query only metrics that GET /metrics
really exports, with label names it really uses: a renamed metric cannot leave a panel or an alert
silently empty. Fast tier: /metrics renders from Redis, no worker needed (a heartbeat written the
way a worker writes it stands in for one)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core import fleet
from core.config import PROJECT_ROOT

DOCKER = PROJECT_ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "digitq.json"
ALERTS = DOCKER / "alerts.yml"
METRIC = re.compile(r"\b(digitq_[a-z0-9_]+)\b")
# `name{label="value", other=~"a|b"}`: the label names a selector matches on.
SELECTOR = re.compile(r"\b(digitq_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
# Lanes (issue 9) are coming as a label of digitq_queue_depth; `by (lane)` works before they are.
LATER_LABELS = {"lane"}


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for g in groups for rule in g["rules"]]


@pytest.fixture
def scrape(app_client: TestClient, redis_client) -> dict[str, set[str]]:
    """Every sample name of a real /metrics answer, with the label names it carries."""
    fleet.beat(redis_client, "worker1@test", {"model_version": "v1", "concurrency": 1})
    redis_client.set(fleet.CURRENT_KEY, "v1")
    app_client.get("/jobs/" + "0" * 32)  # a 404: the response counters have something to show
    response = app_client.get("/metrics")
    assert response.status_code == 200
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_queried_metric_and_label_exists_in_metrics(source: str, scrape: dict[str, set[str]]) -> None:
    expressions = dashboard_expressions() if source == "dashboard" else alert_expressions()
    assert len(expressions) >= 4
    for expr in expressions:
        names = METRIC.findall(expr)
        assert names or "up{" in expr, f"{expr!r} queries no digitq metric"
        missing = [n for n in names if n not in scrape]
        assert not missing, f"{source}: {expr!r} queries {missing}, not in /metrics: {sorted(scrape)}"
        for name, matchers in SELECTOR.findall(expr):
            labels = set(LABEL.findall(matchers))
            assert labels <= scrape[name], f"{source}: {expr!r}: {name} has no label {labels - scrape[name]}"
        known = set().union(*(scrape[n] for n in names)) | {"le"} | LATER_LABELS if names else set()
        for grouping in GROUPING.findall(expr):
            labels = {label.strip() for label in grouping.split(",") if label.strip()}
            assert labels <= known, f"{source}: {expr!r} groups by unknown {labels - known}"


def test_the_dashboard_covers_what_operators_watch() -> None:
    queried = set(METRIC.findall(" ".join(dashboard_expressions())))
    assert {
        "digitq_jobs_submitted_total", "digitq_jobs_finished_total", "digitq_items_processed_total",
        "digitq_queue_depth", "digitq_chunk_seconds_bucket", "digitq_workers",
        "digitq_worker_model_info", "digitq_http_responses_total",
    } <= queried  # fmt: skip
    assert all(p["datasource"]["uid"] == "prometheus" for p in json.loads(DASHBOARD.read_text())["panels"])


def test_alert_rules_are_well_formed_and_cover_the_four_conditions() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    by_name = {r["alert"]: r for r in rules}
    assert {"DigitqNoReadyWorker", "DigitqQueueBacklogGrowing", "DigitqFailedItems", "DigitqHttp5xx"} <= set(
        by_name
    )
    assert by_name["DigitqNoReadyWorker"]["for"] == "1m"
    assert by_name["DigitqQueueBacklogGrowing"]["for"] == "10m"
    assert "> 0.05" in by_name["DigitqFailedItems"]["expr"] and "> 0.01" in by_name["DigitqHttp5xx"]["expr"]
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"} and rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")")


def test_prometheus_loads_the_rules_and_grafana_is_provisioned() -> None:
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]
    assert "./docker/alerts.yml:/etc/prometheus/alerts.yml:ro" in compose["prometheus"]["volumes"]
    grafana = compose["grafana"]["volumes"]
    for mount in grafana:
        host = mount.split(":")[0]
        if host.startswith("./"):
            assert (PROJECT_ROOT / host).is_dir(), f"{mount}: nothing at {host}"
    provisioning = DOCKER / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "digitq.yml").read_text())["providers"]
    assert Path(provider["options"]["path"]) == Path("/var/lib/grafana/dashboards")


def test_api_responses_are_counted_by_status_class(app_client: TestClient) -> None:
    def count(status_class: str) -> float:
        text = app_client.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "digitq_http_responses_total" and s.labels["status_class"] == status_class:
                    return s.value
        raise AssertionError("digitq_http_responses_total missing")

    before_4xx, before_2xx = count("4xx"), count("2xx")
    app_client.get("/jobs/" + "0" * 32)
    app_client.post("/jobs")
    assert count("4xx") == before_4xx + 2
    assert count("2xx") >= before_2xx + 1  # the previous /metrics scrape


def test_promtool_parses_the_rules_and_every_dashboard_query(tmp_path: Path) -> None:
    """Prometheus' own parser (Debian's `prometheus` package ships promtool)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install -y --no-install-recommends prometheus)")
    rules = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    queries_ = enumerate(dashboard_expressions())
    recorded = [{"record": f"digitq:panel_query_{i}", "expr": e} for i, e in queries_]
    queries = tmp_path / "dashboard-queries.yml"
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    parsed = subprocess.run([promtool, "check", "rules", str(queries)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
