"""Candidates, promotion and rollback against moto's S3 server: `python -m ml compare | promote |
rollback` and the /admin routes. Fast tier: no worker runs (an idle fleet's `current` follows)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import redis

from core import fleet
from core.promotion import RegistryPointer
from ml import sources
from ml.cli import main
from ml.compare import compare, held_out_items
from ml.model import DigitModel
from ml.registry import S3Registry
from tests.ml.tiny import digits, tiny_model, write_idx
from tests.ops.ops_helpers import ADMIN_KEY, BUCKET, SIGNING_KEY, TRUST

ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """good (600 digits) and bad (60 digits) tiny models, and held-out digits neither saw."""
    root = tmp_path_factory.mktemp("promotion")
    X, y = digits(300, start=2000)
    return {
        "good": tiny_model(root / "models", 600),
        "bad": tiny_model(root / "models", 60, start=600),
        "data": write_idx(root / "held-out", X, y, "t10k"),
    }


@pytest.fixture
def registry(s3_server: str, models) -> str:
    """A registry of its own: `good` pushed as latest, `bad` pushed as a candidate."""
    uri = f"s3://{BUCKET}/promotion-{uuid.uuid4().hex[:8]}"
    s3 = S3Registry(uri, trust=TRUST)
    good = s3.push(models["good"], set_latest=False)
    RegistryPointer(uri).move_latest(good)
    s3.push(models["bad"], set_latest=False)
    return uri


def record(models, candidate: str, against: str) -> dict:
    parts = held_out_items([sources.load(str(models["data"]))], bundled=False)
    return compare(DigitModel.load(models[candidate]), DigitModel.load(models[against]), parts)


def test_cli_compare_records_then_promote_is_refused_forced_and_rolled_back(
    registry: str, models, capsys, caplog
) -> None:
    good, bad = models["good"].name, models["bad"].name
    pointer = RegistryPointer(registry)
    data = ["--no-bundled", "--data", str(models["data"])]
    against = ["--against", str(models["good"])]
    assert main(["compare", str(models["bad"]), *against, *data, "--registry", registry]) == 0
    assert "-> worse" in capsys.readouterr().out
    stored = pointer.comparison(bad)
    assert stored is not None and (stored["against"], stored["verdict"]) == (good, "worse")

    assert main(["promote", bad, "--registry", registry, "--no-reload"]) == 1
    assert "significantly worse" in capsys.readouterr().err
    assert pointer.latest() == good  # refused: nothing moved

    with caplog.at_level(logging.WARNING):
        assert main(["promote", bad, "--force", "--registry", registry, "--no-reload"]) == 0
    assert any("force" in r.getMessage() and bad in r.getMessage() for r in caplog.records)  # logged
    assert pointer.latest() == bad and pointer.history() == [good]

    assert main(["rollback", "--registry", registry, "--no-reload"]) == 0
    assert f"latest: {bad} -> {good}" in capsys.readouterr().out
    assert pointer.latest() == good and pointer.history() == []
    assert main(["rollback", "--registry", registry, "--no-reload"]) == 1
    assert "no earlier version" in capsys.readouterr().err


def test_cli_promote_without_a_record_compares_first(
    registry: str, models, tmp_path: Path, monkeypatch, capsys
) -> None:
    """No comparison against today's latest: `promote` fetches both versions (signed, verified)
    and compares them on the bundled held-out digits before deciding."""
    from core.config import get_settings

    monkeypatch.setenv("MODEL_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    try:
        assert main(["promote", models["bad"].name, "--registry", registry, "--no-reload"]) == 1
    finally:
        get_settings.cache_clear()
    captured = capsys.readouterr()
    assert "1000 held-out digits" in captured.out and "significantly worse" in captured.err
    stored = RegistryPointer(registry).comparison(models["bad"].name)
    assert stored is not None and stored["items"] == 1000 and stored["verdict"] == "worse"
    assert RegistryPointer(registry).latest() == models["good"].name


def test_push_candidate_leaves_latest_alone(registry: str, models, tmp_path: Path) -> None:
    pointer = RegistryPointer(registry)
    before = pointer.latest()
    other = tiny_model(tmp_path, 100, start=3000)
    assert main(["push", str(other), "--candidate", "--registry", registry]) == 0
    assert pointer.latest() == before and pointer.exists(other.name)
    assert main(["push", str(other), "--registry", registry]) == 0  # a plain push moves it...
    assert pointer.latest() == other.name and pointer.history() == [before]  # ...and can be undone


def test_list_shows_what_each_version_learnt_from(registry: str, models, capsys) -> None:
    assert main(["list", "--registry", registry]) == 0
    out = capsys.readouterr().out
    assert "learnt from idx tiny-600-0: 600 digits (540 trained, 60 held out, held-out accuracy" in out
    assert "learnt from idx tiny-60-600: 60 digits" in out


def test_admin_promote_needs_a_passing_comparison_unless_forced(
    registry: str, models, make_client, redis_url: str, caplog
) -> None:
    good, bad = models["good"].name, models["bad"].name
    pointer = RegistryPointer(registry)
    client = make_client(ADMIN_API_KEYS=ADMIN_KEY, MODEL_REGISTRY=registry)
    r = redis.Redis.from_url(redis_url)
    r.set(fleet.CURRENT_KEY, good)  # what an earlier reload left: a starting worker serves it

    refused = client.post(f"/admin/models/{bad}/promote", headers=ADMIN)
    assert refused.status_code == 409 and "no comparison record" in refused.json()["detail"]

    pointer.record_comparison(record(models, "bad", "good"))
    refused = client.post(f"/admin/models/{bad}/promote", json={}, headers=ADMIN)
    assert refused.status_code == 409 and "significantly worse" in refused.json()["detail"]
    assert pointer.latest() == good and r.get(fleet.CURRENT_KEY) == good.encode()

    assert client.post(f"/admin/models/{bad}/promote", json={"force": True}).status_code in (401, 403)
    with caplog.at_level(logging.WARNING):
        forced = client.post(f"/admin/models/{bad}/promote", json={"force": True}, headers=ADMIN)
    assert forced.status_code == 200, forced.text
    assert forced.json() == {"version": bad, "previous": good, "workers": [], "forced": True}
    assert any("WITH FORCE" in rec.getMessage() for rec in caplog.records)
    assert pointer.latest() == bad and r.get(fleet.CURRENT_KEY) == bad.encode()

    back = client.post("/admin/models/rollback", headers=ADMIN)
    assert back.status_code == 200 and back.json()["version"] == good
    assert pointer.latest() == good and r.get(fleet.CURRENT_KEY) == good.encode()
    again = client.post("/admin/models/rollback", headers=ADMIN)
    assert again.status_code == 409 and "no earlier version" in again.json()["detail"]


def test_admin_promote_of_a_candidate_that_is_not_worse(registry: str, models, make_client) -> None:
    good, bad = models["good"].name, models["bad"].name
    pointer = RegistryPointer(registry)
    pointer.move_latest(bad)
    pointer.record_comparison(record(models, "good", "bad"))  # good vs the latest: better
    client = make_client(ADMIN_API_KEYS=ADMIN_KEY, MODEL_REGISTRY=registry)
    ok = client.post(f"/admin/models/{good}/promote", headers=ADMIN)
    assert ok.status_code == 200, ok.text
    assert ok.json()["forced"] is False and pointer.latest() == good

    # A record against another latest is stale: compared with `bad`, but latest is `good` now.
    stale = client.post(f"/admin/models/{good}/promote", headers=ADMIN)
    assert stale.status_code == 409 and "compare again" in stale.json()["detail"]
    unknown = client.post("/admin/models/2099.01.01-hogsvm-nope/promote", headers=ADMIN)
    assert unknown.status_code == 404
    assert client.post("/admin/models/..hidden/promote", headers=ADMIN).status_code == 404


def test_admin_promote_without_a_registry_is_a_clear_409(make_client) -> None:
    client = make_client(ADMIN_API_KEYS=ADMIN_KEY, MODEL_REGISTRY="")
    response = client.post("/admin/models/v1/promote", headers=ADMIN)
    assert response.status_code == 409 and "MODEL_REGISTRY" in response.json()["detail"]
