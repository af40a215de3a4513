"""Commands that erase a tenant's backups: offboard and erase. Registered on the main group
by cli/__init__.py. Like the rest of cli/: parse, call one function, print."""

from __future__ import annotations

import sys

import click

from bkp.cli.values import NAME_LIMIT, TEXT_LIMIT, checked_text


def say(message: str) -> None:
    click.echo(message, err=True)


def register(cli, pass_state, emit, json_option) -> None:
    def _finish(state, data: dict, code: int, kind: str, as_json: bool) -> int:
        """A certificate was issued: bkp's records go to the evidence repository at once."""
        if data.get("certificate"):
            from bkp.cli.media import push_evidence

            data["evidence"] = push_evidence(state)
        emit(data, as_json, lambda: _print_erasure(data, kind))
        return code

    @cli.command()
    @click.argument("tenant")
    @click.option("--reason", metavar="TEXT", callback=checked_text(TEXT_LIMIT),
                  help="Why (the customer's request, the contract's end): on the record and "
                       "the certificate.")
    @click.option("--witness", metavar="NAME", callback=checked_text(NAME_LIMIT),
                  help="Who witnessed it (on the certificate).")
    @click.option("--yes", is_flag=True,
                  help="Unattended: do not ask for the tenant id. Without it and without a "
                       "terminal, refused (exit 4).")
    @json_option
    @pass_state
    def offboard(state, tenant, reason, witness, yes, as_json):
        """Erase every copy of a departing tenant's backups, verify and certify it.

        Refused (exit 4, nothing touched) under a legal hold, before retention.keep_until,
        while another operation holds the tenant, when an S3 Object Lock still holds the
        objects, and unconfirmed. With operators registered the first run waits for a
        second person's approval (status pending_approval; `bkp approve RECORD_ID`), and
        the same command run again carries it out. Anything left is exit 1, named and
        recorded; run the same command again to finish.
        """
        from bkp.tenants.offboard import ErasureRequest
        from bkp.tenants.offboard import offboard as run_offboard

        policy = state.one_policy(tenant)
        ctx = state.context(act="offboard")
        request = ErasureRequest(policy, yes=yes, reason=reason, witness=witness,
                                 others=tuple(_other_repositories(state, tenant)))
        data, code = run_offboard(ctx, state.actor(), request, _asker(
            f"About to ERASE EVERY BACKUP of tenant {tenant} at every place it rests, "
            f"beyond recovery."))
        return _finish(state, data, code, "offboard", as_json)

    @cli.command()
    @click.argument("tenant")
    @click.option("--snapshot", "snapshots", multiple=True, metavar="ID",
                  help="A snapshot to erase (repeatable; `bkp snapshots TENANT` lists them).")
    @click.option("--path", "paths", multiple=True, metavar="PATH",
                  help="Drop only this path from the snapshots: needs `restic rewrite` "
                       "(restic 0.15 or newer); refused (exit 2) with the restic this host "
                       "has.")
    @click.option("--reason", metavar="TEXT", callback=checked_text(TEXT_LIMIT),
                  help="Why (the data subject's request): on the record and the "
                       "certificate.")
    @click.option("--witness", metavar="NAME", callback=checked_text(NAME_LIMIT),
                  help="Who witnessed it (on the certificate).")
    @click.option("--yes", is_flag=True, help="Unattended: do not ask for the tenant id.")
    @json_option
    @pass_state
    def erase(state, tenant, snapshots, paths, reason, witness, yes, as_json):
        """An erasure request: forget those snapshots and prune every unused byte, at every
        place the tenant's backups rest; record and certify it.

        Refused (exit 4) under a legal hold or before retention.keep_until, and
        unconfirmed. With operators registered it waits for a second person's approval
        like offboard.
        """
        from bkp.tenants.offboard import ErasureRequest
        from bkp.tenants.offboard import erase as run_erase

        policy = state.one_policy(tenant)
        ctx = state.context(act="erase")
        request = ErasureRequest(policy, yes=yes, reason=reason, witness=witness,
                                 snapshots=tuple(snapshots), paths=tuple(paths))
        data, code = run_erase(ctx, state.actor(), request, _asker(
            f"About to ERASE snapshot(s) {', '.join(snapshots)} of tenant {tenant} at "
            f"every place it rests, beyond recovery."))
        return _finish(state, data, code, "erase", as_json)


def _asker(warning: str):
    """What the operator types to confirm; None where there is no terminal to ask on."""
    def ask() -> str | None:
        if not sys.stdin.isatty():
            return None
        say(warning)
        return click.prompt("Type the tenant id to confirm", default="", show_default=False,
                            err=True)
    return ask


def _other_repositories(state, tenant: str) -> list[tuple[str, object]]:
    """(who, Destination) of every other repository bkp knows: an erasure must not reach
    into one of them."""
    from bkp.policy import policy_files, validate_files

    found = []
    for report in validate_files(policy_files(state.settings.policies)):
        if report.tenant != tenant and report.destination is not None:
            found.append((f"tenant {report.tenant} ({report.file})", report.destination))
    try:
        evidence = state.installation().evidence
    except Exception:  # an invalid bkp.yaml was refused before (state.context)
        evidence = None
    if evidence is not None:
        found.append(("bkp's evidence repository (bkp.yaml)", evidence.destination))
    return found


def _print_erasure(data: dict, command: str) -> None:
    tenant, record = data["tenant"], data["record_id"]
    if data["status"] == "pending_approval":
        click.echo(f"{tenant}: {command} waits for a second person's approval (record "
                   f"{record}, request {data['approval_id']}, until "
                   f"{data['expires_at'][:19]}Z). The approver signs this text:")
        click.echo(data["message"].rstrip("\n"))
        click.echo(f"  bkp approve {record} --message > request.txt")
        click.echo("  ssh-keygen -Y sign -f ~/.ssh/id_ed25519 -n bkp request.txt")
        click.echo(f"  bkp approve {record} --signature request.txt.sig")
        click.echo(f"then run `bkp {command} {tenant}` again to carry it out")
        return
    click.echo(f"{tenant}: {data['status'].upper()} (record {record}, attempt "
               f"{data.get('attempt')}), {data['snapshots_erased']} snapshots erased")
    for place in data["destinations"]:
        removed = (f"snapshot(s) {', '.join(s[:8] for s in place['snapshot_ids']) or '-'} "
                   f"erased" if command == "erase" else
                   f"{_dash(place.get('keys_removed'))} keys, "
                   f"{_dash(place.get('objects_removed'))} objects, "
                   f"{_dash(place.get('bytes_removed'))} bytes removed")
        click.echo(f"  {place['id']:<12} {place['status'].upper():<7} {place['location']}: "
                   f"{removed}")
        if place.get("error"):
            click.echo(f"    ! {place['error']}")
    for path in (data.get("host") or {}).get("removed") or ():
        click.echo(f"  removed {path}")
    if data.get("certificate"):
        click.echo(f"  certificate {data['certificate']['id']}: {data['certificate']['pdf']}")
    elif data["status"] == "failed":
        click.echo(f"  run `bkp {command} {tenant}` again to finish; the record says what is "
                   f"left")


def _dash(value) -> str:
    return "?" if value is None else str(value)
