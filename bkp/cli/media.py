"""Commands of the decommission workflow: media register, sanitize, destroy, certificates.

Registered on the main group by cli.py. Like cli.py: parse, call one action, print; heavy
modules (cryptography, fpdf) are imported inside the commands so `bkp --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bkp.cli.values import NAME_LIMIT, TEXT_LIMIT, checked_text
from bkp.vocabulary import DESTINATIONS_AFTER as DESTINATIONS
from bkp.vocabulary import (
    DESTROY_METHODS,
    MEDIA_STATES,
    MEDIA_TYPES,
    SANITIZE_METHODS,
)

organization_option = click.option(
    "--organization", envvar="BKP_ORGANIZATION", metavar="NAME",
    callback=checked_text(NAME_LIMIT),
    help="The organisation performing it, printed on the certificate (env BKP_ORGANIZATION).")


def say(message: str) -> None:
    click.echo(message, err=True)


def push_evidence(state) -> dict | None:
    """After a certificate, the records go off-site at once (when bkp.yaml names an evidence
    destination): an auditor's anchor taken now must survive losing this host. A failed copy
    is said, and left to the night's run; the certificate stands."""
    from bkp.errors import BkpError

    try:
        installation = state.installation()
        if installation.evidence is None:
            return None
        from bkp.evidence.store import backup_evidence

        return backup_evidence(state.context(), installation).to_json()
    except BkpError as exc:
        say(f"warning: the evidence copy failed ({exc}); `bkp run` copies it tonight")
        return {"status": "failed", "snapshot_id": None, "error": str(exc)}


def media_context(state, progress: bool = False, act: str | None = None):
    """The context of a media command that acts; State.context() has already closed the
    sanitizations whose process died as `aborted`."""
    return state.context(progress=progress, act=act)


class CertificateGroup(click.Group):
    """`bkp certificate RECORD_ID` next to `bkp certificate verify FILE`: a first word that
    is not a subcommand is a record id for the hidden `show` subcommand."""

    def parse_args(self, ctx, args):
        words = [a for a in args if not a.startswith("-")]
        wants_help = bool({"-h", "--help"} & set(args))
        if args and not wants_help and (not words or words[0] not in self.commands):
            args = ["show", *args]
        return super().parse_args(ctx, args)


def register(cli, pass_state, emit, json_option) -> None:
    _register_media(cli, pass_state, emit, json_option)
    _register_sanitize(cli, pass_state, emit, json_option)
    _register_destroy(cli, pass_state, emit, json_option)
    _register_certificate(cli, pass_state, emit, json_option)


# ---------------------------------------------------------------- media

