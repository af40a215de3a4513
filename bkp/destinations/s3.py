"""S3-compatible object storage: boto3 preflight (the bucket exists and stands in the
policy's region), then restic's s3 backend with credentials in its environment only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bkp import secrets
from bkp.destinations import Preflight, StoredObject, cache_options, snapshot_names
from bkp.errors import BkpError, OperationError, SafetyError
from bkp.policy import Policy
from bkp.restic import Repository

log = logging.getLogger("bkp")
# restic sends Content-MD5 with every upload since 0.13.0 (restic issue 2202, PR 3246);
# S3 refuses a PutObject into a bucket with Object Lock without it (or a checksum header).
OBJECT_LOCK_RESTIC = (0, 13)
LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")


def bucket_region(location_constraint: str | None) -> str:
    # S3 reports the historic default region as no constraint at all.
    return location_constraint or "us-east-1"


@dataclass
class S3Destination:
    policy: Policy
    home: Path
    # The bucket's region as S3 itself reported it in the last preflight.
    region_found: str | None = field(default=None, init=False, repr=False)

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
        self.region_found = actual
        detail = self._check_object_lock(client) if self.dest.object_lock else ""
        return Preflight(True, self._object_exists(client, self._key("config")), detail)

    # -------------------------------------------------------------- Object Lock

    def _check_object_lock(self, client) -> str:
        """The bucket keeps every object version for at least the days the keep rules
        promise restore points (Policy.retention.promised_days), in COMPLIANCE mode
        (GOVERNANCE: a warning), and the installed restic can write there. Refused (4)
        otherwise: a backup the policy calls undeletable must be undeletable."""
        from bkp.restic import version

        installed = version()
        if not installed.at_least(*OBJECT_LOCK_RESTIC):
            raise SafetyError(
                f"destination.object_lock: restic {installed} cannot write to a bucket with "
                f"S3 Object Lock (it sends no Content-MD5); restic "
                f"{'.'.join(map(str, OBJECT_LOCK_RESTIC))}.0 or newer is needed")
        mode, days = self._default_retention(client)
        need = self.policy.retention.promised_days(self.policy.rpo_hours)
        where = f"bucket {self.dest.bucket}"
        if mode not in LOCK_MODES:
            raise SafetyError(f"{where} has S3 Object Lock without a default retention "
                              f"(mode {mode or 'none'}): objects restic writes would not be "
                              f"locked. Set a default retention in COMPLIANCE mode of at "
                              f"least {need} days")
        if days < need:
            raise SafetyError(f"{where} keeps objects locked for {days} days ({mode}), the "
                              f"keep rules promise restore points {need} days back: a "
                              f"stolen nightly credential could delete those older than "
                              f"{days} days. Set the default retention to at least {need} "
                              f"days")
        if mode == "GOVERNANCE":
            warning = (f"{where} locks objects in GOVERNANCE mode, which a credential with "
                       f"s3:BypassGovernanceRetention can lift; COMPLIANCE mode cannot be "
                       f"lifted by anyone")
            log.warning("warning: %s", warning)
            return warning
        return ""

    def _default_retention(self, client) -> tuple[str | None, int]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = client.get_object_lock_configuration(Bucket=self.dest.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ObjectLockConfigurationNotFoundError":
                raise SafetyError(
                    f"destination.object_lock is true but bucket {self.dest.bucket} has no "
                    f"S3 Object Lock: its objects can be deleted by whoever holds a "
                    f"credential. Object Lock can only be chosen when a bucket is created: "
                    f"create a new bucket with Object Lock and a default retention in "
                    f"COMPLIANCE mode") from None
            raise OperationError(f"cannot read the Object Lock configuration of bucket "
                                 f"{self.dest.bucket}: {code}") from None
        except BotoCoreError as exc:
            raise OperationError(f"cannot reach S3 endpoint {self.dest.endpoint}: {exc}") \
                from None
        config = answer.get("ObjectLockConfiguration") or {}
        if config.get("ObjectLockEnabled") != "Enabled":
            raise SafetyError(f"destination.object_lock is true but bucket "
                              f"{self.dest.bucket} does not have S3 Object Lock enabled")
        retention = (config.get("Rule") or {}).get("DefaultRetention") or {}
        days = int(retention.get("Days") or 0) + 365 * int(retention.get("Years") or 0)
        return retention.get("Mode"), days

    def try_delete_snapshot_version(self, snapshot_id: str) -> tuple[bool, str]:
        """Try to destroy a snapshot object for good, with the nightly credential: every
        version of it, each by its version id, bypassing GOVERNANCE retention where the
        credential may. (refused, what S3 said)."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        key = self._key(f"snapshots/{snapshot_id}")
        try:
            listed = client.list_object_versions(Bucket=self.dest.bucket, Prefix=key)
        except (ClientError, BotoCoreError) as exc:
            raise OperationError(f"cannot list the versions of {key}: {exc}") from None
        versions = [v for v in listed.get("Versions", []) if v.get("Key") == key]
        if not versions:
            raise OperationError(f"the canary object {key} has no version to delete")
        codes = []
        for item in versions:
            try:
                # With the bypass, as a thief would try: GOVERNANCE locks yield to a
                # credential allowed s3:BypassGovernanceRetention; COMPLIANCE ones never.
                client.delete_object(Bucket=self.dest.bucket, Key=key,
                                     VersionId=item["VersionId"],
                                     BypassGovernanceRetention=True)
                codes.append("deleted")
            except ClientError as exc:
                codes.append(exc.response.get("Error", {}).get("Code", "refused"))
            except BotoCoreError as exc:
                raise OperationError(f"cannot reach S3 endpoint {self.dest.endpoint}: "
                                     f"{exc}") from None
        refused = all(code in ("AccessDenied", "InvalidRequest", "MethodNotAllowed")
                      for code in codes)
        return refused, f"DeleteObject {key} by version id: {', '.join(codes)}"

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

    def observed(self) -> dict:
        """What the preflight saw: the bucket's own region (asked from S3, not taken from
        the policy) and whether the endpoint was reached over TLS."""
        parts = urlsplit(self.dest.endpoint)
        return {"type": "s3", "off_site": True,
                "transport": "https" if parts.scheme == "https" else parts.scheme,
                "tls_verified": parts.scheme == "https", "host": parts.hostname,
                "bucket": self.dest.bucket,
                "bucket_region": self.region_found}

    def rclone_repository(self, remote: str) -> Repository:
        """The same repository through restic's rclone backend, as the named remote `remote`
        defined only in restic's environment: for `restic copy` between two S3 services,
        where restic's one set of AWS_* variables and s3.region would serve both."""
        creds = self._credentials()
        prefix = f"RCLONE_CONFIG_{remote.upper()}_"
        env = {"RCLONE_CONFIG": "", f"{prefix}TYPE": "s3", f"{prefix}PROVIDER": "Other",
               f"{prefix}ENV_AUTH": "false", f"{prefix}ENDPOINT": self.dest.endpoint,
               f"{prefix}REGION": self.dest.region, f"{prefix}ACCESS_KEY_ID": creds.access_key,
               f"{prefix}SECRET_ACCESS_KEY": creds.secret_key,
               # bkp never creates buckets; the preflight proved this one exists
               f"{prefix}NO_CHECK_BUCKET": "true"}
        if creds.session_token:
            env[f"{prefix}SESSION_TOKEN"] = creds.session_token
        hidden = tuple(v for v in (creds.secret_key, creds.session_token) if v)
        location = f"{self.dest.bucket}/{self.prefix}" if self.prefix else self.dest.bucket
        return Repository(url=f"rclone:{remote}:{location}",
                          env=secrets.restic_password(self.policy).merged(
                              secrets.SecretEnv(env, hidden)),
                          **cache_options(self.home, self.policy.tenant), label=self.label)

    def confirm_unchanged(self) -> None:
        """Nothing to do: restic writes objects to the bucket by name; a vanished bucket
        fails its writes."""

    def snapshot_ids(self) -> set[str] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = self._key("snapshots/")
        try:
            pages = self._client().get_paginator("list_objects_v2").paginate(
                Bucket=self.dest.bucket, Prefix=prefix)
            return snapshot_names(item["Key"][len(prefix):] for page in pages
                                  for item in page.get("Contents", []))
        except (BotoCoreError, ClientError, BkpError, KeyError):
            return None

    def usage_bytes(self) -> int | None:
        client = self._client()
        total = 0
        paginator = client.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.dest.bucket, Prefix=prefix):
            total += sum(obj.get("Size", 0) for obj in page.get("Contents", []))
        return total

    # -------------------------------------------------------------- erasure

    def stored_objects(self) -> list[StoredObject]:
        """Every version and delete marker under the prefix (in a bucket that was never
        versioned, each object once, version "null"): a versioned bucket keeps what was
        "deleted" as older versions, and they hold the tenant's data as much as the latest."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        found = []
        try:
            paginator = client.get_paginator("list_object_versions")
            for page in paginator.paginate(Bucket=self.dest.bucket, Prefix=self._listed()):
                for item in page.get("Versions", []):
                    found.append(StoredObject(self._name(item["Key"]), item.get("Size", 0),
                                              item.get("VersionId") or "null",
                                              modified=item.get("LastModified")))
                for item in page.get("DeleteMarkers", []):
                    found.append(StoredObject(self._name(item["Key"]), 0,
                                              item.get("VersionId") or "null", marker=True))
        except ClientError as exc:
            raise OperationError(f"cannot list bucket {self.dest.bucket} at "
                                 f"{self.dest.endpoint}: "
                                 f"{exc.response.get('Error', {}).get('Code')}") from None
        except BotoCoreError as exc:
            raise OperationError(f"cannot reach S3 endpoint {self.dest.endpoint}: {exc}") \
                from None
        return sorted(found, key=lambda o: (o.name, o.version or ""))

    def remove_keys(self) -> list[StoredObject]:
        return self._delete([o for o in self.stored_objects() if o.is_key])

    def remove_objects(self) -> list[StoredObject]:
        return self._delete(self.stored_objects())

    def _delete(self, objects: list[StoredObject]) -> list[StoredObject]:
        """Delete exactly these versions (by version id: a plain delete in a versioned
        bucket would only add a delete marker), a thousand per request."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        removed: list[StoredObject] = []
        for start in range(0, len(objects), 1000):
            batch = objects[start:start + 1000]
            try:
                answer = client.delete_objects(Bucket=self.dest.bucket, Delete={
                    "Quiet": True,
                    "Objects": [{"Key": self._key(o.name), "VersionId": o.version or "null"}
                                for o in batch]})
            except ClientError as exc:
                raise OperationError(f"bucket {self.dest.bucket} refused the deletion: "
                                     f"{exc.response.get('Error', {}).get('Code')}") from None
            except BotoCoreError as exc:
                raise OperationError(f"cannot reach S3 endpoint {self.dest.endpoint} while "
                                     f"deleting: {exc}") from None
            failed = {(self._name(e.get("Key", "")), e.get("VersionId") or "null"): e
                      for e in answer.get("Errors", [])}
            removed += [o for o in batch if (o.name, o.version or "null") not in failed]
            if failed:
                first = next(iter(failed.values()))
                raise OperationError(f"bucket {self.dest.bucket} refused to delete "
                                     f"{len(failed)} object(s), e.g. {first.get('Key')}: "
                                     f"{first.get('Code')} {first.get('Message', '')}".rstrip())
        return removed

    def _listed(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _name(self, key: str) -> str:
        return key[len(self._listed()):]

    def erasure_blocked_until(self) -> str | None:
        """With Object Lock on the bucket, the date every object's retention has ended (the
        earliest the erasure can happen), or that a legal hold on an object holds it."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        try:
            lock = client.get_object_lock_configuration(Bucket=self.dest.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                    "ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration",
                    "404", "NotImplemented"):
                return None
            raise OperationError(f"cannot read the Object Lock configuration of bucket "
                                 f"{self.dest.bucket}: "
                                 f"{exc.response.get('Error', {}).get('Code')}") from None
        except BotoCoreError as exc:
            raise OperationError(f"cannot reach S3 endpoint {self.dest.endpoint}: {exc}") \
                from None
        configuration = lock.get("ObjectLockConfiguration") or {}
        if configuration.get("ObjectLockEnabled") != "Enabled":
            return None
        return self._latest_retention(client, _default_retention(configuration))

    def _latest_retention(self, client, default) -> str | None:
        """Each version is held until its own retention date or, where it states none, the
        date the bucket's default retention gives it (written + the default period)."""
        from datetime import UTC, datetime

        from botocore.exceptions import ClientError

        now, latest, held = datetime.now(UTC), None, []
        for stored in self.stored_objects():
            if stored.marker:
                continue
            if default is not None and stored.modified is not None:
                until = stored.modified + default
                if until > now and (latest is None or until > latest):
                    latest = until
            where = {"Bucket": self.dest.bucket, "Key": self._key(stored.name),
                     "VersionId": stored.version or "null"}
            try:
                until = (client.get_object_retention(**where).get("Retention") or {}).get(
                    "RetainUntilDate")
            except ClientError:
                until = None  # no retention on this version
            if until is not None and until > now and (latest is None or until > latest):
                latest = until
            try:
                hold = client.get_object_legal_hold(**where).get("LegalHold") or {}
            except ClientError:
                hold = {}  # no legal hold on this version
            if hold.get("Status") == "ON":
                held.append(stored.describe())
        if held:
            return (f"{len(held)} object(s) under an S3 Object Lock legal hold (e.g. "
                    f"{held[0]}) in bucket {self.dest.bucket}: the erasure is possible only "
                    f"after the bucket's owner lifts it")
        if latest is not None:
            return (f"S3 Object Lock retention in bucket {self.dest.bucket} holds objects "
                    f"until {latest.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}: the "
                    f"erasure is possible from then on")
        return None


def _default_retention(configuration: dict):
    """The bucket's default retention period as a timedelta (S3 counts a year as 365
    days), or None."""
    from datetime import timedelta

    rule = ((configuration.get("Rule") or {}).get("DefaultRetention")) or {}
    if rule.get("Days"):
        return timedelta(days=int(rule["Days"]))
    if rule.get("Years"):
        return timedelta(days=365 * int(rule["Years"]))
    return None
