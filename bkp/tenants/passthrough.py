"""`bkp restic TENANT -- ARGS...`: plain restic for one tenant, set up as bkp does it.

What an operator needs for `restic mount`, `find`, `diff`, `key add`, ... without building
the repository URL, the password source and the transport by hand. Secrets reach restic
through its environment, never argv. It is not a way around the rules: arguments that
point restic at another repository or password are refused, and commands that delete
(forget, prune, key remove, ...) are refused under a legal hold. Every use is audited.
"""

from __future__ import annotations

from collections.abc import Sequence

from bkp.context import Context
from bkp.destinations import open_repository
from bkp.errors import SafetyError, UsageError
from bkp.policy import Policy

# Commands (and sub-commands) that delete or rewrite what the repository holds.
DELETING = {("forget",), ("prune",), ("migrate",), ("rewrite",), ("tag",), ("rebuild-index",),
            ("repair",), ("key", "remove"), ("key", "passwd"), ("unlock", "--remove-all")}
# Commands that only read the repository; anything else changes it and needs a role that
# may (bkp.access "restic-write") when operators are registered.
READING = {("snapshots",), ("ls",), ("find",), ("diff",), ("stats",), ("cat",), ("check",),
           ("mount",), ("dump",), ("restore",), ("version",), ("list",), ("help",),
           ("key", "list"), ("cache",)}
# Options that would point restic at another repository, password or key.
FOREIGN_OPTIONS = ("-r", "--repo", "--repository", "--repository-file", "-p",
                   "--password-file", "--password-command", "--key-hint", "--insecure-no-password",
                   "--from-repo", "--from-repository-file", "--from-password-file",
                   "--from-password-command")


def words(args: Sequence[str]) -> list[str]:
    return [a for a in args if not a.startswith("-")]


def deletes(args: Sequence[str]) -> bool:
    plain = words(args)
    for command in DELETING:
        head = [w for w in command if not w.startswith("-")]
        flags = [w for w in command if w.startswith("-")]
        if plain[:len(head)] == head and all(f in args for f in flags):
            return True
    return False


def writes(args: Sequence[str]) -> bool:
    plain = words(args)
    return not any(plain[:len(command)] == list(command) for command in READING)


def check_arguments(policy: Policy, args: Sequence[str]) -> None:
    if not words(args):
        raise UsageError("give the restic command after --, e.g. `bkp restic TENANT -- "
                         "snapshots` or `bkp restic TENANT -- mount /mnt/restore`")
    foreign = [a for a in args if a.split("=", 1)[0] in FOREIGN_OPTIONS]
    if foreign:
        raise UsageError(f"{', '.join(foreign)}: bkp sets the repository and its password for "
                         f"tenant {policy.tenant}; give only the restic command and its options")
    if deletes(args) and policy.retention.legal_hold:
        raise SafetyError(f"`restic {' '.join(words(args)[:2])}` deletes from the repository of "
                          f"{policy.tenant}, which is under legal hold: nothing may be removed")


def run_restic(ctx: Context, policy: Policy, args: Sequence[str]) -> int:
    """Run restic for the tenant; restic's exit code (0 = ok)."""
    details = {"command": words(args)[:1], "args": list(args)}
    try:
        check_arguments(policy, args)
    except SafetyError as exc:
        ctx.audit("restic", "refused", policy.tenant, **details, error=str(exc))
        raise
    restic = open_repository(policy, ctx.settings.home)
    ctx.audit("restic", "started", policy.tenant, **details, deletes=deletes(args))
    code = restic.interactive(args)
    ctx.audit("restic", "ok" if code == 0 else "failed", policy.tenant, **details,
              exit_code=code)
    return code
