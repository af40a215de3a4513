"""The command line: parse, call one action, print, map errors to exit codes.

Nothing here knows restic, SQL, boto3 or paramiko. Heavy modules are imported inside the
commands so that `bkp --help` starts fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click

from bkp import __version__
from bkp.cli.values import NAME_LIMIT, TEXT_LIMIT, checked_text
from bkp.errors import BkpError, PolicyError, SafetyError, UsageError

log = logging.getLogger("bkp")


# ---------------------------------------------------------------- output helpers

def emit(data, as_json: bool, human: Callable[[], None] | None = None) -> None:
    """Exactly one JSON document on stdout with --json; otherwise the human rendering."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=_plain))
    elif human:
        human()


def _plain(value):
    """A typed result inside a document is written as its contract form, never as repr."""
    return value.to_json() if hasattr(value, "to_json") else str(value)


def say(message: str) -> None:
    click.echo(message, err=True)


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print exactly one JSON document on stdout.")


class State:
    """Resolved global options, shared by every command through click's context."""

    def __init__(self, policies, home, operator, verbose, config=None):
        from bkp.settings import resolve

        self.settings = resolve(policies, home, operator, config)
        self._installation = None
        self._actor = None
        self.verbose = verbose
        self._work = None  # Context of a command that acts
        self._reader = None  # read-only Catalog of a command that only reads
        self.catalog_note: str | None = None

    def actor(self):
        """Who acts: the person behind the OS identity (bkp.access). Resolved once; the
        settings then record that person and OS user on every event."""
        if self._actor is None:
            from dataclasses import replace

            from bkp.access import resolve_actor

            self._actor = resolve_actor(self.installation().operators,
                                        self.settings.operator_given, self.settings.operator)
            self.settings = replace(self.settings, operator=self._actor.operator,
                                    os_user=self._actor.os_user)
        return self._actor

    def authorize(self, act: str | None, record: bool = True) -> None:
        """Refuse (4, recorded) what this actor's role does not allow."""
        from bkp.access import authorize

        try:
            authorize(self.actor(), act)
        except SafetyError as exc:
            if record:
                self._refusal(act, str(exc))
            raise

    def _refusal(self, act: str | None, error: str) -> None:
        """A refused attempt is evidence too: recorded when the catalog can take it."""
        try:
            from dataclasses import replace

            from bkp.catalog import open_for_work
            from bkp.context import Context

            settings = self.settings if self._actor else replace(  # never the claimed name
                self.settings, operator=self.settings.os_user)
            catalog = open_for_work(self.settings.home)
            Context(settings, catalog).audit(act or "act", "refused", error=error,
                                                  via=self._actor.via if self._actor else None)
        except Exception:  # the refusal stands even where it cannot be recorded
            pass

    def context(self, progress: bool = False, act: str | None = None):
        """The context of a command that acts: who acts and whether their role allows
        `act` (bkp.access), the catalog opened for work, and what died with an earlier bkp
        process closed first (interrupted runs, aborted wipes)."""
        from bkp.context import Context, recover_dead_work

        self.authorize(act)
        if self._work is None:
            from bkp.catalog import open_for_work
            from bkp.evidence.operator_changes import record_operators

            work = Context(self.settings, open_for_work(self.settings.home))
            # who may act is on the record before anything else is (and a lost operators
            # list stops every act here, exit 3)
            record_operators(work, self.installation())
            self._work = work
            for note in recover_dead_work(self._work):
                say(f"note: {note}")
        show = say if progress else None
        return Context(self.settings, self._work.catalog, progress=_throttled(show))

    def reader(self):
        """The catalog of a command that only reads: opened read-only, never migrated or
        reaped. Where none exists, an empty one in memory, with a note that says why."""
        from bkp.catalog import Catalog, CatalogMissing, home_was_used

        if self._reader is None:
            try:
                self._reader = Catalog.read_only(self.settings.catalog_path)
            except CatalogMissing:
                signs = home_was_used(self.settings.home)
                self.catalog_note = (
                    f"the catalog {self.settings.catalog_path} is missing although BKP_HOME "
                    f"holds bkp's records ({', '.join(signs)}): it was lost; see "
                    f"runbooks/disaster-recovery.md" if signs else
                    f"no catalog yet at {self.settings.catalog_path}: nothing recorded")
                say(f"note: {self.catalog_note}")
                self._reader = Catalog.empty()
        return self._reader

    def installation(self):
        """bkp.yaml, validated (PolicyError, exit 3, when invalid); empty when absent."""
        if self._installation is None:
            from bkp.installation import load

            self._installation = load(self.settings.config)
        return self._installation

    def runs_of_this_process(self) -> list[dict]:
        """The runs this bkp process opened, as recorded (for an interrupted command)."""
        if self._work is None:
            return []
        try:
            rows = self._work.catalog.runs_of_process(os.getpid())
        except Exception:  # the signal may have come while the catalog was unusable
            return []
        ok = {"backup": "ok", "drill": "passed"}
        return [{"tenant": r["tenant"], "kind": r["kind"], "run_id": r["id"],
                 "status": r["status"] if r["status"] == ok.get(r["kind"]) else "failed",
                 "result": r["status"], "snapshot_id": r["snapshot_id"],
                 "error": r["error"]} for r in rows]

    def bare_context(self):
        """For commands that touch no record at all (they read a repository)."""
        from bkp.context import Context

        return Context(self.settings, None)

    def read_context(self):
        from bkp.context import Context

        return Context(self.settings, self.reader())

    def select(self, tenants: tuple[str, ...], all_: bool, result=None):
        """Policies to work on, and an Outcome per invalid policy (exit 3) among them, as a
        `result` (the command's type of per-tenant result)."""
        from bkp.context import Outcome
        from bkp.policy import load_policies
        from bkp.results import TenantResult

        kind = result or TenantResult
        if bool(tenants) == bool(all_):
            raise UsageError("name one or more tenants, or give --all")
        if not self.settings.policies.is_dir():
            raise PolicyError(f"policies directory {self.settings.policies} does not exist; "
                              f"set --policies or BKP_POLICIES")
        policies, invalid = load_policies(self.settings.policies, list(tenants) or None)
        wanted = set(tenants)
        broken = [Outcome(r.tenant or r.file.stem, 3, kind.invalid(
            r.tenant or r.file.stem, f"invalid policy {r.file}: " + "; ".join(
                f"{e.path}: {e.message}" if e.path else e.message for e in r.errors)))
            for r in invalid if not wanted or (r.tenant or r.file.stem) in wanted]
        return policies, broken

    def one_policy(self, tenant: str):
        policies, broken = self.select((tenant,), False)
        if broken:
            raise PolicyError(broken[0].data["error"])
        return policies[0]


def _throttled(show, every: float = 2.0):
    if show is None:
        return None
    import time

    last = [0.0]

    def report(line: str) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            show(line)

    return report


pass_state = click.make_pass_decorator(State)


# ---------------------------------------------------------------- the group

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--policies", envvar="BKP_POLICIES", metavar="DIR",
              help="Directory of tenant policies (env BKP_POLICIES, default /etc/bkp/policies).")
@click.option("--home", envvar="BKP_HOME", metavar="DIR",
              help="State directory: catalog.db, locks, scratch, signing key "
                   "(env BKP_HOME, default /var/lib/bkp).")
@click.option("--operator", envvar="BKP_OPERATOR", metavar="NAME",
              callback=checked_text(NAME_LIMIT),
              help="The person acting, recorded on every event (env BKP_OPERATOR, "
                   "default SUDO_USER or the login name).")
@click.option("--config", envvar="BKP_CONFIG", metavar="FILE",
              help="Installation settings: organisation, evidence destination, monitoring "
                   "(env BKP_CONFIG, default /etc/bkp/bkp.yaml; optional).")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
@click.option("--log-file", envvar="BKP_LOG_FILE", metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Also write log lines (UTC, with every restic command run) to FILE, mode "
                   "0600 (env BKP_LOG_FILE). Under systemd, stderr goes to the journal with "
                   "priorities.")
