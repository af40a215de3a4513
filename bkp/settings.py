"""Where bkp keeps its state and who is acting: resolved once per command."""

from __future__ import annotations

import getpass
import os
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path

DEFAULT_POLICIES = Path("/etc/bkp/policies")
DEFAULT_HOME = Path("/var/lib/bkp")
# The host name restic records on each snapshot and finds the parent snapshot by. A pod's
# host name changes every night (a full rescan each time without a parent): the Kubernetes
# manifests set this to the tenant id. Only the snapshot's host: restic's locks keep the
# real host name, so two pods never take each other's live lock for a dead one.
SNAPSHOT_HOST_ENV = "BKP_SNAPSHOT_HOST"


def os_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def snapshot_host() -> str:
    """`--host` of every backup: BKP_SNAPSHOT_HOST when set, else this machine's name."""
    given = os.environ.get(SNAPSHOT_HOST_ENV, "").strip()
    if given and given.isprintable():
        return given
    return socket.gethostname()


def default_operator() -> str:
    return os.environ.get("SUDO_USER") or _login_name()


def _login_name() -> str:
    try:
        return os.getlogin()
    except OSError:
        return getpass.getuser()


@dataclass(frozen=True)
class Settings:
    policies: Path
    home: Path
    operator: str
    os_user: str
    config: str | None = None  # --config / BKP_CONFIG as given; see bkp.installation
    operator_given: str | None = None  # --operator / BKP_OPERATOR as given; see bkp.access

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.db"

    @property
    def locks(self) -> Path:
        return self.home / "locks"


def resolve(policies: str | None, home: str | None, operator: str | None,
            config: str | None = None) -> Settings:
    return Settings(
        policies=Path(policies or os.environ.get("BKP_POLICIES") or DEFAULT_POLICIES),
        home=Path(home or os.environ.get("BKP_HOME") or DEFAULT_HOME),
        operator=operator or os.environ.get("BKP_OPERATOR") or default_operator(),
        os_user=_login_user(),
        config=config,
        operator_given=operator or os.environ.get("BKP_OPERATOR") or None,
    )


def _login_user() -> str:
    from bkp.access import login_identity

    return login_identity()[0]
