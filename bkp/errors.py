"""The exception family: each error carries the exit code of CLI.md.

Raised where the fact is known; turned into one message and one exit code in cli.py.
"""

from __future__ import annotations


class BkpError(Exception):
    """Base of every error an operator may see. Its message says what is wrong and what to do."""

    exit_code = 1


class OperationError(BkpError):
    """An operation failed: destination unreachable, restic error, lock held, timeout."""

    exit_code = 1


class UsageError(BkpError):
    exit_code = 2


class PolicyError(BkpError):
    """Invalid policy or configuration."""

    exit_code = 3

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = problems or []


class SafetyError(BkpError):
    """Refused for safety; nothing was touched."""

    exit_code = 4


class VerificationError(BkpError):
    """Verification failed: corruption, mismatch, tampering."""

    exit_code = 5


def exit_code_of(exc: BaseException) -> int:
    return getattr(exc, "exit_code", 1)