@click.version_option(__version__, prog_name="bkp")
@click.pass_context
def cli(ctx, policies, home, operator, config, verbose, log_file):
    """bkp: encrypted backups of tenant data to off-site EEA servers, restore drills that
    prove they come back, and certified sanitization of data carriers.

    Exit codes: 0 ok, 1 operation failed, 2 usage, 3 invalid policy, 4 refused for safety,
    5 verification failed. Commands that work on several tenants go on after one fails and
    exit with the highest code.
    """
    from bkp import logs

    logs.setup(verbose, log_file)
    global _state
    ctx.obj = _state = State(policies, home, operator, verbose, config)


# ---------------------------------------------------------------- policy

@cli.group()
def policy():
    """Validate tenant policies and print their schema."""


@policy.command("validate")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@json_option
@pass_state
def policy_validate(state, files, as_json):
    """Validate every policy in the policies directory and the installation settings
    (bkp.yaml), or the FILES given.

    Every error is reported at once with its file, key path and line.
    """
    from bkp import installation
    from bkp.policy import check_repositories_not_shared, policy_files, validate_files

    paths = list(files) or policy_files(state.settings.policies)
    config, named = installation.config_path(state.settings.config)
    with_config = not files and (named or config.exists())
    if not paths and not with_config:
        raise PolicyError(f"no policy files in {state.settings.policies}")
    reports = validate_files(paths)
    _warn_offboarded(state, reports)
    if with_config:
        settings = installation.validate(config)
        check_repositories_not_shared([*reports, settings])
        reports.append(settings)

    def human():
        for r in reports:
            mark = "ok     " if r.valid else "INVALID"
            click.echo(f"{mark} {r.file} ({r.tenant or 'installation settings'})")
            for p in r.errors:
                click.echo(f"  error   {_where(r.file, p)}: {p.message}")
            for p in r.warnings:
                click.echo(f"  warning {_where(r.file, p)}: {p.message}")

    emit({"policies": [r.to_json() for r in reports]}, as_json, human)
    return 0 if all(r.valid for r in reports) else 3


def _warn_offboarded(state, reports) -> None:
    """The policy of a tenant bkp offboarded is still there: a warning (the backups it
    describes are erased; bkp refuses to make new ones)."""
    from bkp.catalog import Catalog, CatalogError, offboarded
    from bkp.policy import Problem

    try:
        catalog = Catalog.read_only(state.settings.catalog_path)
    except CatalogError:
        return  # no records here: nothing was offboarded on this host
    try:
        gone = offboarded(catalog)
    finally:
        catalog.close()
    for report in reports:
        record = gone.get(report.tenant)
        if record is not None:
            report.warnings.append(Problem("", (
                f"tenant {report.tenant} was offboarded (erasure record {record['id']}, "
                f"{record['status']}): its backups are erased and bkp refuses new ones; "
                f"remove this policy")))


def _where(file: Path, problem) -> str:
    line = f":{problem.line}" if problem.line else ""
    return f"{file}{line} {problem.path or '(document)'}"


@policy.command("schema")
def policy_schema():
    """Print the JSON Schema of a tenant policy (every key with a description and example)."""
    from bkp.policy import schema

    click.echo(json.dumps(schema(), indent=2))
    return 0


@policy.command("acknowledge")
@click.argument("tenant")
@click.option("--note", metavar="TEXT", callback=checked_text(TEXT_LIMIT),
              help="Why the weaker rules are acceptable (recorded).")
@json_option
@pass_state
def policy_acknowledge(state, tenant, note, as_json):
    """Accept a tenant's weakened rules (a lifted legal hold, shorter retention, another
    destination), flagged since the run that first used them.

    Recorded with who and why; with operators registered, only an admin may do it (exit 4).
    """
    from bkp.evidence.policy_changes import acknowledge
    from bkp.names import TENANT_ID_RULE, is_tenant_id, shown

    if not is_tenant_id(tenant):
        raise UsageError(f"{shown(tenant)} is not a tenant id: {TENANT_ID_RULE}")
    acknowledged = acknowledge(state.context(act="policy-acknowledge"), tenant, note)

    def human():
        if not acknowledged:
            click.echo(f"{tenant}: no weakened rules waiting for acknowledgement")
        for flag in acknowledged:
            click.echo(f"{tenant}: acknowledged {'; '.join(flag['weakenings'])} "
                       f"(flagged {flag['flagged_at'][:19]}Z)")

    emit({"tenant": tenant, "acknowledged": acknowledged}, as_json, human)
    return 0


@cli.command()
@click.argument("record_id")
@click.option("--signature", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="Your signature over the request: ssh-keygen -Y sign -f KEY -n bkp FILE.")
@click.option("--message", "show_message", is_flag=True,
              help="Print the exact text to sign, and nothing else.")
@json_option
@pass_state
def approve(state, record_id, signature, show_message, as_json):
    """A second registered person's approval of a pending offboarding, erasure or
    validation, proven by their own SSH key (registered in bkp.yaml).

    Refused (exit 4) when the signature is not a registered key's, signs another text, or
    comes from the person who made the request (or did the work) or their OS account.
    """
    from bkp.evidence import approvals

    if show_message:
        row = approvals.pending(state.reader(), record_id)
        if row is None:
            raise UsageError(f"nothing waits for approval under record {record_id}")
        click.echo(row["message"], nl=False)
        return 0
    if signature is None:
        raise UsageError("give --signature FILE (or --message to see what to sign)")
    from bkp.cli.media import _read_signature

    ctx = state.context(act="approve")
    approvals.require_operators(state.installation().operators)  # said before the file
    row = approvals.approve(ctx, record_id, _read_signature(signature),
                            state.installation().operators)
    result = {"record_id": record_id, "approved_by": row["approved_by"], "status": "approved",
              "kind": row["kind"], "key_fingerprint": row["key_fingerprint"]}
    if row["kind"] == "validation":
        from bkp.media.validate import finish

        result.update(finish(ctx, int(record_id)), status="approved")

    def human():
        click.echo(f"record {record_id}: {row['kind']} approved by {row['approved_by']} "
                   f"(key {row['key_fingerprint']})")
        if result.get("certificate"):
            click.echo(f"  certificate {result['certificate']['id']}: "
                       f"{result['certificate']['pdf']}")
        elif row["kind"] in ("offboard", "erase"):
            click.echo(f"  run the same `bkp {row['kind']}` command again to carry it out")

    emit(result, as_json, human)
    return 0


# ---------------------------------------------------------------- init / backup / snapshots

tenants_argument = click.argument("tenants", nargs=-1, metavar="TENANT...")
all_option = click.option("--all", "all_", is_flag=True, help="Every tenant with a policy.")


@cli.command()
@tenants_argument
@all_option
@json_option
@pass_state
def init(state, tenants, all_, as_json):
    """Prepare each tenant's destination and initialise its restic repository.

    Idempotent: an existing repository is left as it is. Keep the repository password in
    the key escrow before the first backup: without it the backups cannot be restored.
    """
    from bkp.context import highest_exit, run_per_tenant
    from bkp.results import InitEntry
    from bkp.tenants.init import init_tenant

    policies, broken = state.select(tenants, all_, InitEntry)
    ctx = state.context()
    outcomes = broken + run_per_tenant(policies, lambda p: init_tenant(ctx, p), result=InitEntry)

    def human():
        for o in outcomes:
            d = o.data
            extra = f"  {d['error']}" if d.get("error") else ""
            click.echo(f"{d['tenant']:<24} {d['status']:<12} {d.get('repository', '')}{extra}")
            for copy in d.get("copies") or ():
                said = f"  {copy['error']}" if copy.get("error") else ""
                click.echo(f"{'':<24} copy {copy['id']}: {copy['status']:<12} "
                           f"{copy.get('repository') or ''}{said}")

    emit({"tenants": [o.data for o in outcomes]}, as_json, human)
    return highest_exit(outcomes)


@cli.command()
@tenants_argument
@all_option
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Tenants backed up in parallel (never two operations on one repository).")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when stderr is a terminal).")
@click.option("--dry-run", is_flag=True,
              help="Every check and restic's own dry run (what would be added); nothing is "
                   "written or recorded.")
