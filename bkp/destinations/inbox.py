"""The results inbox: plain objects, one per result of a job in a pod, in an EEA bucket, a
directory on an sftp server or a shared directory. Not a restic repository: reading a
thousand results must not cost a thousand key derivations. Names sort in time order (they
start with the time written).

An inbox opens its connection when first used and keeps it until closed (`with
open_inbox(...) as inbox:`): the gatherer reads a whole night through one session."""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from bkp import secrets
from bkp.errors import BkpError, OperationError
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


def listed_name(raw: bytes) -> str:
    """An object's name as the gatherer lists, records and prints it: a result's name as it
    is; bytes that are not UTF-8 and characters that do not print as escapes. Every pod may
    write to the inbox: a name the catalog cannot store stopped the gathering, and a newline
    in one would write a line of its own into the gatherer's output."""
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class _Closing:
    """`with open_inbox(...) as inbox:` closes the inbox's connection, whatever happens."""

    def close(self) -> None:
        """Nothing to close by default (a directory)."""

    def __enter__(self):
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


@dataclass
class LocalInbox(_Closing):
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
            return sorted(listed_name(entry.name) for entry in os.scandir(os.fsencode(self.path))
                          if not entry.name.startswith(b".")
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
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # before Python refuses a folder
                os.close(fd)
                raise NotAResult(f"{name} is not a plain file, not a result")
            with os.fdopen(fd, "rb") as fh:
                return fh.read(MAX_RESULT_BYTES + 1)
        except OSError as exc:
            raise OperationError(f"cannot read {name} from the results inbox: "
                                 f"{exc.strerror or exc}") from None


@dataclass
class S3Inbox(_Closing):
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

    def close(self) -> None:
        made, self._made = self._made, None
        if made is not None:
            made.close()

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
        return sorted(listed_name(name.encode()) for name in found if name and "/" not in name)

    def get(self, name: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._client().get_object(Bucket=self.destination.bucket,
                                             Key=self._prefix + name)["Body"]
            return body.read(MAX_RESULT_BYTES + 1)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed(f"read {name} from", exc) from None


# A request the server does not answer (its sftp process stuck on a named pipe swapped in
# after the check) ends as an error instead of holding the gatherer all night.
SFTP_REQUEST_TIMEOUT = 120


@dataclass
class SftpInbox(_Closing):
    """A directory on an sftp server, through one paramiko session (pinned host key,
    identity file: sftp.connect). Written under a temporary dot-name, then renamed."""

    destination: Destination
    _session: tuple | None = None  # (transport, sftp client), once connected
    _refused: BkpError | None = None  # why connecting failed: said again, not tried again

    @property
    def label(self) -> str:
        dest = self.destination
        return f"sftp:{dest.user}@{dest.host}:{dest.port}{self._root}"

    @property
    def _root(self) -> str:
        return posixpath.normpath(self.destination.path)

    def _sftp(self):
        """The session, opened on first use and again after it broke; a server that cannot
        be reached (or is refused) is not tried again for every one of a night's results."""
        if self._refused is not None:
            raise _named(self._refused, "")
        if self._session is None:
            from bkp.destinations.sftp import connect

            try:
                transport, sftp = connect(self.destination, setting="results.inbox")
            except BkpError as exc:  # the same refusal and exit code, naming the inbox
                self._refused = _named(exc, f"cannot use the results inbox {self.label}: ")
                raise _named(self._refused, "") from None
            sftp.get_channel().settimeout(SFTP_REQUEST_TIMEOUT)
            self._session = (transport, sftp)
        return self._session[1]

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session[0].close()

    def _failed(self, doing: str, exc: Exception) -> OperationError:
        if not _answered(exc):
            self.close()  # the session broke: the next call opens a new one
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
            str(exc) or type(exc).__name__)
        return OperationError(f"cannot {doing} the results inbox {self.label}: {reason}")

    def put(self, name: str, data: bytes) -> None:
        """A reader never sees half a result; an existing name (a pod's kept/ record) is
        replaced in one step (posix-rename@openssh.com)."""
        from paramiko import SSHException

        from bkp.destinations.sftp import makedirs

        target = posixpath.join(self._root, name)
        folder, base = posixpath.split(target)
        temporary = posixpath.join(folder, f".{base}.{os.getpid()}.{os.urandom(4).hex()}.part")
        sftp = self._sftp()
        try:
            try:
                self._write(sftp, temporary, data)
            except FileNotFoundError:  # the inbox's first result, or first kept record
                makedirs(sftp, folder)
                self._write(sftp, temporary, data)
            sftp.posix_rename(temporary, target)
        except BkpError as exc:
            raise _named(exc, f"cannot write {name} to the results inbox {self.label}: ") \
                from None
        except (OSError, EOFError, SSHException) as exc:
            if _answered(exc):  # the server refused a step: the session still works
                with contextlib.suppress(OSError, EOFError, SSHException):
                    sftp.remove(temporary)
            raise self._failed(f"write {name} to", exc) from None

    @staticmethod
    def _write(sftp, path: str, data: bytes) -> None:
        with sftp.open(path, "wbx") as fh:  # x: never into another writer's file
            fh.chmod(0o600)
            fh.write(data)

    def names(self) -> list[str]:
        from paramiko import SSHException

        from bkp.destinations.sftp import list_folder

        sftp = self._sftp()
        try:
            entries = list_folder(sftp, self._root)
        except FileNotFoundError:
            return []
        except (OSError, EOFError, SSHException) as exc:
            raise self._failed("list", exc) from None
        # Files only (the server reports a link as a link): the pods' own records live in
        # a folder (kept/) of their own, temporaries under dot-names.
        return sorted(listed_name(name) for name, mode in entries
                      if not name.startswith(b".") and not stat.S_ISDIR(mode))

    def get(self, name: str) -> bytes:
        """Only a plain file is opened: the server follows a link when it opens a path, and
        a named pipe would hold its sftp process (and the gatherer) forever."""
        from paramiko import SSHException

        path = posixpath.join(self._root, name)
        sftp = self._sftp()
        try:
            mode = sftp.lstat(path).st_mode or 0
            if stat.S_ISLNK(mode):
                raise NotAResult(f"{name} is a link, not a result")
            if not stat.S_ISREG(mode):
                raise NotAResult(f"{name} is not a plain file, not a result")
            with sftp.open(path, "rb") as fh:
                return fh.read(MAX_RESULT_BYTES + 1)
        except (OSError, EOFError, SSHException) as exc:
            raise self._failed(f"read {name} from", exc) from None


def _answered(exc: Exception) -> bool:
    """Whether the sftp server answered (with an error status: paramiko's OSError), rather
    than the session breaking or the server not answering in time."""
    return isinstance(exc, OSError) and not isinstance(exc, socket.timeout)


def _named(exc: BkpError, prefix: str) -> BkpError:
    """`exc` again, its message led by `prefix`: its class (and exit code) kept."""
    return exc.__class__(prefix + str(exc))


def open_inbox(destination: Destination) -> LocalInbox | S3Inbox | SftpInbox:
    if destination.type == "s3":
        return S3Inbox(destination)
    if destination.type == "sftp":
        return SftpInbox(destination)
    return LocalInbox(Path(destination.path))
