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

# Commands that delete or rewrite what the repository holds; `key` and `unlock` only with
# the sub-command or option below.
DELETING = {"forget", "prune", "migrate", "rewrite", "tag", "rebuild-index", "repair"}
DELETING_KEY_ACTIONS = {"remove", "passwd"}
# Commands that only read the repository (and `key list`); anything else changes it and
# needs a role that may (bkp.access "restic-write") when operators are registered.
READING = {"snapshots", "ls", "find", "diff", "stats", "cat", "check", "mount", "dump",
           "restore", "version", "list", "help", "cache"}
KEY_ACTIONS = {"list", "add", "remove", "passwd"}
# Options that would point restic at another repository, password or key.
FOREIGN_OPTIONS = ("-r", "--repo", "--repository", "--repository-file", "-p",
                   "--password-file", "--password-command", "--key-hint", "--insecure-no-password",
                   "--from-repo", "--from-repository-file", "--from-password-file",
                   "--from-password-command", "--from-key-hint", "--from-insecure-no-password")
# restic's global options that may come before the command. A value-taking option hides
# its value from the search for the command (`-o x=y forget` is a forget), so an option bkp
# does not know there is refused: bkp could not tell which word restic runs.
GLOBAL_FLAGS = {"-q", "--quiet", "-v", "--verbose", "--json", "--no-cache", "--no-lock",
                "--cleanup-cache", "--insecure-tls", "-h", "--help"}
GLOBAL_VALUE_OPTIONS = {"-o", "--option", "--cacert", "--cache-dir", "--compression",
                        "--limit-download", "--limit-upload", "--pack-size",
                        "--tls-client-cert", "--retry-lock", "--stuck-request-timeout",
                        "--http-user-agent"}
# Short options (of restic's commands) that take a value: in a bundle such as `-or/x` the
# rest is that value, not more options.
VALUE_SHORTS = set("oeHitdwmygsNO")


def words(args: Sequence[str]) -> list[str]:
    return [a for a in args if not a.startswith("-")]


def command_and_rest(args: Sequence[str]) -> list[str]:
    """The restic command and what follows it, past the global options before it."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if arg.startswith("--"):
            if name in GLOBAL_VALUE_OPTIONS and "=" not in arg:
                i += 2
                continue
            if name in GLOBAL_VALUE_OPTIONS or name in GLOBAL_FLAGS:
                i += 1
                continue
        elif arg in ("-o",):
            i += 2
            continue
        elif arg.startswith("-o") or all(c in "qvh" for c in arg[1:]):
            i += 1
            continue
        raise UsageError(f"{arg}: bkp cannot tell which restic command follows this option; "
                         f"put restic's options after the command (`bkp restic TENANT -- "
                         f"snapshots {arg} ...`)")
    return list(args[i:])


def deletes(args: Sequence[str]) -> bool:
    rest = command_and_rest(args)
    if not rest:
        return False
    command = rest[0]
    if command in DELETING:
        return True
    if command == "key":
        return any(a in DELETING_KEY_ACTIONS for a in rest[1:])
    if command == "unlock":
        return any(a.split("=", 1)[0] == "--remove-all" for a in rest[1:])
    return False


def _foreign(arg: str) -> bool:
    """An option naming another repository or password, also glued (`-r/x`, `-qp/x`)."""
    if arg.split("=", 1)[0] in FOREIGN_OPTIONS:
        return True
    if arg.startswith("-") and not arg.startswith("--"):
        for letter in arg[1:]:
            if letter in "rp":
                return True
            if letter in VALUE_SHORTS:
                return False
    return False


def writes(args: Sequence[str]) -> bool:
    """Whether the command may change the repository (found as `deletes` finds it: `-o
    snapshots forget` is a forget)."""
    rest = command_and_rest(args)
    if not rest:
        return True
    if rest[0] == "key":
        actions = [a for a in rest[1:] if a in KEY_ACTIONS]
        return actions != ["list"]
    return rest[0] not in READING


def check_arguments(policy: Policy, args: Sequence[str]) -> None:
    if not words(args):
        raise UsageError("give the restic command after --, e.g. `bkp restic TENANT -- "
                         "snapshots` or `bkp restic TENANT -- mount /mnt/restore`")
    foreign = [a for a in args if _foreign(a)]
    if foreign:
        raise UsageError(f"{', '.join(foreign)}: bkp sets the repository and its password for "
                         f"tenant {policy.tenant}; give only the restic command and its options")
    if any(a.split("=", 1)[0] == "--insecure-tls" for a in args):
        raise SafetyError("--insecure-tls would send the destination's credential and the "
                          "tenant's data to a server whose certificate is not checked; give "
                          "the server's CA as destination.ca_file instead")
    if command_and_rest(args)[:1] == ["self-update"]:
        raise SafetyError("`restic self-update` would replace the restic every tenant uses with "
                          "a download outside the package manager; upgrade restic with the "
                          "system's packages (scripts/install.sh)")
    if deletes(args) and policy.retention.legal_hold:
        raise SafetyError(f"`restic {command_and_rest(args)[0]}` deletes from the repository of "
                          f"{policy.tenant}, which is under legal hold: nothing may be removed")


def run_restic(ctx: Context, policy: Policy, args: Sequence[str]) -> int:
    """Run restic for the tenant; restic's exit code (0 = ok)."""
    try:
        command = command_and_rest(args)[:1]
    except UsageError:
        command = words(args)[:1]
    details = {"command": command, "args": list(args)}
    try:
        check_arguments(policy, args)
    except SafetyError as exc:
        ctx.audit("restic", "refused", policy.tenant, **details, error=str(exc))
        raise
    # A hand-run forget under a hold lifted for the moment is acted under weaker rules as
    # surely as a night's run: the policy it ran under is on the record first.
    from bkp.evidence.policy_changes import record_policy

    record_policy(ctx, policy)
    restic = open_repository(policy, ctx.settings.home)
    ctx.audit("restic", "started", policy.tenant, **details, deletes=deletes(args))
    code = restic.interactive(args)
    ctx.audit("restic", "ok" if code == 0 else "failed", policy.tenant, **details,
              exit_code=code)
    return code