def _register_media(cli, pass_state, emit, json_option) -> None:
    @cli.group()
    def media():
        """The register of data carriers and their state (registered, sanitized, destroyed)."""

    @media.command("register")
    @click.option("--serial", required=True, help="Serial number, as on the label and as the "
                                                  "device reports it (lsblk -do NAME,SERIAL).")
    @click.option("--type", "type_", required=True, type=click.Choice(MEDIA_TYPES))
    @click.option("--vendor", callback=checked_text(NAME_LIMIT))
    @click.option("--model", callback=checked_text(NAME_LIMIT))
    @click.option("--capacity", type=click.IntRange(0), metavar="BYTES")
    @click.option("--asset-tag", callback=checked_text(NAME_LIMIT))
    @click.option("--tenant", help="The tenant whose data it held.")
    @click.option("--host", help="The server it came from.", callback=checked_text(NAME_LIMIT))
    @click.option("--classification", type=click.Choice(("normal", "sensitive")),
                  help="Classification of the data it held; sensitive media need Purge "
                       "or destruction to leave (default: from its tenant's policy).")
    @json_option
    @pass_state
    def media_register(state, serial, type_, vendor, model, capacity, asset_tag, tenant, host,
                       classification, as_json):
        """Add a data carrier to the register (before it can be sanitized or destroyed).
        The asset tag is the organisation's property number on certificates."""
        from bkp.media.register import register_medium

        medium = register_medium(media_context(state), serial, type_, vendor=vendor,
                                 model=model, capacity=capacity, asset_tag=asset_tag,
                                 tenant=tenant, host=host, classification=classification)
        emit({"medium": medium}, as_json,
             lambda: click.echo(f"registered {medium['serial']} ({medium['type']})"))
        return 0

    @media.command("list")
    @click.option("--state", "state_", type=click.Choice(MEDIA_STATES), help="Only this state.")
    @click.option("--tenant", help="Only media of this tenant.")
    @click.option("--csv", "as_csv", is_flag=True, help="CSV for auditors (as media export).")
    @click.option("--awaiting-validation", is_flag=True,
                  help="Only media whose latest record waits for a second person's "
                       "validation (bkp certificate validate).")
    @json_option
    @pass_state
    def media_list(state, state_, tenant, as_csv, awaiting_validation, as_json):
        """The register with each medium's current state, its latest record and whether
        that record waits for validation."""
        from bkp.media.register import list_media, media_csv

        media_rows = list_media(state.read_context(), state=state_, tenant=tenant,
                                awaiting_validation=awaiting_validation)
        if as_csv and not as_json:
            click.echo(media_csv(media_rows), nl=False)
            return 0
        emit({"media": media_rows}, as_json, lambda: _print_media(media_rows))
        return 0

    @media.command("show")
    @click.argument("serial")
    @json_option
    @pass_state
    def media_show(state, serial, as_json):
        """One medium with its history of states."""
        from bkp.media.register import show_medium

        medium = show_medium(state.read_context(), serial)

        def human():
            for key in ("serial", "type", "vendor", "model", "capacity", "asset_tag", "tenant",
                        "host", "state", "registered_at", "registered_by"):
                if medium.get(key) is not None:
                    click.echo(f"{key + ':':<15} {medium[key]}")
            click.echo("history:")
            for event in medium["history"]:
                record = f" record {event['record_id']}" if event.get("record_id") else ""
                reason = f" ({event['reason']})" if event.get("reason") else ""
                click.echo(f"  {event['time'][:19]}Z {event['state']:<11} "
                           f"{event.get('operator') or '-'}{record}{reason}")

        emit({"medium": medium}, as_json, human)
        return 0

    @media.command("export")
    @click.option("--state", "state_", type=click.Choice(MEDIA_STATES))
    @click.option("--tenant")
    @click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
                  help="Write to FILE instead of stdout.")
    @pass_state
    def media_export(state, state_, tenant, output):
        """The register as CSV for auditors."""
        from bkp.media.register import list_media, media_csv

        text = media_csv(list_media(state.read_context(), state=state_, tenant=tenant))
        if output:
            output.write_text(text)
        else:
            click.echo(text, nl=False)
        return 0


def _print_media(media_rows) -> None:
    click.echo(f"{'SERIAL':<24} {'TYPE':<8} {'STATE':<11} {'SINCE':<20} {'TENANT':<16} "
               f"{'HOST':<16} {'RECORD':<7} {'VALIDATION':<18} MODEL")
    for m in media_rows:
        click.echo(f"{m['serial']:<24} {m['type']:<8} {m['state']:<11} "
                   f"{m['state_since'][:19]:<20} {m.get('tenant') or '-':<16} "
                   f"{m.get('host') or '-':<16} {m.get('record_id') or '-':<7} "
                   f"{(m.get('validation') or '-').replace('_', ' '):<18} "
                   f"{m.get('model') or '-'}")
    waiting = [m for m in media_rows if m.get("validation") in ("awaiting",
                                                                "pending_signature")]
    if waiting:
        click.echo(f"{len(waiting)} record{'s' if len(waiting) != 1 else ''} awaiting "
                   f"validation: bkp certificate validate RECORD_ID --title TITLE --approve")


# ---------------------------------------------------------------- sanitize

