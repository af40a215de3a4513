"""Resolve repository passwords and S3 credentials without exposing them.

Nothing here returns a secret inside a string that could be logged; callers receive the
values to put in a child's environment and the list of values to redact.
"""

from __future__ import annotations

import configparser
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from bkp.errors import PolicyError
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


def check_private_file(path: Path, what: str) -> None:
    """A secret file readable or writable by group or others is refused."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PolicyError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise PolicyError(f"{what} {path} cannot be read by this user") from None
    if not stat.S_ISREG(mode):
        raise PolicyError(f"{what} {path} is not a regular file")
    if mode & 0o077:
        raise PolicyError(
            f"{what} {path} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}")


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