@json_option
@pass_state
def backup(state, tenants, all_, jobs, progress, dry_run, as_json):
    """Back up tenants, apply their retention (forget + prune) and record each run.

    One tenant failing never stops the others; the exit code is the highest among them.
    """
    from bkp.context import highest_exit, run_per_tenant
    from bkp.results import BackupRun
    from bkp.tenants.backup import backup_tenant
    from bkp.tenants.monitoring import pinged

    policies, broken = state.select(tenants, all_, BackupRun)
    if dry_run:
        from bkp.tenants.backup import preview_backup

        ctx = state.bare_context()
        outcomes = broken + run_per_tenant(policies, lambda p: preview_backup(ctx, p), jobs,
                                           result=BackupRun)
        emit({"runs": [o.data for o in outcomes], "dry_run": True}, as_json,
             lambda: _print_runs(outcomes))
        return highest_exit(outcomes)
    show = sys.stderr.isatty() if progress is None else progress
    ctx = state.context(progress=show)
    mark = _result_mark(state, ctx, policies, remember=True)
    outcomes = broken + run_per_tenant(
        policies, lambda p: pinged(p, lambda: backup_tenant(ctx, p)), jobs, result=BackupRun)
    refused = _send_result(ctx, mark, "backup")
    _alerts_follow(state, ctx)
    emit({"runs": [o.data for o in outcomes]}, as_json, lambda: _print_runs(outcomes))
    return max(highest_exit(outcomes), refused)


def _result_mark(state, ctx, policies, *, remember: bool = False):
    """In a pod (BKP_RESULT_KEY set by the manifest): what signs this job's result, and
    where its records begin. None on a host. `remember`: a backup also reads the pod's own
    record of the tenant's snapshots, so that it can skip a forget that would forget
    nothing without a catalog."""
    from bkp.evidence.pod_results import RESULT_KEY_ENV, mark_before_work

    key = os.environ.get(RESULT_KEY_ENV)
    if not key:
        return None
    results = state.installation().results
    if results is None:
        raise PolicyError(f"{RESULT_KEY_ENV} is set but bkp.yaml names no results inbox "
                          f"(results.inbox): nowhere to leave the result")
    if len(policies) != 1:
        raise UsageError(f"{RESULT_KEY_ENV} signs for one tenant: name exactly one")
    mark = mark_before_work(ctx.catalog, policies[0].tenant, Path(key), results)
    if remember:
        from bkp.evidence.pod_results import read_kept

        kept = read_kept(mark)
        if kept is not None:
            ctx.remembered[mark.tenant] = kept
    return mark


def _send_result(ctx, mark, kind: str) -> int:
    """The job's signed result into the inbox. A result that cannot be left there does not
    change the job's exit code (the gatherer still finds the snapshot in the repository),
    unless the inbox was refused for safety (an sftp server that does not hold the pinned
    host key): then 4, so that the job fails where the cluster's alerts see it. Else 0."""
    import socket

    from bkp.destinations.inbox import open_inbox
    from bkp.evidence.pod_results import send_kept, send_result

    if mark is None:
        return 0
    with open_inbox(mark.results.inbox) as inbox:  # one session for the result and record
        try:
            name = send_result(ctx.catalog, mark, kind, socket.gethostname(), inbox)
        except BkpError as exc:
            say(f"warning: the result was not left in the inbox: {exc}")
            return SafetyError.exit_code if isinstance(exc, SafetyError) else 0
        say(f"result {name} left in the inbox")
        if kind == "backup":
            try:
                send_kept(ctx.catalog, mark, inbox)
            except BkpError as exc:  # tomorrow's pod lets restic list instead
                say(f"warning: the record of the kept snapshots was not left in the inbox: "
                    f"{exc}")
    return 0


def _alerts_follow(state, ctx) -> None:
    """After a manual backup or drill: metrics rewritten, a fixed night's check cleared."""
    installation = state.installation()
    url = os.environ.get("BKP_HEALTHCHECK_URL") or installation.healthcheck_url
    textfile = os.environ.get("BKP_PROMETHEUS_TEXTFILE") or installation.prometheus_textfile
    if not (url or textfile):
        return
    from bkp.tenants.run import after_manual_work  # the nightly run's code: only when needed
    everyone, _ = state.select((), True)
    after_manual_work(ctx, everyone, url, Path(textfile) if textfile else None)


def _print_runs(outcomes) -> None:
    for o in outcomes:
        d = o.data
        if d.get("dry_run"):
            click.echo(f"{d['tenant']:<24} dry run: would back up {d['files']} files, "
                       f"{d['files_new']} new, {d['files_changed']} changed, adding "
                       f"{d['bytes_added']} bytes; nothing was written")
        elif d["status"] == "ok":
            click.echo(f"{d['tenant']:<24} ok      snapshot {d['snapshot_id']}  "
                       f"{d['files']} files  +{d['bytes_added']} bytes  "
                       f"{d['duration_s']:.1f}s")
        else:
            click.echo(f"{d['tenant']:<24} {(d.get('result') or d['status']).upper():<7} "
                       f"{d.get('error')}")
        for db in d.get("databases") or ():
            said = (f"dump {db['snapshot_id'][:8]}  {db['tables']} tables  {db['rows']} rows  "
                    f"{db['bytes']} bytes" if db["status"] == "ok" else f"FAILED {db['error']}")
            click.echo(f"{'':<24}   {db['type']} database {db['name']}: {said}")
        for copy in d.get("copies") or ():
            said = (f"ok, snapshot {(copy['snapshot_id'] or '-')[:8]} "
                    f"({copy.get('snapshots_copied', 0)} copied)" if copy["status"] == "ok"
                    else f"FAILED {copy['error']}")
            click.echo(f"{'':<24}   copy {copy['id']}: {said}")


copy_option = click.option(
    "--copy", "copy_id", metavar="ID", callback=checked_text(NAME_LIMIT),
    help="One of the tenant's copies instead of its destination: the copy's id, or its "
         "position 1, 2, ... in the policy's copies.")


def _at_copy(policy, copy_id: str | None):
    """The policy as seen at one of its copies (or as it is, without --copy)."""
    if copy_id is None:
        return policy
    from bkp.policy import at_copy, find_copy

    return at_copy(policy, find_copy(policy, copy_id))


@cli.command()
@click.argument("tenant")
@copy_option
@json_option
@pass_state
def snapshots(state, tenant, copy_id, as_json):
    """List a tenant's snapshots, read from its repository (the truth about backups)."""
    from bkp.tenants.snapshots import list_snapshots

    items = list_snapshots(state.bare_context(), _at_copy(state.one_policy(tenant), copy_id))

    def human():
        if not items:
            click.echo(f"{tenant}: no snapshots")
        for s in items:
            click.echo(f"{s['short_id']}  {s['time'][:19]}  {','.join(s['paths'])}  "
                       f"[{','.join(s['tags'])}]")

    emit({"snapshots": items}, as_json, human)
    return 0


@cli.command("restic", context_settings={"ignore_unknown_options": True,
                                         "allow_interspersed_args": False})
@click.argument("tenant")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="-- ARGS...")
@pass_state
def restic_command(state, tenant, args):
    """Plain restic for one tenant, with its repository, password and transport set up as
    bkp does (secrets through the environment, never argv). Audited.

    \b
    bkp restic acme-zorg -- snapshots
    bkp restic acme-zorg -- mount /mnt/acme-zorg
    bkp restic acme-zorg -- diff 1a2b3c4d 5e6f7a8b
    bkp restic acme-zorg -- key add

    Refused: options that name another repository or password, and options before the
    command that bkp does not know (exit 2: put them after the command), and commands that
    delete (forget, prune, key remove, ...) under a legal hold (exit 4). restic's own
    failure is exit 1.
    """
    from bkp.tenants.passthrough import run_restic

    args = list(args[1:] if args[:1] == ("--",) else args)  # click keeps the separator
    from bkp.tenants.passthrough import writes

    try:
        act = "restic-write" if writes(args) else None
    except UsageError:  # refused below, with the reason check_arguments gives
        act = "restic-write"
    code = run_restic(state.context(act=act), state.one_policy(tenant), args)
    if code:
        say(f"bkp: restic exited with {code}")
    return 0 if code == 0 else 1


# ---------------------------------------------------------------- restore / drill

@cli.command()
@click.argument("tenant")
@click.option("--target", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Where to restore; must be empty unless --force. With --database: the "
                   "file to write the dump to, which must not exist.")
@click.option("--snapshot", metavar="ID", help="Snapshot id (default: the latest).")
@click.option("--include", "includes", multiple=True, metavar="PATH",
              help="Restore only this path of the snapshot (repeatable).")