def _register_sanitize(cli, pass_state, emit, json_option) -> None:
    @cli.command()
    @click.argument("device")
    @click.option("--serial", required=True, help="The registered serial of the medium.")
    @click.option("--method", type=click.Choice(SANITIZE_METHODS), default="zero",
                  show_default=True, help="Overwrite (zero, random, dod3: NIST Clear) or the "
                                          "drive's own erase (ata-*, nvme-*: NIST Purge).")
    @click.option("--verify", "verify", type=click.Choice(("full", "sample")), default="full",
                  show_default=True, help="Read back everything, or a NIST 800-88 sample.")
    @click.option("--witness", metavar="NAME", help="Who witnessed it (on the certificate).",
                  callback=checked_text(NAME_LIMIT))
    @organization_option
    @click.option("--destination", "destination_after", type=click.Choice(DESTINATIONS),
                  default="reuse", show_default=True,
                  help="Where the medium goes afterwards.")
    @click.option("--classification", metavar="normal|sensitive",
                  help="Classification of the data it held (default: from the medium's "
                       "registration and the tenant's policy; sensitive wins).")
    @click.option("--backed-up/--not-backed-up", default=None,
                  help="Whether its data was backed up (default: from the catalog). "
                       "Sensitive data not known to be backed up is refused unless "
                       "--not-backed-up comes with --backup-note.")
    @click.option("--backup-note", metavar="TEXT", help="Where the data was backed up, or "
                                                        "why losing it is acceptable.",
                  callback=checked_text(TEXT_LIMIT))
    @click.option("--accept-clear", metavar="REASON", callback=checked_text(TEXT_LIMIT),
                  help="Accept a Clear method (zero, random, dod3) for a sensitive medium "
                       "that goes to reuse, return or recycle; the reason is recorded and "
                       "printed on the certificate.")
    @click.option("--remove-hpa", is_flag=True,
                  help="Remove a hidden area (ATA HPA or DCO) before the erase; recorded "
                       "with the real and reported sizes. Without it a hidden area is "
                       "refused.")
    @click.option("--notes", metavar="TEXT", help="Notes printed on the certificate.",
                  callback=checked_text(TEXT_LIMIT))
    @click.option("--yes", is_flag=True, help="Unattended: do not ask for the serial.")
    @click.option("--dry-run", is_flag=True,
                  help="Run every safety check and show what would be done; write nothing.")
    @click.option("--progress/--no-progress", default=True, show_default=True,
                  help="Progress (bytes, rate, ETA) on stderr.")
    @json_option
    @pass_state
    def sanitize(state, device, serial, method, verify, witness, organization,
                 destination_after, classification, backed_up, backup_note, accept_clear,
                 remove_hpa, notes, yes, dry_run, progress, as_json):
        """Wipe DEVICE (a block device or a disk-image file), verify, record and certify.

        Refuses (exit 4, nothing written) an unregistered serial, a device reporting
        another serial, anything mounted, held, swapped on, or backing the running system,
        and an unconfirmed wipe. Exit 5 when the read-back does not match.
        """
        from bkp.media.sanitize import SanitizeRequest
        from bkp.media.sanitize import dry_run as check_only
        from bkp.media.sanitize import sanitize as run_sanitize

        request = SanitizeRequest(
            device=device, serial=serial, method=method, verify=verify, witness=witness,
            organization=organization, destination_after=destination_after,
            classification=classification, backed_up=backed_up, backup_note=backup_note,
            notes=notes, confirmed=yes, accept_clear=accept_clear, remove_hpa=remove_hpa)
        if dry_run:
            outcome = check_only(state.read_context(), request)
            emit(outcome.data, as_json, lambda: _print_dry_run(outcome.data))
            return outcome.exit_code
        ctx = media_context(state, progress=progress, act="sanitize")
        installation = state.installation()
        request.organization = organization or installation.organization
        request.performer = installation.person(ctx.settings.operator, request.organization)
        request.witness_details = installation.person(witness, request.organization)
        outcome = run_sanitize(ctx, request, confirm=_ask_serial)
        data = outcome.data
        if data.get("certificate"):
            data["evidence"] = push_evidence(state)
        emit(data, as_json, lambda: _print_sanitization(data))
        return outcome.exit_code


def _ask_serial(plan) -> bool:
    """Interactive confirmation: the operator types the serial of the medium to wipe."""
    if not sys.stdin.isatty():
        return False
    from bkp.media.devices import same_serial

    facts = plan.facts
    say(f"About to ERASE {facts.path} ({facts.size} bytes, {facts.serial_note}), registered "
        f"as {plan.medium['serial']} ({plan.medium['type']}, "
        f"{plan.medium.get('model') or 'model unknown'}, tenant "
        f"{plan.medium.get('tenant') or '-'}).")
    typed = click.prompt("Type the serial number to confirm", default="", show_default=False,
                         err=True)
    return same_serial(typed, plan.medium["serial"])


