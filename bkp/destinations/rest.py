"""A server speaking restic's REST protocol (rest-server, `rclone serve restic`) over https.

The preflight talks HTTP itself before restic runs: the server's TLS certificate must chain
to ca_file (or the system's CAs) before the credential is sent, as a pinned host key must
match before an SSH login; a certificate that does not verify is refused (4) with nothing
sent. The credential reaches restic only inside the repository location in its
environment (bkp.restic.rest_location), never in argv.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from bkp import secrets
from bkp.destinations import Preflight, StoredObject, cache_options, snapshot_names
from bkp.errors import OperationError, SafetyError
from bkp.policy import Policy
from bkp.restic import Repository, rest_location

CONNECT_TIMEOUT = 20
# restic's repository layout: what usage_bytes adds up.
OBJECT_TYPES = ("data", "index", "snapshots", "keys", "locks")
# The REST protocol's listing with sizes (rest-server and rclone speak it).
LIST_V2 = "application/vnd.x.restic.rest.v2"
# How servers refuse an append-only deletion: rest-server and `rclone serve restic
# --append-only` answer 403; a proxy that forbids the method, 405.
REFUSALS = {403: "Forbidden", 405: "Method Not Allowed"}


def repository_label(url: str) -> str:
    """What an operator recognises, without a credential: rest:https://host:port/path."""
    return f"rest:{url.rstrip('/')}"