@click.option("--force", is_flag=True, help="Restore into a non-empty target.")
@click.option("--database", metavar="NAME", callback=checked_text(NAME_LIMIT),
              help="Write the latest dump of this database (or --snapshot's) to the file "
                   "--target, to load into a server.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when stderr is a terminal).")
@copy_option
@json_option
@pass_state
def restore(state, tenant, target, snapshot, includes, force, database, progress, copy_id,
            as_json):
    """Restore a tenant's snapshot into DIR, verified by restic while writing.

    This is access to personal data: who, which tenant, which snapshot and where to is
    recorded in the audit trail. A non-empty target is refused (exit 4) unless --force.
    With --database, the database's dump is written to the file --target instead. With
    --copy, from one of the tenant's copies (the primary site lost); --snapshot then takes
    the copy's own snapshot id.
    """
    from bkp.tenants.restore import restore_database, restore_tenant

    policy = _at_copy(state.one_policy(tenant), copy_id)
    if database is not None:
        if includes or force:
            raise UsageError("--include and --force do not apply to --database: a dump is "
                             "one file, written only where nothing exists")
        result = restore_database(state.context(), policy, database, target,
                                  snapshot=snapshot)
        emit(result, as_json, lambda: click.echo(
            f"wrote the dump of database {database} ({result['bytes']} bytes, snapshot "
            f"{result['snapshot_id'][:8]} of {result['snapshot_time'][:19]}) to "
            f"{result['target']}"))
        return 0
    show = sys.stderr.isatty() if progress is None else progress
    result = restore_tenant(state.context(progress=show), policy, target, snapshot=snapshot,
                            includes=includes, force=force)
    emit(result, as_json, lambda: click.echo(
        f"restored {result['files']} files ({result['bytes']} bytes) of snapshot "
        f"{result['snapshot_id'][:8]} to {result['target']}"))
    return 0


@cli.command()
@click.argument("tenants", nargs=-1, metavar="TENANT...")
@all_option
@click.option("--due", is_flag=True, help="Only tenants whose drill schedule says it is due.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when stderr is a terminal).")
@copy_option
@json_option
@pass_state
def drill(state, tenants, all_, due, progress, copy_id, as_json):
    """Restore test: restore the latest snapshot into scratch space and verify it.

    Checks the repository (rotating read-data subset), the restored files against the
    snapshot and its listing, a sample against the live source, and the RTO. Exit 5 when
    verification found problems, 1 when the drill could not run. A markdown report per
    drill is written under $BKP_HOME/reports/drills/.
    """
    from datetime import UTC, datetime

    from bkp.context import highest_exit, run_per_tenant
    from bkp.results import DrillRun
    from bkp.tenants.drill import drill_tenant
    from bkp.tenants.run import plan

    if due and (tenants or all_):
        raise UsageError("--due picks the tenants itself: give no TENANT and no --all")
    if copy_id is not None and (due or all_ or len(tenants) != 1):
        raise UsageError("--copy drills one copy of one tenant: give exactly one TENANT")
    policies, broken = state.select(tenants, all_ or due, DrillRun)
    policies = [_at_copy(p, copy_id) for p in policies]
    show = sys.stderr.isatty() if progress is None else progress
    ctx = state.context(progress=show)
    if due:
        now = datetime.now(UTC)
        due_tenants = {d.tenant for d in plan(ctx, policies, now) if d.kind == "drill" and d.due}
        policies = [p for p in policies if p.tenant in due_tenants]
    mark = _result_mark(state, ctx, policies)
    outcomes = broken + run_per_tenant(policies, lambda p: drill_tenant(ctx, p),
                                       result=DrillRun)
    refused = _send_result(ctx, mark, "drill")
    _alerts_follow(state, ctx)

    def human():
        if not outcomes:
            click.echo("no drill due")
        _print_drills(outcomes)

    emit({"drills": [o.data for o in outcomes]}, as_json, human)
    return max(highest_exit(outcomes), refused)


@cli.command()
@click.argument("tenants", nargs=-1, metavar="TENANT...")
@click.option("--all", "all_", is_flag=True,
              help="Every tenant with an append_only destination.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when stderr is a terminal).")
@json_option
@pass_state
def maintain(state, tenants, all_, progress, as_json):
    """Apply retention (forget + prune) on append-only destinations.

    Nightly runs never forget on an append_only destination: the server refuses their
    credential every deletion. This command reaches the repository through maintenance_url
    with maintenance_credentials_file, a credential that may delete and lives only on the
    host where maintenance runs, and applies the same keep rules. A tenant without an
    append_only destination or without that credential here is refused (exit 3).
    """
    from bkp.context import highest_exit, run_per_tenant
    from bkp.results import MaintainEntry
    from bkp.tenants.maintain import has_maintenance, maintain_tenant

    policies, broken = state.select(tenants, all_, MaintainEntry)
    if all_:
        policies = [p for p in policies if has_maintenance(p)]
    show = sys.stderr.isatty() if progress is None else progress
    ctx = state.context(progress=show)
    outcomes = broken + run_per_tenant(policies, lambda p: maintain_tenant(ctx, p),
                                       result=MaintainEntry)

    def human():
        if not outcomes:
            click.echo("no tenant with an append_only destination or copy")
        for o in outcomes:
            d = o.data
            if d["status"] == "ok" and d.get("result") != "legal_hold":
                if d.get("repository"):
                    click.echo(f"{d['tenant']:<24} ok      kept {d['snapshots_kept']} file "
                               f"snapshots, forgot {d['snapshots_forgotten']} snapshots  "
                               f"{d['repository']}")
                else:
                    click.echo(f"{d['tenant']:<24} ok")
            else:
                click.echo(f"{d['tenant']:<24} {(d.get('result') or d['status']).upper():<7} "
                           f"{d.get('error')}")
            for copy in d.get("copies") or ():
                said = (f"kept {copy['snapshots_kept']} file snapshots, forgot "
                        f"{copy['snapshots_forgotten']} snapshots  {copy['repository']}"
                        if copy["status"] == "ok" and copy.get("result") != "legal_hold"
                        else copy.get("error") or copy.get("result"))
                click.echo(f"{'':<24}   copy {copy['id']}: {copy['status']}  {said}")

    emit({"tenants": [o.data for o in outcomes]}, as_json, human)
    return highest_exit(outcomes)


def _print_drills(outcomes) -> None:
    for o in outcomes:
        d = o.data
        click.echo(f"{d['tenant']:<24} drill {d.get('result', d['status']).upper():<8} snapshot "
                   f"{(d.get('snapshot_id') or '-')[:8]}  {d.get('files_checked') or 0} files "
                   f"checked  {d.get('duration_s') or 0:.1f}s  report {d.get('report')}")
        for db in d.get("databases") or ():
            load = f"  loaded in {db['load_s']:.1f}s" if db.get("load_s") is not None else ""
            click.echo(f"{'':<24}   {db['type']} database {db['name']}: "
                       f"{db['status'].upper()}  {db['tables']} tables  {db['rows']} rows{load}")
        for p in d.get("problems") or []:
            click.echo(f"    {p['message']}")
        if d.get("error"):
            click.echo(f"    {d['error']}")


# ---------------------------------------------------------------- run / schedule

@cli.command()
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Tenants backed up in parallel.")
@click.option("--healthcheck-url", envvar="BKP_HEALTHCHECK_URL", metavar="URL",
              help="Healthchecks.io-style URL pinged for the whole run: URL/start, URL on "
                   "success, URL/fail with the failures (env BKP_HEALTHCHECK_URL).")
@click.option("--prometheus-textfile", envvar="BKP_PROMETHEUS_TEXTFILE", metavar="FILE",
              type=click.Path(path_type=Path),
              help="Write per-tenant metrics for node_exporter's textfile collector "
                   "(env BKP_PROMETHEUS_TEXTFILE).")
@click.option("--dry-run", is_flag=True,
              help="Say what is due now and why; do nothing and record nothing.")