def _print_dry_run(data: dict) -> None:
    if data["would"] == "refuse":
        click.echo(f"dry run: {data['serial']} on {data['device']} would be REFUSED: "
                   f"{data['error']}")
        return
    click.echo(f"dry run: {data['serial']} on {data['device']} ({data['bytes']} bytes, "
               f"{data['serial_check']}) would be sanitized by {data['method']} "
               f"({data['category']}), verified {data['verify']}, then go to "
               f"{data['destination_after']}. Nothing was written.")
    for check in data["checks"]:
        click.echo(f"  passed: {check}")
    for command in data["hardware_commands"]:
        click.echo(f"  would run: {command}")


def _print_sanitization(data: dict) -> None:
    v = data["verification"]
    click.echo(f"{data['serial']}: {data['result'].upper()} by {data['method']} "
               f"({data['bytes']} bytes), record {data['record_id']}")
    click.echo(f"  verification ({v['mode']}): sha256 {v['hash'] or '-'}, "
               f"{v['mismatches'] or 0} mismatched blocks, {v['io_errors'] or 0} I/O errors")
    click.echo(f"  {data['serial_check']}")
    found = (data.get("drive") or {}).get("markers")
    if found:
        click.echo(f"  drive evidence: {found['gone']} of {found['count']} random markers gone"
                   + (f"; promise kept: {found['promise']}" if found.get("promise_kept")
                      else ""))
    if data.get("accept_clear"):
        click.echo(f"  Clear accepted for sensitive data: {data['accept_clear']}")
    if data.get("error"):
        click.echo(f"  error: {data['error']}")
    if data.get("certificate"):
        click.echo(f"  certificate {data['certificate']['id']}: {data['certificate']['pdf']}")
        if data["result"] == "erased":
            click.echo(f"  NOT VALIDATED yet: a second person validates it with `bkp "
                       f"certificate validate {data['record_id']} --title TITLE --approve`")


# ---------------------------------------------------------------- destroy

