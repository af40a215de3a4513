"""Resolve repository passwords, S3 and REST credentials without exposing them.

Nothing here returns a secret inside a string that could be logged; callers receive the
values to put in a child's environment and the list of values to redact.
"""

from __future__ import annotations

import configparser
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bkp.errors import PolicyError

if TYPE_CHECKING:  # policy.py imports this module: the secret-file rule is shared
    from bkp.policy import Policy


@dataclass(frozen=True)
class SecretEnv:
    """Environment variables for one child process, and the values never to print."""

    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never show values, even in a traceback
        return f"SecretEnv(keys={sorted(self.env)})"

    def merged(self, other: SecretEnv) -> SecretEnv:
        return SecretEnv({**self.env, **other.env}, self.secrets + other.secrets)


@dataclass(frozen=True)
class SecretFileProblem:
    """Why a secret file cannot be used. `absent` problems (missing, or hidden from this
    user) are only warnings while validating: the file may be put in place before the run."""

    message: str
    absent: bool = False


# The group a Kubernetes manifest of `bkp schedule --format kubernetes` gives its pod as
# fsGroup (a numeric gid). Set by the manifest, never needed on a host.
SECRET_GROUP_ENV = "BKP_SECRET_GROUP"
POD_SECRET_MODE = 0o440


def is_private(status: os.stat_result) -> bool:
    """The one rule for who may read or change a secret file: its owner only, or exactly
    what a Kubernetes Secret volume of bkp's own manifest looks like inside the pod.

    Every check of a secret file comes here. Kubernetes mounts a Secret file of a pod with
    an fsGroup as root:FSGROUP with mode 0440 whatever defaultMode says (0400): the group
    is the pod's own, no other process is in it. That is accepted only when the manifest
    declared that group (BKP_SECRET_GROUP), the file is in it, owned by root or by this
    user, mode exactly 0440, and this process is in the group; nothing looser."""
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077 == 0:
        return True
    return mode == POD_SECRET_MODE and _in_pod_secret_group(status)


def _in_pod_secret_group(status: os.stat_result) -> bool:
    declared = os.environ.get(SECRET_GROUP_ENV, "")
    if not declared.isdigit() or declared.startswith("0"):
        return False  # unset, not a gid, or group root (never a pod's fsGroup in bkp's manifest)
    gid = int(declared)
    return (status.st_gid == gid and status.st_uid in (0, os.geteuid())
            and gid in (os.getegid(), *os.getgroups()))


def secret_file_problem(path: Path, what: str) -> SecretFileProblem | None:
    """What is wrong with a secret file, or None; the same words for `policy validate`
    and for the run that refuses it."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return SecretFileProblem(f"{what} {path} does not exist", absent=True)
    except PermissionError:
        return SecretFileProblem(f"{what} {path} cannot be read by this user", absent=True)
    except (OSError, ValueError) as exc:
        return SecretFileProblem(f"{what} {path} cannot be checked: "
                                 f"{getattr(exc, 'strerror', None) or exc}", absent=True)
    if not stat.S_ISREG(status.st_mode):
        return SecretFileProblem(f"{what} {path} is not a regular file")
    if not is_private(status):
        return SecretFileProblem(
            f"{what} {path} is accessible by group or others (mode "
            f"{stat.S_IMODE(status.st_mode):04o}); run: chmod 600 {path}")
    return None


def ca_file_problem(path: Path, what: str = "ca_file") -> SecretFileProblem | None:
    """What is wrong with a certificate bkp trusts a server by, or None. It is no secret, but
    whoever can change it decides which server gets the credential and the data: writable
    by its owner only. The same words for `policy validate` and for the run."""
    import ssl

    try:
        status = path.stat()
    except FileNotFoundError:
        return SecretFileProblem(f"{what} {path} does not exist", absent=True)
    except (OSError, ValueError) as exc:
        return SecretFileProblem(f"{what} {path} cannot be checked: "
                                 f"{getattr(exc, 'strerror', None) or exc}", absent=True)
    if not stat.S_ISREG(status.st_mode):
        return SecretFileProblem(f"{what} {path} is not a regular file")
    if stat.S_IMODE(status.st_mode) & 0o022:
        return SecretFileProblem(
            f"{what} {path} is writable by group or others (mode "
            f"{stat.S_IMODE(status.st_mode):04o}): whoever can change it decides which server "
            f"bkp trusts; run: chmod 644 {path}")
    try:
        ssl.create_default_context(cafile=str(path))
    except PermissionError:
        return SecretFileProblem(f"{what} {path} cannot be read by this user", absent=True)
    except (ssl.SSLError, OSError, ValueError):
        return SecretFileProblem(f"{what} {path} holds no PEM certificate (-----BEGIN "
                                 f"CERTIFICATE-----): give the server's CA or its self-signed "
                                 f"certificate")
    return None


def check_ca_file(path: Path, what: str = "ca_file") -> None:
    problem = ca_file_problem(path, what)
    if problem:
        raise PolicyError(problem.message)


def check_private_file(path: Path, what: str) -> None:
    """A secret file that is missing, not a file, or open to group or others is refused."""
    problem = secret_file_problem(path, what)
    if problem:
        raise PolicyError(problem.message)


def restic_password(policy: Policy) -> SecretEnv:
    """How restic gets the repository password: a file, a command, or bkp's environment."""
    if policy.password_file:
        check_private_file(policy.password_file, "password_file")
        return SecretEnv({"RESTIC_PASSWORD_FILE": str(policy.password_file)})
    if policy.password_command:
        return SecretEnv({"RESTIC_PASSWORD_COMMAND": policy.password_command})
    if policy.password_env:
        value = os.environ.get(policy.password_env)
        if not value:
            raise PolicyError(
                f"password_env {policy.password_env} is not set in bkp's environment; "
                f"set it, or use password_file")
        return SecretEnv({"RESTIC_PASSWORD": value}, (value,))
    raise PolicyError(f"{policy.tenant}: no password_file, password_command or password_env")