@json_option
@pass_state
def run(state, jobs, healthcheck_url, prometheus_textfile, dry_run, as_json):
    """Do every backup and drill that is due now: what cron calls.

    A slot (the most recent time a policy's schedule fired) is due until a successful run
    covers it; missed slots are caught up once. A second `bkp run` while one is working
    exits 1 at once.
    """
    from bkp.catalog import CatalogError
    from bkp.tenants.run import report_run_not_started, run_due

    if dry_run:
        return _preview_run(state, as_json)
    installation = state.installation()
    healthcheck_url = healthcheck_url or installation.healthcheck_url
    prometheus_textfile = prometheus_textfile or installation.prometheus_textfile
    from bkp.results import BackupRun

    policies, broken = state.select((), True, BackupRun)
    try:
        ctx = state.context()
    except CatalogError:
        report_run_not_started(healthcheck_url, prometheus_textfile)
        raise
    evidence = (lambda: _evidence_outcome(ctx, installation)) if installation.evidence else None
    report = run_due(ctx, policies, jobs=jobs, healthcheck_url=healthcheck_url,
                     prometheus_textfile=prometheus_textfile, invalid=broken,
                     evidence=evidence)

    def human():
        if not report.runs and not report.drills:
            click.echo(f"nothing due ({len(report.not_due)} schedule slots already done)")
        _print_runs(report.runs)
        _print_drills(report.drills)
        if report.evidence:
            _print_evidence(report.evidence.data)

    emit(report.to_json(), as_json, human)
    return report.exit_code


def _preview_run(state, as_json) -> int:
    """`bkp run --dry-run`: the due decisions from the policies and a read-only catalog."""
    from datetime import UTC, datetime

    from bkp.tenants.run import plan
    from bkp.tenants.schedule import slot_label

    state.installation()  # invalid settings fail the night (exit 3): the preview says so too
    policies, broken = state.select((), True)
    decisions = plan(state.read_context(), policies, datetime.now(UTC))

    def view(d):
        return {"tenant": d.tenant, "kind": d.kind, "slot": slot_label(d.slot),
                "reason": d.reason}

    due = [view(d) for d in decisions if d.due]
    document = {"dry_run": True, "runs": [], "drills": [], "due": due,
                "not_due": [view(d) for d in decisions if not d.due],
                "invalid": [o.data for o in broken]}

    def human():
        if not due:
            click.echo("dry run: nothing is due now")
        for d in due:
            click.echo(f"dry run: would {d['kind']} {d['tenant']}: {d['reason']}")
        for o in broken:
            click.echo(f"dry run: {o.tenant} would FAIL: {o.data['error']}")

    emit(document, as_json, human)
    return 3 if broken else 0


def _evidence_outcome(ctx, installation):
    """The evidence copy as one more outcome of the night: its failure fails the run."""
    from bkp.context import Outcome
    from bkp.evidence.store import backup_evidence
    from bkp.results import EvidenceCopy

    try:
        return Outcome("", 0, backup_evidence(ctx, installation))
    except BkpError as exc:
        return Outcome("", exc.exit_code, EvidenceCopy("failed", error=str(exc)))


def _print_evidence(data: dict) -> None:
    if data["status"] == "ok":
        click.echo(f"{'(evidence copy)':<24} ok      snapshot {data['snapshot_id'][:8]}  "
                   f"{data['events']} audit events, head {data['audit_head'][:16]}")
    else:
        click.echo(f"{'(evidence copy)':<24} FAILED  {data['error']}")


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["cron", "systemd", "kubernetes"]),
              default="cron", show_default=True,
              help="A crontab line, a hardened systemd service + timer, or Kubernetes "
                   "CronJobs (one per tenant and task).")
@click.option("--every", default=15, show_default=True, type=click.IntRange(1, 59),
              help="Minutes between checks for due work.")
@click.option("--scheduler", default="scheduler", show_default=True, metavar="NAME",
              help="The operator name scheduled runs are recorded under (BKP_OPERATOR).")
@click.option("--healthcheck-url", envvar="BKP_HEALTHCHECK_URL", metavar="URL",
              help="Carried into the units: the run's global ping URL (better: monitoring "
                   "in bkp.yaml, which the schedule then points to).")
@click.option("--prometheus-textfile", envvar="BKP_PROMETHEUS_TEXTFILE", metavar="FILE",
              type=click.Path(path_type=Path), help="Carried into the units: the metrics file.")
@click.option("--environment-file", metavar="FILE", type=click.Path(path_type=Path),
              help="systemd only: an EnvironmentFile= for the service, e.g. with the "
                   "variables of password_env tenants (mode 0600).")
@click.option("--output", "-o", metavar="PATH", type=click.Path(path_type=Path),
              help="Write instead of printing, mode 0600: the cron file, or for systemd a "
                   "directory that gets bkp.service and bkp.timer, or the manifests.")
@click.option("--maintenance", is_flag=True,
              help="Only the weekly `bkp maintain --all` job (bkp-maintain.service and "
                   ".timer), for the host that holds the maintenance credentials.")
@click.option("--image", metavar="IMAGE",
              help="kubernetes: the bkp image (default: kubernetes.image in bkp.yaml).")
@click.option("--namespace", metavar="NS",
              help="kubernetes: the namespace (default: kubernetes.namespace in bkp.yaml, "
                   "else bkp).")
@click.option("--spread", metavar="HH:MM-HH:MM",
              help="kubernetes: move each plain daily backup time to a minute of this window "
                   "derived from the tenant id, so the jobs do not all start at once.")
@pass_state
def schedule(state, fmt, every, scheduler, healthcheck_url, prometheus_textfile,
             environment_file, output, maintenance, image, namespace, spread):
    """Print (or write) the crontab line or systemd units that drive `bkp run`.

    The systemd service may write only to BKP_HOME, the local destinations of the current
    policies and the metrics file's folder: re-render it after adding a local tenant.
    Tenants whose password comes from password_env need that variable where bkp runs: with
    systemd give --environment-file; cron cannot carry it (use password_file).
    """
    from bkp.tenants import schedule as plans

    if fmt == "kubernetes":
        if maintenance:
            raise UsageError("--maintenance goes with cron or systemd: the Kubernetes "
                             "manifests always hold each append-only tenant's maintenance job")
        return _schedule_kubernetes(state, image, namespace, spread, output)
    if image or namespace or spread:
        raise UsageError("--image, --namespace and --spread go with --format kubernetes")
    inst = _installation_for_schedule(state, fmt, every, scheduler, healthcheck_url,
                                      prometheus_textfile, environment_file)
    if maintenance:
        text = (plans.render_maintenance_cron(inst) if fmt == "cron"
                else plans.render_maintenance_systemd(inst))
    else:
        text = plans.render_cron(inst) if fmt == "cron" else plans.render_systemd(inst)
    if output:
        unit = "bkp-maintain" if maintenance else "bkp"
        for path in plans.write_schedule(text, fmt, output, unit):
            say(f"wrote {path} (mode 0600)")
        return 0
    if any(key == "BKP_HEALTHCHECK_URL" for key, _ in inst.environment):
        say("note: this schedule holds a healthcheck URL: install it with mode 0600, or use "
            "--output (or put the URL in bkp.yaml)")
    click.echo(text, nl=False)
    return 0


