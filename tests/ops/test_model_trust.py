"""Issue 8 finding 2: whoever can write the bucket must not run code on the workers.

The attacker here has write access to the registry bucket (moto's S3 over HTTP) but not the
deployer's MODEL_SIGNING_KEY. They upload a model.joblib whose unpickling would create a marker
file, with a metadata.json whose sha256 matches it: the checksum alone passes. Nothing may be
unpickled: no marker, nothing cached, a clear refusal (exit code 3 at start-up, 409 on reload).
"""

import json
from pathlib import Path

import pytest
from ops_helpers import (
    BUCKET,
    REGISTRY,
    SIGNING_KEY,
    TRUST,
    evil_metadata,
    local_model_dir,
    make_stack,
    upload,
)

from ml.registry import S3Registry
from ml.trust import ModelTrust, UntrustedModelError

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)


def test_worker_start_refuses_a_model_nothing_vouches_for(s3_server: str, tmp_path: Path) -> None:
    version, marker = "2099.05.05-hogsvm-evil", tmp_path / "pwned"
    upload(tmp_path / "evil", evil_metadata(tmp_path / "evil", version, marker))
    stack = make_stack(tmp_path / "stack", MODEL_URI=f"{REGISTRY}/{version}")
    try:
        stack.start_redis()
        code = stack.start_worker("worker1").wait(timeout=120)
    finally:
        stack.stop()
    log = stack.log("worker1")
    assert not marker.exists(), "the worker unpickled a model nothing vouched for"
    assert code == 3, log[-3000:]
    assert "REFUSING the model" in log and "is not trusted (it is unsigned" in log, log[-3000:]
    assert not (stack.settings.model_cache_dir / version).exists()
    assert SIGNING_KEY not in log


ATTACKER_KEY = "an-attacker-key-of-at-least-32-characters"


@pytest.mark.parametrize("forge", ["unsigned", "signed with another key", "signature of other metadata"])
def test_registry_refuses_forged_or_missing_signatures(s3_server: str, tmp_path: Path, forge: str) -> None:
    version, marker = f"2099.05.06-hogsvm-{forge.replace(' ', '-')}", tmp_path / "pwned"
    meta = evil_metadata(tmp_path / "evil", version, marker)
    if forge == "signed with another key":
        meta = ModelTrust.of(ATTACKER_KEY).sign(meta)
    elif forge == "signature of other metadata":  # a genuine signature, copied from another version
        meta["signature"] = TRUST.sign({**meta, "sha256": "0" * 64})["signature"]
    upload(tmp_path / "evil", meta)
    registry = S3Registry(REGISTRY, tmp_path / "cache", trust=TRUST)
    with pytest.raises(UntrustedModelError, match="not trusted"):
        registry.fetch(version)
    assert not marker.exists()
    assert not (tmp_path / "cache" / version).exists()


def test_allow_listed_digest_and_signed_push_are_trusted(s3_server: str, tmp_path: Path) -> None:
    version = "2099.05.07-hogsvm-pinned"
    source = local_model_dir()
    s3 = S3Registry(REGISTRY).s3  # an unsigned upload of the real model
    s3.upload_file(str(source / "model.joblib"), BUCKET, f"registry/{version}/model.joblib")
    meta = {**json.loads((source / "metadata.json").read_text()), "version": version}
    s3.put_object(Bucket=BUCKET, Key=f"registry/{version}/metadata.json", Body=json.dumps(meta).encode())

    with pytest.raises(UntrustedModelError):
        S3Registry(REGISTRY, tmp_path / "a", trust=TRUST).fetch(version)
    pinned = ModelTrust.of(None, [meta["sha256"].upper()])
    assert (S3Registry(REGISTRY, tmp_path / "b", trust=pinned).fetch(version) / "model.joblib").exists()

    # A cached copy is re-checked: a worker whose trust no longer covers it downloads it again
    # (and refuses it), it does not load the stale copy.
    with pytest.raises(UntrustedModelError):
        S3Registry(REGISTRY, tmp_path / "b", trust=TRUST).fetch(version)
    assert not (tmp_path / "b" / version).exists()