# How each database client takes a password without the command line.
DATABASE_PASSWORD_ENV = {"postgresql": "PGPASSWORD", "mariadb": "MYSQL_PWD"}


def database_password(kind: str, password_file: Path | None) -> SecretEnv:
    """A database role's password for its client's environment (none without a file: the
    server authenticates a socket peer itself)."""
    if password_file is None:
        return SecretEnv()
    check_private_file(password_file, "password_file")
    try:
        value = password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"password_file {password_file} cannot be read: {exc}") from None
    if not value or "\n" in value:
        raise PolicyError(f"password_file {password_file} must hold the password on one line")
    return SecretEnv({DATABASE_PASSWORD_ENV[kind]: value}, (value,))


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"S3Credentials(access_key={self.access_key[:4]}…)"

    def as_env(self) -> SecretEnv:
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return SecretEnv(env, tuple(v for v in (self.secret_key, self.session_token) if v))


def s3_credentials(path: Path, profile: str = "default") -> S3Credentials:
    """Read an AWS shared-credentials INI file (never the process environment)."""
    check_private_file(path, "credentials_file")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise PolicyError(
            f"credentials_file {path} is not an INI file: {exc.__class__.__name__}") from None
    if not parser.has_section(profile):
        raise PolicyError(f"credentials_file {path} has no [{profile}] section")
    section = parser[profile]
    key = section.get("aws_access_key_id")
    secret = section.get("aws_secret_access_key")
    if not key or not secret:
        raise PolicyError(
            f"credentials_file {path} [{profile}] needs aws_access_key_id and "
            f"aws_secret_access_key")
    return S3Credentials(key.strip(), secret.strip(),
                         (section.get("aws_session_token") or "").strip() or None)


@dataclass(frozen=True)
class RestCredentials:
    """The user and password a REST server (rest-server, rclone serve restic) checks."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"RestCredentials(user={self.user!r})"


def rest_credentials(path: Path, what: str = "credentials_file") -> RestCredentials:
    """Read a file of one line `user:password` (the password may hold ':'); its content is
    never quoted in a message."""
    check_private_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{what} {path} is not UTF-8 text: it holds one line "
                          f"user:password") from None
    except OSError as exc:
        raise PolicyError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise PolicyError(f"{what} {path} must hold exactly one line user:password (found "
                          f"{len(lines)} non-empty lines)")
    user, sep, password = lines[0].partition(":")
    if not sep or not user or not password:
        raise PolicyError(f"{what} {path} must hold one line user:password, with a user "
                          f"before the first ':' and a password after it")
    if any(ch.isspace() or ord(ch) < 32 for ch in user):
        raise PolicyError(f"{what} {path}: the user before ':' contains a blank or a control "
                          f"character")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in password):
        raise PolicyError(f"{what} {path}: the password contains a control character")
    return RestCredentials(user, password)