def _schedule_kubernetes(state, image, namespace, spread, output) -> int:
    """The CronJobs of every valid policy and the gatherer; an invalid policy, or one the
    cluster cannot run, gets no CronJob and makes the exit 3 (like `bkp run`)."""
    import re

    from bkp import installation, names
    from bkp.tenants import kubernetes
    from bkp.tenants.schedule import local_zone

    settings = state.installation()
    cluster = settings.cluster
    image = image or cluster.image
    if not image:
        raise UsageError("no image: give --image IMAGE or kubernetes.image in bkp.yaml "
                         "(build it from the Dockerfile, see runbooks/kubernetes.md)")
    if not re.fullmatch(r"[a-z0-9][^\s]*", image) or not image.isprintable():
        raise UsageError(f"--image {names.shown(image)} is not an image reference")
    namespace = namespace or cluster.namespace
    if not re.fullmatch(installation.DNS_LABEL, namespace):
        raise UsageError(f"--namespace {names.shown(namespace)} is not a Kubernetes "
                         f"namespace name (a-z, 0-9 and '-', at most 63)")
    window = None
    if spread is not None:
        window = kubernetes.parse_window(spread)
        if window is None:
            raise UsageError(f"--spread {names.shown(spread)} is not a window HH:MM-HH:MM "
                             f"(e.g. 22:00-05:00)")
    policies, broken = state.select((), True)
    config, named = installation.config_path(state.settings.config)
    zone = getattr(local_zone(), "key", None)
    results = settings.results
    if results is not None and results.inbox.type == "local" and cluster.inbox is None:
        raise PolicyError(f"the results inbox {results.inbox.path} is a directory: pods reach "
                          f"it only through a shared volume; add kubernetes.inbox to bkp.yaml "
                          f"(e.g. {{nfs: {{server: ..., path: ...}}}}), or use an s3 inbox")
    options = kubernetes.Options(
        image=image, namespace=namespace, spread=window, time_zone=zone,
        config_text=config.read_text(encoding="utf-8") if (named or config.exists())
        else None, results=results, inbox_volume=cluster.inbox,
        result_keys=_public_result_keys(results, policies))
    rendering = kubernetes.render(policies, cluster, options)
    text = kubernetes.to_yaml(rendering, options)
    if output:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        say(f"wrote {output} (mode 0600)")
    else:
        click.echo(text, nl=False)
    for outcome in broken:
        say(f"{outcome.tenant}: {outcome.data['error']}; no CronJob")
    for _, problem in rendering.problems:
        say(problem)
    return 3 if broken or rendering.problems else 0


def _public_result_keys(results, policies) -> dict[str, str]:
    if results is None:
        return {}
    keys = {}
    for policy in policies:
        with contextlib.suppress(OSError, UnicodeDecodeError):  # missing: the tenant's problem
            keys[policy.tenant] = results.public_key(policy.tenant).read_text(encoding="ascii")
    return keys


def _installation_for_schedule(state, fmt, every, scheduler, healthcheck_url,
                               prometheus_textfile, environment_file):
    import shutil

    from bkp import installation
    from bkp.policy import load_policies
    from bkp.tenants.schedule import Installation

    beside_python = Path(sys.executable).parent / "bkp"  # the virtualenv's own script
    exe = beside_python if beside_python.exists() else Path(shutil.which("bkp") or "bkp")
    settings = state.installation()
    writable = [state.settings.home.absolute()]
    policies = []
    if state.settings.policies.is_dir():
        policies, _ = load_policies(state.settings.policies)
        writable += [Path(p.destination.path) for p in policies if p.destination.type == "local"]
    from_env = sorted({p.password_env for p in policies if p.password_env})
    if from_env and (fmt == "cron" or environment_file is None):
        tenants = ", ".join(p.tenant for p in policies if p.password_env)
        raise PolicyError(
            f"tenant(s) {tenants} take their repository password from the environment "
            f"({', '.join(from_env)}), which a scheduled run does not have: use password_file,"
            f" or --format systemd --environment-file FILE with those variables (mode 0600)")
    environment = {"BKP_OPERATOR": scheduler}
    config, named = installation.config_path(state.settings.config)
    if named or config.exists():
        environment["BKP_CONFIG"] = str(config.absolute())
    if healthcheck_url:
        environment["BKP_HEALTHCHECK_URL"] = healthcheck_url
    metrics = prometheus_textfile or settings.prometheus_textfile
    if prometheus_textfile:
        environment["BKP_PROMETHEUS_TEXTFILE"] = str(prometheus_textfile.absolute())
    if metrics:
        writable.append(metrics.absolute().parent)
    return Installation(exe.absolute(), state.settings.policies.absolute(),
                        state.settings.home.absolute(), every, tuple(writable),
                        tuple(sorted(environment.items())),
                        environment_file=environment_file.absolute() if environment_file
                        else None)


# ---------------------------------------------------------------- status

@cli.command()
@click.argument("tenants", nargs=-1, metavar="[TENANT...]")
@json_option
@pass_state
def status(state, tenants, as_json):
    """Per tenant: last backup, RPO state, last drill and when the next drill is due."""
    from bkp.tenants.status import (
        approvals_status,
        evidence_status,
        invalid_status,
        tenant_status,
    )

    policies, broken = state.select(tenants, not tenants)
    catalog = state.reader()
    rows = [tenant_status(catalog, p) for p in policies]
    rows += [invalid_status(catalog, b.tenant, b.data["error"]) for b in broken]
    document = {"tenants": rows}
    try:
        configured = state.installation().evidence is not None
    except PolicyError:
        configured = False  # `bkp policy validate` names what is wrong with bkp.yaml
    evidence_row = evidence_status(catalog, configured)
    if evidence_row:
        document["evidence"] = evidence_row
    document["access"] = _access(state)
    document["approvals"] = approvals_status(catalog)
    if state.catalog_note:
        document["catalog"] = {"note": state.catalog_note}

    def human():
        _print_status(rows)
        if evidence_row:
            last = evidence_row.get("last") or {}
            click.echo(f"evidence copy: {(last.get('status') or 'never').upper()} "
                       f"{(last.get('time') or '')[:19]} {last.get('error') or ''}".rstrip())
        _print_access(document["access"], document["approvals"])

    emit(document, as_json, human)
    return 0


def _access(state) -> dict:
    """Who acts and under which rules; an unreadable bkp.yaml or a refused --operator is
    said, not raised: status still shows the tenants."""
    from bkp.tenants.status import access_status

    try:
        operators = state.installation().operators
    except PolicyError as exc:
        return access_status((), None, f"bkp.yaml is invalid: {exc}")
    from bkp.evidence.operator_changes import lost

    problem = lost(state.reader(), state.installation())
    try:
        return access_status(operators, state.actor(), problem)
    except SafetyError as exc:
        return access_status(operators, None, str(exc))


def _print_access(access: dict, approvals: list[dict]) -> None:
    you = access.get("you") or {}
    who = (f"; you: {you['operator']} (OS user {you['os_user']}, {you['role'] or 'no role'})"
           if you and access["operators_registered"] else "")
    click.echo(f"access: {access['note']}{who}")
    if access.get("problem"):
        click.echo(f"  ! {access['problem']}")
    click.echo(f"time: {_clock_text(access['clock'])}")
    for request in approvals:
        click.echo(f"approval {request['id']}: {request['kind']} {request['subject']} "
                   f"requested by {request['requested_by']} {request['requested_at'][:19]}Z: "
                   f"{request['status'].upper()} (expires {request['expires_at'][:19]}Z)")


def _clock_text(clock: dict) -> str:
    from bkp.clock import ClockState

    return ClockState(**clock).describe()


def _print_status(rows) -> None:
    header = (f"{'TENANT':<22} {'STATE':<7} {'LAST BACKUP (UTC)':<20} {'RESULT':<12} "
              f"{'SNAPSHOT':<9} {'RPO':<5} {'SNAPS':>5}  {'LAST DRILL':<20} {'DRILL':<7} "
              f"{'NEXT DRILL DUE':<20}")
    click.echo(header)
    for r in rows:
        last = r.get("last_backup") or {}
        drill = r.get("last_drill") or {}
        click.echo(
            f"{r['tenant']:<22} {r.get('state', 'invalid').upper():<7} "
            f"{(last.get('time') or 'never')[:19]:<20} "
            f"{last.get('status') or '-':<12} {(last.get('snapshot_id') or '-')[:8]:<9} "
            f"{'ok' if r.get('rpo_ok') else 'LATE':<5} {_dash(r.get('snapshot_count')):>5}  "
            f"{(drill.get('time') or 'never')[:19]:<20} {_drill_word(r):<7} "
            f"{(r.get('drill_due') or '-')[:19]:<20}")
        if r.get("error"):
            click.echo(f"{'':<22} ! {r['error']}")
        if r.get("hint"):
            click.echo(f"{'':<22}   {r['hint']}")
        for flag in r.get("policy_flags") or ():
            click.echo(f"{'':<22} ! policy weakened {flag['flagged_at'][:19]}Z: "
                       f"{'; '.join(flag['weakenings'])} (not yet acknowledged: "
                       f"bkp policy acknowledge {r['tenant']})")
        if r.get("policy_changed_since_last_run"):
            click.echo(f"{'':<22}   policy edited since the last run; recorded at the next")
        if r.get("maintenance"):
            click.echo(f"{'':<22}   {_maintenance_text(r['maintenance'])}")
        for copy in r.get("copies") or ():
            click.echo(f"{'':<22} {_copy_line(copy)}")
        for request in r.get("erasures") or ():
            click.echo(f"{'':<22} ! {request['kind']} record {request['record_id']}: "
                       f"{request['status']} (requested {request['requested_at'][:19]}Z)")
        for database in r.get("databases") or ():
            dump = database["last_good_dump"]
            said = (f"last good dump {dump['time'][:19]}Z, snapshot {dump['snapshot_id'][:8]}, "
                    f"{dump['tables']} tables, {dump['rows']} rows" if dump else "never dumped")
            click.echo(f"{'':<22} {'' if database['rpo_ok'] else '! '}{database['type']} "
                       f"database {database['name']}: {said}"
                       f"{'' if database['rpo_ok'] else ' (LATE)'}")