def _register_destroy(cli, pass_state, emit, json_option) -> None:
    @cli.command()
    @click.option("--serial", required=True)
    @click.option("--method", required=True, type=click.Choice(DESTROY_METHODS))
    @click.option("--witness", required=True, metavar="NAME", callback=checked_text(NAME_LIMIT),
                  help="Who saw the medium destroyed.")
    @click.option("--evidence", multiple=True, metavar="FILE",
                  type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Photos, the destruction service's certificate (repeatable).")
    @organization_option
    @click.option("--notes", metavar="TEXT", callback=checked_text(TEXT_LIMIT))
    @click.option("--service", metavar="NAME", callback=checked_text(NAME_LIMIT),
                  help="The destruction service that destroyed it (or your own team).")
    @click.option("--location", metavar="PLACE", callback=checked_text(NAME_LIMIT),
                  help="Where it was destroyed.")
    @click.option("--service-certificate", metavar="NUMBER", callback=checked_text(NAME_LIMIT),
                  help="The number of the destruction service's own certificate.")
    @click.option("--destroyed-on", metavar="DATE",
                  help="The day of the destruction, YYYY-MM-DD (default: today).")
    @json_option
    @pass_state
    def destroy(state, serial, method, witness, evidence, organization, notes, service,
                location, service_certificate, destroyed_on, as_json):
        """Record the physical destruction of a medium, with its evidence; certify it."""
        from bkp.media.destroy import destroy as record_destruction

        ctx = media_context(state, act="destroy")
        installation = state.installation()
        organization = organization or installation.organization
        people = {"performer": installation.person(ctx.settings.operator, organization),
                  "witness": installation.person(witness, organization)}
        data = record_destruction(ctx, serial, method, witness, list(evidence),
                                  organization=organization, notes=notes, service=service,
                                  location=location, service_certificate=service_certificate,
                                  destroyed_on=destroyed_on, people=people)

        def human():
            click.echo(f"{data['serial']}: destroyed by {method}, witness {witness}, record "
                       f"{data['record_id']}")
            click.echo(f"  evidence sha256 {data['verification']['hash']}")
            click.echo(f"  certificate {data['certificate']['id']}: "
                       f"{data['certificate']['pdf']}")

        data["evidence"] = push_evidence(state)
        emit(data, as_json, human)
        return 0


# ---------------------------------------------------------------- certificates

def _register_certificate(cli, pass_state, emit, json_option) -> None:
    @cli.group(cls=CertificateGroup)
    def certificate():
        """Signed certificates of sanitization and destruction records.

        \b
        bkp certificate RECORD_ID [--format text|json|pdf] [--output FILE]
        bkp certificate verify FILE [--public-key FILE] [--no-audit]
        bkp certificate public-key [--all] [--output FILE]
        bkp certificate validate RECORD_ID --title TITLE --approve|--reject
        bkp certificate batch --since DATE [--output FILE]
        bkp certificate key create | rotate
        """

    @certificate.command("show", hidden=True)
    @click.argument("record_id", type=int)
    @click.option("--format", "fmt", type=click.Choice(("text", "json", "pdf")),
                  default="text", show_default=True)
    @click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
                  help="Write to FILE instead of stdout.")
    @json_option
    @pass_state
    def certificate_show(state, record_id, fmt, output, as_json):
        """The signed certificate of a sanitization or destruction record. The PDF is the
        signed file written when the certificate was issued."""
        from bkp.evidence import certificates as certs
        from bkp.evidence.certify import certificate_document, certificate_pdf

        fmt = "json" if as_json else fmt
        if fmt == "pdf" and not output and sys.stdout.isatty():
            raise click.UsageError("a PDF is not for the terminal: give --output FILE")
        ctx = state.read_context()
        if fmt == "pdf":
            content, note = certificate_pdf(ctx, record_id)
            if note:
                say(f"note: {note}")
        elif fmt == "json":
            content = certs.document_bytes(certificate_document(ctx, record_id))
        else:
            content = certs.render_text(certificate_document(ctx, record_id)).encode("utf-8")
        if output:
            output.write_bytes(content)
            say(f"wrote {output}")
        elif fmt == "pdf":
            sys.stdout.flush()
            sys.stdout.buffer.write(content)
            sys.stdout.buffer.flush()
        else:
            click.echo(content.decode("utf-8"), nl=False)
        return 0

    @certificate.command("verify")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--public-key", "public_key", metavar="FILE",
                  type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="The issuer's public key(s): PEM (as `public-key --all --output` "
                       "writes) or a copy of its keys/keyring.json (default: this "
                       "installation's key ring).")
    @click.option("--no-audit", is_flag=True,
                  help="Check the signatures only (no audit trail at hand).")
    @json_option
    @pass_state
    def certificate_verify(state, file, public_key, no_audit, as_json):
        """Check a certificate (JSON or PDF): its signature by a key of the key ring valid
        when it was issued, a PDF's signature over the whole file, and its record's and
        issue's events in an intact audit trail. Exit 5 on any change."""
        from bkp.context import Context
        from bkp.evidence.certify import trusted_keys, verify_certificate

        # The keys first: with none there is nothing to check, and nothing is opened.
        trusted = trusted_keys(state.settings.home, public_key)
        # An auditor checking a signature offline needs no catalog: none is created.
        ctx = Context(state.settings, None) if no_audit else state.read_context()
        report = verify_certificate(ctx, file.read_bytes(), trusted,
                                    check_audit=not no_audit)
        emit(report, as_json, lambda: _print_verification(file, report))
        return 0 if report["valid"] else 5

    @certificate.command("public-key")
    @click.option("--all", "all_", is_flag=True,
                  help="Every key of the ring, retired ones too (what old certificates need).")
    @click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
                  help="Write the public key(s) as PEM to FILE, for `verify --public-key`.")
    @json_option
    @pass_state
    def certificate_public_key(state, all_, output, as_json):
        """The public keys that check this installation's certificates (give them to
        auditors). Reads only: with no key yet it says so and creates none."""
        from bkp.errors import OperationError
        from bkp.evidence import keyring

        ring = keyring.load_ring(state.settings.home)
        if not ring:
            raise OperationError(keyring.no_key_message(state.settings.home))
        current = keyring.current_key(ring)
        if current is None and not all_:
            raise OperationError("every key of the ring is retired: `bkp certificate key "
                                 "create` makes a new one (--all lists the retired keys)")
        shown = ring if all_ else [current]
        if output:
            output.write_text("".join(_key_pem(k) for k in shown))
            say(f"wrote {output}")
        data = {"keys": [k.as_json() for k in shown]}
        if current is not None:
            data = {"algorithm": current.algorithm, "key_fingerprint": current.id,
                    "public_key_pem": current.as_json()["public_key_pem"],
                    "id": current.id, "created_at": current.created_at,
                    "not_after": current.not_after,
                    "certificate_pem": current.certificate_pem, **data}
        emit(data, as_json, lambda: click.echo("".join(_key_pem(k) for k in shown), nl=False))
        return 0

    @certificate.group("key")
    def certificate_key():
        """The installation's signing keys: create the first, rotate (retire and replace)."""

    @certificate.command("validate")
    @click.argument("record_id", type=int)
    @click.option("--validator", metavar="NAME", callback=checked_text(NAME_LIMIT),
                  help="The person validating. With operators registered in bkp.yaml it is "
                       "you (from your OS login) and may be left out.")
    @click.option("--title", required=True, metavar="TITLE", callback=checked_text(NAME_LIMIT),
                  help="The validator's job title.")
    @click.option("--approve", "decision", flag_value="approved",
                  help="Accept the result of the sanitization or destruction.")
    @click.option("--reject", "decision", flag_value="rejected",
                  help="Reject it (the medium must be sanitized again or destroyed).")
    @click.option("--comment", metavar="TEXT", callback=checked_text(TEXT_LIMIT),
                  help="Recorded and printed on the certificate.")
    @click.option("--approve-with", "signature", metavar="FILE",
                  type=click.Path(dir_okay=False, path_type=Path),
                  help="Your signature over the request (ssh-keygen -Y sign -n bkp), to "
                       "complete the validation at once instead of with `bkp approve`.")
    @json_option
    @pass_state
    def certificate_validate(state, record_id, validator, title, decision, comment, signature,
                             as_json):
        """A second person's validation of a sanitization or destruction (NIST SP 800-88
        Rev. 2); the certificate is issued again, stating it.

        Refused (exit 4) when the validator performed the work. With operators registered
        in bkp.yaml only a registered validator or admin may validate, and the validation
        waits (status pending_approval) for that person's signature: sign the printed text
        with `ssh-keygen -Y sign -f KEY -n bkp` and run `bkp approve RECORD_ID --signature
        FILE`, or pass --approve-with FILE.
        """
        from bkp.media.validate import validate_record

        if decision is None:
            raise click.UsageError("say --approve or --reject")
        ctx = state.context(act="validate")
        installation = state.installation()
        result = validate_record(ctx, state.actor(), installation.operators,
                                 record_id, validator=validator, title=title,
                                 decision=decision, comment=comment,
                                 signature=_read_signature(signature),
                                 person=installation.person)
        emit(result, as_json, lambda: _print_validation(result))
        return 0

    @certificate.command("batch")
    @click.option("--since", required=True, metavar="DATE",
                  help="First day of the batch (YYYY-MM-DD).")
    @click.option("--until", metavar="DATE", help="Last day of the batch (default: today).")
    @click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
                  help="Write the signed PDF to FILE.")
    @json_option
    @pass_state
    def certificate_batch(state, since, until, output, as_json):
        """One summary PDF for a decommission batch: every medium sanitized or destroyed in
        the period with its record, certificate id, hash and validation state, signed with
        the installation's key. With --json, the listing instead."""
        from bkp.evidence.batch import batch_summary, parse_day, signed_pdf

        ctx = state.read_context()
        summary = batch_summary(ctx, parse_day(since, "--since"),
                                parse_day(until, "--until") if until else None)
        if as_json:
            emit(summary, True)
            return 0
        if not output and sys.stdout.isatty():
            raise click.UsageError("a PDF is not for the terminal: give --output FILE")
        content = signed_pdf(ctx, summary, state.installation().organization)
        if output:
            output.write_bytes(content)
            say(f"wrote {output}: {summary['count']} media, {summary['not_validated']} not "
                f"validated")
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(content)
            sys.stdout.buffer.flush()
        return 0

    @certificate_key.command("create")
    @json_option
    @pass_state
    def certificate_key_create(state, as_json):
        """Make the signing key (bkp also makes it with the first certificate). Refused
        while a current key exists: rotate replaces it."""
        from bkp.evidence.certify import create_signing_key

        key = create_signing_key(state.context(act="signing-key"))
        emit({"key": key.as_json()}, as_json,
             lambda: click.echo(f"created signing key {key.id} ({key.describe()})"))
        return 0

    @certificate_key.command("rotate")
    @json_option
    @pass_state
    def certificate_key_rotate(state, as_json):
        """Retire the current key (its certificates keep verifying) and sign with a new one
        from now on. Also the way to replace a key whose private half was lost."""
        from bkp.evidence.certify import rotate_signing_key

        retired, new = rotate_signing_key(state.context(act="signing-key"))

        def human():
            click.echo(f"retired signing key {retired.id} at {retired.not_after}")
            click.echo(f"created signing key {new.id} ({new.describe()})")
            click.echo("give auditors the new key: bkp certificate public-key --all")

        emit({"retired": retired.as_json(), "key": new.as_json()}, as_json, human)
        return 0