@dataclass
class RestDestination:
    policy: Policy
    home: Path
    # `bkp maintain`: the repository through maintenance_url with the credential that may
    # delete (an append-only destination's other door), instead of the nightly one.
    maintenance: bool = False

    @property
    def dest(self):
        return self.policy.destination

    @property
    def url(self) -> str:
        return self.dest.maintenance_location if self.maintenance else self.dest.url

    @property
    def credentials_file(self) -> Path:
        return Path(self.dest.maintenance_credentials_file if self.maintenance
                    else self.dest.credentials_file)

    @property
    def label(self) -> str:
        return repository_label(self.url)

    def for_maintenance(self) -> RestDestination:
        """This destination with the deleting credential: the maintenance one where the
        policy names it, else the nightly one (which then may delete). An append_only
        destination without a maintenance credential cannot delete: SafetyError (4)."""
        if self.dest.maintenance_credentials_file is None:
            if self.dest.append_only:
                raise SafetyError(f"destination {self.label} is append_only and the policy "
                                  f"names no maintenance_credentials_file: nothing bkp holds "
                                  f"may delete there. Add the deleting credential, then "
                                  f"re-run")
            return self
        return replace(self, maintenance=True)

    def _credentials(self) -> secrets.RestCredentials:
        return secrets.rest_credentials(
            self.credentials_file,
            "maintenance_credentials_file" if self.maintenance else "credentials_file")

    def _ca_file(self) -> Path | None:
        if self.dest.ca_file is None:
            return None
        secrets.check_ca_file(Path(self.dest.ca_file))
        return Path(self.dest.ca_file)

    # -------------------------------------------------------------- HTTP side

    def _connection(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        if parts.scheme == "http":  # the policy allows it only for a loopback host
            return http.client.HTTPConnection(parts.hostname, parts.port,
                                              timeout=CONNECT_TIMEOUT)
        ca_file = self._ca_file()
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        return http.client.HTTPSConnection(parts.hostname, parts.port, context=context,
                                           timeout=CONNECT_TIMEOUT)

    def _request(self, method: str, name: str, accept: str | None = None
                 ) -> tuple[int, bytes]:
        return self._requests(method, [name], accept)[0]

    def _requests(self, method: str, names: list[str], accept: str | None = None
                  ) -> list[tuple[int, bytes]]:
        """Requests for `names` inside the repository, on one connection; (status, body)
        each. The credential is sent only on a connection whose certificate verified."""
        creds = self._credentials()
        token = base64.b64encode(f"{creds.user}:{creds.password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        if accept:
            headers["Accept"] = accept
        base = urlsplit(self.url).path.rstrip("/")
        connection = self._connection()
        try:
            answers = []
            for name in names:
                connection.request(method, f"{base}/{name}", headers=headers)
                response = connection.getresponse()
                answers.append((response.status, response.read()))
            return answers
        except ssl.SSLCertVerificationError as exc:
            raise SafetyError(self._untrusted(exc)) from None
        except ssl.SSLError as exc:
            raise OperationError(f"TLS with REST server {self._where()} failed "
                                 f"({exc.reason or exc}); is it serving https on that "
                                 f"port?") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise OperationError(f"cannot reach REST destination {self._where()}: "
                                 f"{_cause(exc)}; check the network and the server") from None
        finally:
            connection.close()

    def _where(self) -> str:
        parts = urlsplit(self.url)
        return parts.netloc

    def _untrusted(self, exc: ssl.SSLCertVerificationError) -> str:
        trusted = (f"ca_file {self.dest.ca_file}" if self.dest.ca_file else
                   "the system's certificate authorities (no ca_file in the policy)")
        return (f"the TLS certificate of REST server {self._where()} does not verify against "
                f"{trusted}: {exc.verify_message or exc.reason}. Nothing was sent. Verify "
                f"the server's certificate out of band before changing destination.ca_file")

    def _refused(self, status: int) -> OperationError:
        if status == 401:
            which = ("maintenance_credentials_file" if self.maintenance
                     else "credentials_file")
            return OperationError(f"REST server {self._where()} refused the credentials in "
                                  f"{which} {self.credentials_file} (HTTP 401); "
                                  f"check the user and password against the server's "
                                  f"htpasswd")
        if status == 403:
            return OperationError(f"REST server {self._where()} denied access to "
                                  f"{self.label} (HTTP 403): the user may not use this "
                                  f"repository path (private repositories?)")
        return OperationError(f"REST server {self._where()} answered HTTP {status} for "
                              f"{self.label}; check url and the server's log")

    def try_delete_snapshot(self, snapshot_id: str) -> tuple[bool, str]:
        """Try to delete a snapshot file with this credential, as a thief of it would: one
        DELETE of snapshots/ID. (refused, what the server said). Only an explicit refusal
        counts as one: a server error or a timeout refuses nothing, it merely failed (restic
        says "unable to remove" for both, and newer restic no longer names the status)."""
        status, _ = self._request("DELETE", f"snapshots/{snapshot_id}")
        return deletion_answer(status)

    def preflight(self) -> Preflight:
        status, _ = self._request("HEAD", "config")
        if status == 200:
            return Preflight(True, True)
        if status == 404:
            return Preflight(True, False)
        raise self._refused(status)

    def nightly_preflight(self) -> Preflight:
        # One HEAD request: the certificate and the credential are checked before restic
        # runs, every night (restic would retry a refused credential for minutes).
        return self.preflight()

    def prepare(self) -> None:
        """Nothing to create: restic init asks the server to create the repository."""

    def confirm_unchanged(self) -> None:
        """Nothing to do: a repository on a server cannot be swapped under a running restic
        without restic noticing."""

    def observed(self) -> dict:
        """What the preflight's request saw: https with the server's certificate checked
        (against ca_file or the system's CAs), or plain http to a loopback host."""
        parts = urlsplit(self.dest.url)
        return {"type": "rest", "off_site": True, "transport": parts.scheme,
                "tls_verified": parts.scheme == "https", "host": parts.hostname,
                "port": parts.port, "ca_file": self.dest.ca_file is not None,
                "append_only": self.dest.append_only}

    def usage_bytes(self) -> int | None:
        total = 0
        for status, body in self._requests("GET", [f"{kind}/" for kind in OBJECT_TYPES],
                                           accept=LIST_V2):
            if status != 200:
                return None
            try:
                total += sum(int(item.get("size", 0)) for item in json.loads(body or b"[]"))
            except (ValueError, TypeError, AttributeError):
                return None  # a server speaking only the v1 listing: no sizes
        return total

    def snapshot_ids(self) -> set[str] | None:
        """One GET of the snapshot listing (both versions of the protocol's listing)."""
        try:
            status, body = self._request("GET", "snapshots/", accept=LIST_V2)
            if status != 200:
                return None
            items = json.loads(body or b"[]")
            return snapshot_names(item.get("name") if isinstance(item, dict) else item
                                  for item in items)
        except (OperationError, SafetyError, ValueError, TypeError, AttributeError):
            return None

    # -------------------------------------------------------------- restic side

    def repository(self) -> Repository:
        creds = self._credentials()
        env = secrets.restic_password(self.policy).merged(
            rest_location(self.url, creds.user, creds.password))
        return Repository(url="", env=env, cacert=self._ca_file(),
                          **cache_options(self.home, self.policy.tenant), label=self.label)

    # -------------------------------------------------------------- erasure

    def stored_objects(self) -> list[StoredObject]:
        """The config and every object of restic's layout the server lists. A server may
        keep empty folders: an erased repository is one without objects, not without
        folders."""
        found = []
        status, _ = self._request("HEAD", "config")
        if status == 200:
            found.append(StoredObject("config"))
        elif status != 404:
            raise self._refused(status)
        for kind, (status, body) in zip(OBJECT_TYPES, self._requests(
                "GET", [f"{kind}/" for kind in OBJECT_TYPES], accept=LIST_V2), strict=True):
            if status == 404:
                continue
            if status != 200:
                raise self._refused(status)
            found += [StoredObject(f"{kind}/{name}", size) for name, size in _listing(body)]
        return found

    def remove_keys(self) -> list[StoredObject]:
        return self._delete([o for o in self.stored_objects() if o.is_key])

    def remove_objects(self) -> list[StoredObject]:
        objects = self.stored_objects()
        # config last: while it is there, what is left is still recognisably a repository
        ordered = [o for o in objects if o.name != "config"] + \
            [o for o in objects if o.name == "config"]
        return self._delete(ordered)

    def _delete(self, objects: list[StoredObject]) -> list[StoredObject]:
        removed = []
        for stored, (status, _) in zip(objects, self._requests(
                "DELETE", [o.name for o in objects]), strict=True):
            if status in (200, 204, 404):
                removed.append(stored)
                continue
            if status == 403:
                raise OperationError(f"REST server {self._where()} refused to delete "
                                     f"{stored.name} (HTTP 403): an append-only server needs "
                                     f"the maintenance credential (maintenance_url, "
                                     f"maintenance_credentials_file)")
            raise self._refused(status)
        return removed

    def erasure_blocked_until(self) -> str | None:
        return None


def _listing(body: bytes) -> list[tuple[str, int]]:
    """(name, size) from a v2 listing, or names (size 0) from a server speaking v1."""
    try:
        items = json.loads(body or b"[]")
    except ValueError:
        raise OperationError("the REST server's listing is not JSON") from None
    found = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            found.append((item["name"], int(item.get("size") or 0)))
        elif isinstance(item, str):
            found.append((item, 0))
    return found


def deletion_answer(status: int) -> tuple[bool, str]:
    """A DELETE's status as the proof reads it: (refused, what the server said)."""
    if status in REFUSALS:
        return True, f"the server refused: HTTP {status} {REFUSALS[status]}"
    if 200 <= status < 300:
        return False, f"the server answered HTTP {status} as if deleted"
    return False, f"the server answered HTTP {status}, neither deleted nor refused"


def _cause(exc: Exception) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT}s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, ValueError):
        # http.client quotes a header it cannot send, and the Authorization header holds
        # the credential: never its words.
        return "the request could not be sent (check url)"
    return str(exc) or type(exc).__name__