def _maintenance_text(state: dict) -> str:
    pending = state.get("pending")
    waiting = ("snapshots waiting for maintenance: not counted yet" if pending is None else
               f"{pending} snapshot{'' if pending == 1 else 's'} waiting for maintenance "
               f"(beyond the keep rules)")
    last = state.get("last")
    when = (f"last `bkp maintain` {last['time'][:19]}Z {last['status']}" if last else
            "never maintained")
    return f"append-only: {waiting}; {when}"


def _copy_line(copy: dict) -> str:
    """`copy fra: last copied ..., 0 snapshots behind`, with `!` when it lags or failed."""
    good, last = copy["last_copied"], copy["last_copy"] or {}
    said = (f"last copied {good['time'][:19]}Z, snapshot {(good['snapshot_id'] or '-')[:8]}"
            if good else "never copied")
    lag = copy["lag_snapshots"]
    behind = (f"{lag} snapshot{'' if lag == 1 else 's'} behind"
              + (f" ({copy['lag_hours']} h)" if copy.get("lag_hours") else ""))
    failed = f"; last attempt FAILED: {last['error']}" if last.get("status") == "failed" else ""
    extra = ""
    if "maintenance" in copy:
        extra += f"; {_maintenance_text(copy['maintenance'])}"
    proof = copy.get("immutability")
    if proof is not None:
        extra += (f"; immutability proven by copy drill run {proof['run_id']} "
                  f"({proof['time'][:19]}Z)" if proof["proven"] else
                  f"; immutability NOT proven (`bkp drill TENANT --copy {copy['id']}`)")
    return f"{'' if copy['ok'] else '! '}copy {copy['id']}: {said}, {behind}{failed}{extra}"


def _drill_word(row) -> str:
    if row.get("drill_ok") is None or row.get("state") == "invalid":
        return "-"
    if row.get("drill_overdue"):
        return "OVERDUE"
    return "ok" if row.get("drill_ok") else "FAILED"


def _dash(value) -> str:
    return "-" if value is None else str(value)


# ---------------------------------------------------------------- audit

@cli.group()
def audit():
    """Read and verify the hash-chained audit trail."""


@audit.command("log")
@click.option("--tenant", help="Only this tenant's events.")
@click.option("--since", metavar="DATE", help="Only events at or after DATE (ISO 8601, UTC).")
@json_option
@pass_state
def audit_log(state, tenant, since, as_json):
    """The audit trail: who did what, to which tenant, when (UTC)."""
    events = state.reader().audit_events(tenant=tenant, since=_since(since))
    for e in events:
        e["details"] = json.loads(e["details"] or "{}")

    def human():
        for e in events:
            details = " ".join(f"{k}={v}" for k, v in e["details"].items() if v is not None)
            click.echo(f"{e['seq']:>6} {e['time'][:19]}Z {e['operator'] or '-':<12} "
                       f"{e['tenant'] or '-':<18} {e['action']:<14} {e['outcome']:<12} {details}")

    emit({"events": events}, as_json, human)
    return 0


def _since(text: str | None) -> str | None:
    if not text:
        return None
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r} is not an ISO 8601 date or time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@audit.command("verify")
@click.option("--anchor", metavar="HASH",
              help="A head hash kept earlier (bkp audit head): prove the log still holds it.")
@json_option
@pass_state
def audit_verify(state, anchor, as_json):
    """Recompute the audit chain and check every record has its event in it; exit 5 when
    any event was changed, inserted or removed, or the trail itself is missing or broken."""
    import re

    from bkp.evidence.audit import ChainReport, verify_trail

    if anchor is not None and not re.fullmatch(r"[0-9a-f]{64}", anchor.strip().lower()):
        # An empty $ANCHOR in a script must not pass as "verified with the anchor".
        raise UsageError(f"--anchor {anchor!r} is not a head hash: give the 64 hex characters "
                         f"`bkp audit head` printed")
    try:
        report = verify_trail(_trail_catalog(state), anchor)
    except BkpError as exc:  # no trail to verify is not an intact trail
        report = ChainReport(False, 0, "", [str(exc)], False if anchor else None)

    def human():
        if report.valid:
            click.echo(f"audit trail intact: {report.events} events, head {report.head}")
        else:
            click.echo(f"AUDIT TRAIL BROKEN ({len(report.problems)} problems):")
            for p in report.problems:
                click.echo(f"  {p}")

    emit(report.to_json(), as_json, human)
    return 0 if report.valid else 5


def _trail_catalog(state):
    """The catalog whose trail is checked: read-only, and never an empty stand-in."""
    from bkp.catalog import Catalog, CatalogMissing

    try:
        return Catalog.read_only(state.settings.catalog_path)
    except CatalogMissing as exc:
        if state.settings.catalog_path.exists():  # there, but empty
            raise CatalogMissing(f"{exc}, so there is no audit trail") from None
        raise CatalogMissing(f"there is no catalog at {state.settings.catalog_path}, so no "
                             f"audit trail: it was lost or this is the wrong BKP_HOME") from None


@audit.command("head")
@json_option
@pass_state
def audit_head(state, as_json):
    """Print the current head hash; keep it to check later that nothing was cut off."""
    from bkp.evidence.audit import verify_chain

    report = verify_chain(_trail_catalog(state).audit_events())
    emit({"head": report.head, "events": report.events}, as_json,
         lambda: click.echo(report.head))
    return 0


# ---------------------------------------------------------------- evidence

@cli.group()
def evidence():
    """bkp's own records off-site: copy them, and bring them back after losing the host."""


@evidence.command("backup")
@json_option
@pass_state
def evidence_backup(state, as_json):
    """Copy the catalog (with the audit trail and the media register), drill reports,
    certificates and public signing keys to the evidence repository of bkp.yaml.

    `bkp run` does this after every night. Never copies a private key.
    """
    from bkp.evidence.store import backup_evidence

    installation = state.installation()
    if installation.evidence is None:
        raise PolicyError("no evidence destination is configured: add `evidence:` to "
                          "bkp.yaml (see runbooks/disaster-recovery.md)")
    result = backup_evidence(state.context(), installation).to_json()
    emit(result, as_json, lambda: _print_evidence(result))
    return 0


@evidence.command("recover")
@click.option("--snapshot", metavar="ID", help="Evidence snapshot (default: the latest).")
@click.option("--force", is_flag=True,
              help="Recover over existing records (they are set aside, never deleted).")
@json_option
@pass_state
def evidence_recover(state, snapshot, force, as_json):
    """Bring bkp's records back into BKP_HOME on a new or rebuilt host.

    The audit chain continues where the copy ended: an anchor kept before the disaster
    verifies, old certificates verify, the media register and drill history are back.
    Refused (exit 4) where BKP_HOME already holds records, unless --force. Afterwards run
    `bkp catalog sync --all` for the backups made since the copy.
    """
    from bkp.evidence.store import recover
    from bkp.tenants.restore import check_snapshot_id

    check_snapshot_id(snapshot)
    # Not recorded when refused: a record in an empty BKP_HOME would block the recovery.
    state.authorize("evidence-recover-force" if force else None, record=False)
    result = recover(state.settings, state.installation(), snapshot=snapshot, force=force)

    def human():
        click.echo(f"recovered evidence snapshot {result['snapshot_id']} (copied "
                   f"{result['copied_at']} on {result['copied_on']}): {result['events']} audit "
                   f"events, last #{result['last_event']['seq']} {result['last_event']['hash']}")
        click.echo(f"  {result['lost']}")
        for note in result["notes"]:
            click.echo(f"  {note}")
        click.echo("  next: bkp catalog sync --all (backups made since the copy)")

    emit(result, as_json, human)
    return 0


