"""Wrong credentials against an S3 server that checks them.

moto accepts any access key by default. Its ``INITIAL_NO_AUTH_ACTION_COUNT`` setting turns on
IAM authentication (SigV4 signature and access-key checks) after that many requests, so a
moto server in its own process is started with the count set to exactly the four requests that
create a user, its policy, its access key and the bucket; every request after that must be
signed by a key moto issued.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import boto3
import pytest

from storage.cold import S3BlobStore
from storage.errors import StoreUnavailable
from tests.storage_tiers.conftest import moto_process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def authenticating_s3() -> Iterator[tuple[str, str, str, str]]:
    with moto_process({"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as endpoint:
        kw = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", **kw)  # type: ignore[arg-type]
        iam.create_user(UserName="arca")
        iam.put_user_policy(
            UserName="arca",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="arca")["AccessKey"]
        boto3.client("s3", **kw).create_bucket(Bucket="arca-auth")  # type: ignore[arg-type]
        yield endpoint, "arca-auth", key["AccessKeyId"], key["SecretAccessKey"]


async def test_wrong_credentials_fail_the_startup_check(
    authenticating_s3: tuple[str, str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, bucket, key_id, secret = authenticating_s3
    # The right key works (so the failure below is about the key, not the setup) ...
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    good = S3BlobStore(f"s3://{bucket}/p", endpoint_url=endpoint, region="us-east-1")
    try:
        await good.check()
    finally:
        await good.close()
    # ... a wrong secret is refused with a message that names the credentials, not the secret.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    bad = S3BlobStore(f"s3://{bucket}/p", endpoint_url=endpoint, region="us-east-1")
    try:
        with pytest.raises(StoreUnavailable) as info:
            await bad.check()
    finally:
        await bad.close()
    message = str(info.value)
    assert "credentials" in message
    assert "not-the-secret" not in message and secret not in message
