"""The compose S3 policies (docker/minio/*.json) enforced by a policy engine: moto's IAM, in a
moto server of its own with authentication on (the session's moto server has it off).

The services' user must not be able to write models/ (finding 2: whoever writes there chooses
what the workers load); only the publisher (model-push) may, and it cannot touch uploads/.
moto evaluates object actions on resources as AWS does (MinIO follows the same policy
language); it does not enforce ListBucket conditions or multi-object deletes, so those are
not asserted here.
"""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from ops_helpers import TRUST, local_model_dir

from core.config import PROJECT_ROOT
from devstack.embedded_redis import free_port
from ml.registry import RegistryUnavailable, S3Registry
from tests.helpers import wait_until

pytestmark = pytest.mark.stack  # a moto server process (see tests/helpers.py)

BUCKET = "digitq"  # the policies name the compose bucket


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def s3_users() -> Iterator[dict]:
    """{role: boto3 S3 client signed as that role's IAM user}, with IAM enforced."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _up(url), timeout=60, what="moto server")
        setup = {"endpoint_url": url, "region_name": "us-east-1"}
        setup |= {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", **setup)
        clients = {}
        for role in ("service", "publisher"):
            document = (PROJECT_ROOT / "docker" / "minio" / f"digitq-{role}.json").read_text()
            arn = iam.create_policy(PolicyName=f"digitq-{role}", PolicyDocument=document)["Policy"]["Arn"]
            iam.create_user(UserName=f"digitq-{role}")
            iam.attach_user_policy(UserName=f"digitq-{role}", PolicyArn=arn)
            key = iam.create_access_key(UserName=f"digitq-{role}")["AccessKey"]
            clients[role] = boto3.client(
                "s3",
                endpoint_url=url,
                region_name="us-east-1",
                aws_access_key_id=key["AccessKeyId"],
                aws_secret_access_key=key["SecretAccessKey"],
            )
        httpx.post(f"{url}/moto-api/reset-auth", content=b"0").raise_for_status()  # IAM from now on
        yield clients
    finally:
        server.terminate()
        server.wait(30)


def denied(call) -> bool:
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "AccessDenied"
    return False


def test_only_the_publisher_writes_models_and_services_read_them(s3_users: dict, tmp_path: Path) -> None:
    registry = f"s3://{BUCKET}/models"
    as_service = S3Registry(registry, tmp_path / "cache", client=s3_users["service"], trust=TRUST)
    with pytest.raises(RegistryUnavailable, match="AccessDenied"):
        as_service.push(local_model_dir())  # a leaked service credential cannot plant a model
    version = S3Registry(registry, client=s3_users["publisher"], trust=TRUST).push(local_model_dir())
    assert as_service.resolve("latest") == version
    assert (as_service.fetch(version) / "model.joblib").exists()  # downloaded, verified, trusted
    assert denied(lambda: s3_users["service"].put_object(Bucket=BUCKET, Key="models/latest", Body=b"x"))


def test_services_use_uploads_and_the_publisher_cannot(s3_users: dict) -> None:
    service, publisher = s3_users["service"], s3_users["publisher"]
    service.put_object(Bucket=BUCKET, Key="uploads/job/part-0", Body=b"image")
    assert service.get_object(Bucket=BUCKET, Key="uploads/job/part-0")["Body"].read() == b"image"
    assert denied(lambda: publisher.put_object(Bucket=BUCKET, Key="uploads/job/part-1", Body=b"x"))
    assert denied(lambda: publisher.get_object(Bucket=BUCKET, Key="uploads/job/part-0"))
    assert denied(lambda: service.put_object(Bucket=BUCKET, Key="elsewhere", Body=b"x"))
