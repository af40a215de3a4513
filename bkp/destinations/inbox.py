"""The results inbox: plain objects, one per result of a job in a pod, in an EEA bucket or a
shared directory. Not a restic repository: reading a thousand results must not cost a
thousand key derivations. Names sort in time order (they start with the time written)."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from bkp import secrets
from bkp.errors import OperationError
from bkp.policy import Destination

# A result is a few kilobytes; anything far larger is not one (and is not read whole).
MAX_RESULT_BYTES = 4 << 20
NAME = re.compile(r"[0-9]{8}T[0-9]{12}Z-[a-z0-9][a-z0-9-]{1,62}-(backup|drill)-[0-9a-f]{12}"
                  r"\.json")


class NotAResult(OperationError):
    """An object of the inbox that cannot be a result whatever it holds (a named pipe, a
    link): rejected as such, never opened as one."""


def is_result_name(name: str) -> bool:
    return NAME.fullmatch(name) is not None


@dataclass
class LocalInbox:
    path: Path

    @property
    def label(self) -> str:
        return str(self.path)

    def put(self, name: str, data: bytes) -> None:
        """Written under a temporary name and renamed: a reader never sees half a result."""
        target = self.path / name  # a result, or a pod's own record under kept/
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = target.parent / f".{target.name}.{os.getpid()}.part"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, target)
        except OSError as exc:
            raise OperationError(f"cannot write the result to the inbox {self.path}: "
                                 f"{exc.strerror or exc}") from None

    def names(self) -> list[str]:
        try:
            # Files only: the pods' own records live in a folder (kept/) of their own.
            return sorted(entry.name for entry in os.scandir(self.path)
                          if not entry.name.startswith(".")
                          and not entry.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise OperationError(f"cannot list the results inbox {self.path}: "
                                 f"{exc.strerror or exc}") from None

    def get(self, name: str) -> bytes:
        # Every pod may write here: a named pipe would hold the gatherer forever, a link
        # would make it read a file of its own host.
        try:
            fd = os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotAResult(f"{name} is a link, not a result") from None
            raise OperationError(f"cannot read {name} from the results inbox: "
                                 f"{exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise NotAResult(f"{name} is not a plain file, not a result")
                return fh.read(MAX_RESULT_BYTES + 1)
        except OSError as exc:
            raise OperationError(f"cannot read {name} from the results inbox: "
                                 f"{exc.strerror or exc}") from None


@dataclass
class S3Inbox:
    destination: Destination
    _made: object = None  # one client for the whole ingest

    @property
    def label(self) -> str:
        return f"s3:{self.destination.endpoint}/{self.destination.bucket}/{self._prefix}"

    @property
    def _prefix(self) -> str:
        prefix = self.destination.prefix.strip("/")
        return f"{prefix}/" if prefix else ""

    def _client(self):
        if self._made is None:
            self._made = self._new_client()
        return self._made

    def _new_client(self):
        import boto3
        from botocore.config import Config

        creds = secrets.s3_credentials(Path(self.destination.credentials_file),
                                       self.destination.credentials_profile or "default")
        return boto3.session.Session().client(
            "s3", endpoint_url=self.destination.endpoint, region_name=self.destination.region,
            aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
            aws_session_token=creds.session_token,
            config=Config(connect_timeout=15, read_timeout=60,
                          retries={"max_attempts": 3, "mode": "standard"}))

    def _failed(self, doing: str, exc: Exception) -> OperationError:
        # botocore's messages name the bucket and the operation, never the credentials.
        return OperationError(f"cannot {doing} the results inbox {self.label}: "
                              f"{type(exc).__name__}: {exc}")

    def put(self, name: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client().put_object(Bucket=self.destination.bucket, Key=self._prefix + name,
                                      Body=data, ContentType="application/json")
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("write to", exc) from None

    def names(self) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        found = []
        try:
            pages = self._client().get_paginator("list_objects_v2").paginate(
                Bucket=self.destination.bucket, Prefix=self._prefix)
            for page in pages:
                found += [item["Key"][len(self._prefix):] for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("list", exc) from None
        return sorted(name for name in found if name and "/" not in name)

    def get(self, name: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._client().get_object(Bucket=self.destination.bucket,
                                             Key=self._prefix + name)["Body"]
            return body.read(MAX_RESULT_BYTES + 1)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed(f"read {name} from", exc) from None


def open_inbox(destination: Destination) -> LocalInbox | S3Inbox:
    if destination.type == "s3":
        return S3Inbox(destination)
    return LocalInbox(Path(destination.path))
