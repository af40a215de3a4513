"""S3-compatible object storage: boto3 preflight (the bucket exists and stands in the
policy's region), then restic's s3 backend with credentials in its environment only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bkp import secrets
from bkp.destinations import Preflight, cache_options
from bkp.errors import OperationError, SafetyError
from bkp.policy import Policy
from bkp.restic import Repository


def bucket_region(location_constraint: str | None) -> str:
    # S3 reports the historic default region as no constraint at all.
    return location_constraint or "us-east-1"


@dataclass
class S3Destination:
    policy: Policy
    home: Path

    @property
    def dest(self):
        return self.policy.destination

    @property
    def prefix(self) -> str:
        return self.dest.prefix.strip("/")

    @property
    def label(self) -> str:
        return f"s3:{self.dest.endpoint.rstrip('/')}/{self.dest.bucket}/{self.prefix}".rstrip("/")

    def _credentials(self) -> secrets.S3Credentials:
        return secrets.s3_credentials(Path(self.dest.credentials_file),
                                      self.dest.credentials_profile or "default")

    def _client(self):
        import boto3
        from botocore.config import Config

        creds = self._credentials()
        return boto3.session.Session().client(
            "s3", endpoint_url=self.dest.endpoint, region_name=self.dest.region,
            aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
            aws_session_token=creds.session_token,
            config=Config(connect_timeout=15, read_timeout=60,
                          retries={"max_attempts": 3, "mode": "standard"}))

    def preflight(self) -> Preflight:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        try:
            location = client.get_bucket_location(Bucket=self.dest.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404"):
                raise OperationError(
                    f"bucket {self.dest.bucket} does not exist at {self.dest.endpoint}; "
                    f"create it in region {self.dest.region} first") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise OperationError(f"{self.dest.endpoint} refused the credentials in "
                                     f"{self.dest.credentials_file} ({code})") from None
            raise OperationError(f"S3 preflight of {self.label} failed: {code}") from None
        except BotoCoreError as exc:
            raise OperationError(f"cannot reach S3 endpoint {self.dest.endpoint}: {exc}; "
                                 f"check the network and the endpoint") from None
        actual = bucket_region(location.get("LocationConstraint"))
        if actual != self.dest.region:
            raise SafetyError(
                f"bucket {self.dest.bucket} stands in region {actual}, the policy says "
                f"{self.dest.region}: refusing to write (data must rest where the policy "
                f"says). Fix the policy or use a bucket in {self.dest.region}")
        return Preflight(True, self._object_exists(client, self._key("config")))

    def nightly_preflight(self) -> Preflight:
        # The bucket's region is checked every night: data must never go where it moved.
        return self.preflight()

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _object_exists(self, client, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            client.head_object(Bucket=self.dest.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise OperationError(f"cannot read {key} in bucket {self.dest.bucket}: "
                                 f"{exc.response.get('Error', {}).get('Code')}") from None

    def prepare(self) -> None:
        """Nothing to create: the preflight already proved the bucket exists."""

    def repository(self) -> Repository:
        env = secrets.restic_password(self.policy).merged(self._credentials().as_env())
        url = f"s3:{self.dest.endpoint.rstrip('/')}/{self.dest.bucket}"
        if self.prefix:
            url += f"/{self.prefix}"
        return Repository(url=url, options=(f"s3.region={self.dest.region}",), env=env,
                          **cache_options(self.home, self.policy.tenant), label=self.label)

    def confirm_unchanged(self) -> None:
        """Nothing to do: restic writes objects to the bucket by name; a vanished bucket
        fails its writes."""

    def usage_bytes(self) -> int | None:
        client = self._client()
        total = 0
        paginator = client.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.dest.bucket, Prefix=prefix):
            total += sum(obj.get("Size", 0) for obj in page.get("Contents", []))
        return total