def _read_signature(path: Path | None) -> bytes | None:
    if path is None:
        return None
    from bkp.evidence.approvals import read_signature

    return read_signature(path)


def _print_validation(result: dict) -> None:
    if result["status"] == "pending_approval":
        record = result["record_id"]
        click.echo(f"record {record}: validation by {result['validator']} waits for their "
                   f"signature (request {result['approval_id']}). Sign this text:")
        click.echo(result["message"].rstrip("\n"))
        click.echo(f"  bkp approve {record} --message > request.txt")
        click.echo("  ssh-keygen -Y sign -f ~/.ssh/id_ed25519 -n bkp request.txt")
        click.echo(f"  bkp approve {record} --signature request.txt.sig")
        return
    validation = result["validation"]
    click.echo(f"record {result['record_id']}: {validation['decision']} by "
               f"{validation['validator']} ({validation['title']}) at {validation['time']}"
               f"{'' if result['signed'] else ' (unsigned: no operators registered)'}")
    click.echo(f"  certificate {result['certificate']['id']}: {result['certificate']['pdf']}")


def _key_pem(key) -> str:
    state = f"retired {key.not_after}" if key.not_after else "current"
    return (f"# {key.id} {key.algorithm} created {key.created_at or 'unknown'}, {state}\n"
            f"{key.as_json()['public_key_pem']}")