# ---------------------------------------------------------------- catalog

@cli.group()
def catalog():
    """The catalog itself: rebuild it from the repositories, or start a new one knowingly."""


@catalog.command("sync")
@tenants_argument
@all_option
@click.option("--snapshots/--no-snapshots", "read_snapshots", default=True,
              show_default=True,
              help="Read each repository's snapshot list (one restic process per tenant, "
                   "~0.7 s of key derivation each). --no-snapshots with --all only ingests "
                   "the results inbox.")
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Repositories whose snapshot lists are read in parallel.")
@json_option
@pass_state
def catalog_sync(state, tenants, all_, read_snapshots, jobs, as_json):
    """Rebuild what the catalog knows about backups from each repository's snapshots.

    For a host whose BKP_HOME was lost or recovered from an older evidence copy: afterwards
    `bkp status` shows the real last backup and RPO state. Idempotent. With --all and a
    results inbox in bkp.yaml, the inbox is ingested first.
    """
    from bkp.context import highest_exit, run_per_tenant
    from bkp.evidence.sync import sync_tenant
    from bkp.results import SyncEntry

    policies, broken = state.select(tenants, all_, SyncEntry)
    results = state.installation().results if all_ else None
    ctx = state.context()
    ingest = None
    if results is not None:
        from bkp.evidence.ingest import ingest_inbox

        ingest = ingest_inbox(ctx, results, {p.tenant for p in policies})
    if not read_snapshots and ingest is None:
        raise UsageError("--no-snapshots leaves nothing to do without --all and a results "
                         "inbox (results.inbox in bkp.yaml)")
    outcomes = broken + (run_per_tenant(policies, lambda p: sync_tenant(ctx, p), jobs,
                                        result=SyncEntry) if read_snapshots else [])
    document = {"tenants": [o.data for o in outcomes]}
    if ingest is not None:
        document["results"] = ingest.to_json()

    def human():
        if ingest is not None:
            click.echo(f"results inbox: {len(ingest.ingested)} ingested, {ingest.already} "
                       f"ingested before, {len(ingest.rejected)} rejected")
            for item in ingest.rejected:
                click.echo(f"  REJECTED {item['object']}: {item['reason']}")
            if ingest.error:
                click.echo(f"  FAILED {ingest.error}")
        for o in outcomes:
            d = o.data
            if d["status"] == "ok":
                latest = d["latest"]
                last = f"latest {latest['id'][:8]} {latest['time'][:19]}Z" if latest else \
                    "no snapshots"
                click.echo(f"{d['tenant']:<24} ok      {d['snapshots']} snapshots, "
                           f"{d['added']} added; {last}")
            else:
                click.echo(f"{d['tenant']:<24} FAILED  {d['error']}")

    emit(document, as_json, human)
    return max(highest_exit(outcomes), ingest.exit_code if ingest else 0)


@catalog.command("result-keys")
@tenants_argument
@all_option
@json_option
@pass_state
def catalog_result_keys(state, tenants, all_, as_json):
    """Create the tenants' result keys (results.keys in bkp.yaml) where missing.

    TENANT.result.key (private, mode 0600) goes into the tenant's Secret: a job in a pod signs
    its result with it. TENANT.result.pub stays with the gatherer, which accepts a result only
    with a valid signature of its tenant's key. An existing key is never replaced.
    """
    from bkp.evidence.pod_results import create_key, fingerprint, load_public

    results = state.installation().results
    if results is None:
        raise PolicyError("bkp.yaml names no results (results.inbox, results.keys)")
    policies, broken = state.select(tenants, all_)
    rows, ctx = [], None
    for policy in policies:
        private, public = results.private_key(policy.tenant), results.public_key(policy.tenant)
        if private.exists() or public.exists():
            raw = load_public(public)
            rows.append({"tenant": policy.tenant, "status": "exists",
                         "fingerprint": fingerprint(raw) if raw else None})
            continue
        rows.append({"tenant": policy.tenant, "status": "created",
                     "fingerprint": create_key(private, public)})
        ctx = ctx or state.context()
        ctx.audit("result_key.created", "ok", policy.tenant,
                  fingerprint=rows[-1]["fingerprint"])
    rows += [{"tenant": o.tenant, "status": "invalid", "error": o.data["error"]}
             for o in broken]

    def human():
        for row in rows:
            click.echo(f"{row['tenant']:<24} {row['status']:<8} "
                       f"{row.get('fingerprint') or row.get('error', '')}")

    emit({"tenants": rows}, as_json, human)
    return 3 if broken else 0


@catalog.command("init")
@click.option("--reason", required=True, metavar="TEXT", callback=checked_text(TEXT_LIMIT),
              help="Why a new catalog is started (recorded as its first audit event).")
@json_option
@pass_state
def catalog_init(state, reason, as_json):
    """Start a new, empty catalog where the old one was lost and cannot be recovered.

    Acting commands refuse to replace a lost catalog silently; this records the decision.
    Refused (exit 4) when a catalog exists. Prefer `bkp evidence recover` when an evidence
    copy exists: a new catalog starts a new audit trail.
    """
    from bkp.catalog import Catalog, check_home, home_was_used, is_blank
    from bkp.context import Context
    from bkp.errors import SafetyError

    path = state.settings.catalog_path
    if path.exists() and not is_blank(path):
        raise SafetyError(f"a catalog already exists at {path}; nothing was changed")
    check_home(state.settings.home)
    signs = home_was_used(state.settings.home)
    ctx = Context(state.settings, Catalog(path))
    event = ctx.audit("catalog.init", "created", reason=reason, earlier_records=signs)
    emit({"catalog": str(path), "status": "created", "audit_head": event["hash"]}, as_json,
         lambda: click.echo(f"new catalog {path}; first audit event {event['hash']}"))
    return 0


# ---------------------------------------------------------------- media and certificates

from bkp.cli.media import register as _register_media  # noqa: E402 (needs the group above)

_register_media(cli, pass_state, emit, json_option)

from bkp.cli.report import register as _register_report  # noqa: E402

_register_report(cli, pass_state, emit, json_option)

from bkp.cli.erasure import register as _register_erasure  # noqa: E402

_register_erasure(cli, pass_state, emit, json_option)


# ---------------------------------------------------------------- entry point

def _on_terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _on_terminate)
    try:
        code = cli.main(args=argv, prog_name="bkp", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
        _json_error(argv, exc.format_message(), code)
    except click.exceptions.Abort:  # click's name for KeyboardInterrupt
        code = _interrupted(argv)
    except BkpError as exc:
        say(f"bkp: {exc}")
        for problem in getattr(exc, "problems", []) or []:
            if isinstance(problem, str) and problem not in str(exc):  # not said twice
                say(f"  {problem}")
        code = exc.exit_code
        _json_error(argv, str(exc), code)
    except KeyboardInterrupt:
        code = _interrupted(argv)
    # The verdict is printed and recorded: a SIGTERM now must not print a traceback from
    # the interpreter's shutdown, nor change an exit code that is already the truth.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code if isinstance(code, int) else 0)


def _json_error(argv: list[str] | None, message: str, code: int) -> None:
    """With --json, a command that fails before printing its document still prints one."""
    if "--json" in (argv if argv is not None else sys.argv[1:]):
        click.echo(json.dumps({"error": message, "exit_code": code}))


_state: State | None = None  # the command's state, for the JSON of an interrupted command


def _interrupted(argv: list[str] | None) -> int:
    """Stop children and let the per-tenant code record `interrupted` before we exit; with
    --json, still print one document, naming what this process started and how it ended."""
    from bkp.context import interrupt

    interrupt()
    say("bkp: interrupted; work in progress is recorded as interrupted")
    if "--json" in (argv if argv is not None else sys.argv[1:]):
        runs = _state.runs_of_this_process() if _state else []
        click.echo(json.dumps({
            "error": "interrupted by a signal; work in progress is recorded as interrupted",
            "exit_code": 130,
            "runs": [r for r in runs if r["kind"] == "backup"],
            "drills": [r for r in runs if r["kind"] == "drill"]}, indent=2))
    return 130