def _print_verification(file: Path, report: dict) -> None:
    if not report["valid"]:
        what = "batch summary" if report.get("kind") == "batch" else "certificate"
        click.echo(f"{what} {file}: INVALID")
        for problem in report["problems"]:
            click.echo(f"  {problem}")
        return
    if report.get("kind") == "batch":
        click.echo(f"batch summary {file}: VALID, {report['batch']['count']} media, signed "
                   f"by key {report['key_fingerprint']} at {report['pdf']['signed_at']}")
        click.echo("  " + ("each line matches its record and certificate in the catalog"
                           if report["audit"]["checked"] else "lines not checked (--no-audit)"))
        click.echo("  each medium's proof is its own certificate: bkp certificate verify it")
        return
    subject = report["serial"] or f"tenant {report.get('tenant')}"
    click.echo(f"certificate {report['certificate_id']} of record {report['record_id']} "
               f"({subject}): VALID")
    click.echo(f"  signed by key {report['key_fingerprint']} "
               f"({report['key']['description']})")
    if report["pdf"]:
        click.echo(f"  PDF signature intact over the whole file, signed at "
                   f"{report['pdf']['signed_at']}")
    file = report.get("file") or {}
    if file.get("as_issued"):
        click.echo(f"  the file is the one issued (SHA-256 in audit event "
                   f"#{file['issue_event_seq']})")
    if report["audit"].get("checked"):
        click.echo(f"  record's audit event #{report['audit']['event_seq']} present in an "
                   f"intact trail")
    else:
        click.echo("  audit trail not checked")
    validation = report.get("validation") or {}
    if validation.get("state") == "not_validated":
        click.echo("  NOT VALIDATED: no second person has validated this record")
    elif validation.get("state") == "not_approved":
        click.echo("  no second person's approval (no operators were registered)")
    elif validation.get("state"):
        checked = " (its audit event checked)" if validation.get("checked") else ""
        click.echo(f"  {validation['state']} by {validation.get('validator')}{checked}")
    latest = validation.get("latest_certificate_id")
    if latest and latest != report["certificate_id"]:
        click.echo(f"  a later certificate of this record exists: {latest}")
