"""Pure parts of append-only destinations and Object Lock: the days a lock must cover, the
maintenance job's rendering, and which tenants `bkp maintain` refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from bkp.destinations.rest import deletion_answer
from bkp.policy import Destination, Policy, Retention
from bkp.restic import (
    Repository,
    canary_argv,
    classify,
    is_canary,
    snapshots_argv,
    stop_on_hopeless,
)
from bkp.runner import Completed
from bkp.secrets import SecretEnv
from bkp.tenants.maintain import maintenance_refusal
from bkp.tenants.schedule import (
    Installation,
    render_maintenance_cron,
    render_maintenance_systemd,
    write_schedule,
)


@pytest.mark.parametrize(("retention", "rpo", "days"), [
    (Retention(last=3, daily=7, weekly=4), 26, 28),
    (Retention(daily=14), 26, 14),
    (Retention(monthly=12), 26, 372),
    (Retention(yearly=2), 26, 732),
    (Retention(last=10), 26, 11),  # ten nights of 26 hours
    (Retention(hourly=12), 26, 1),
    (Retention(legal_hold=True), 26, 365),
])
def test_the_days_an_object_lock_must_cover_are_the_oldest_promised_restore_point(
        retention, rpo, days):
    assert retention.promised_days(rpo) == days


def policy(**destination) -> Policy:
    return Policy(tenant="acme", file=Path("/etc/bkp/policies/acme.yaml"), purpose="p",
                  classification="normal", sources=("/srv",),
                  destination=Destination(**{"type": "rest", "country": "DE",
                                             "url": "https://h:8000/acme",
                                             "credentials_file": Path("/x"), **destination}))


def test_maintain_refuses_what_it_cannot_maintain(tmp_path):
    assert "has no append_only destination" in str(maintenance_refusal(policy()))
    missing = policy(append_only=True, maintenance_credentials_file=tmp_path / "absent")
    assert "is not on this host" in str(maintenance_refusal(missing))
    (tmp_path / "here").write_text("u:p\n")
    here = policy(append_only=True, maintenance_credentials_file=tmp_path / "here")
    assert maintenance_refusal(here) is None
    assert maintenance_refusal(missing).exit_code == 3


def test_the_canary_carries_no_tenant_tag_so_no_tenant_selector_finds_it():
    repo = Repository(url="/r", env=SecretEnv({"RESTIC_PASSWORD_FILE": "/k"}))
    argv = canary_argv(repo, "host")
    tags = [argv[i + 1] for i, a in enumerate(argv) if a == "--tag"]
    assert "bkp-canary" in tags and "kind=canary" in tags
    assert not any(t.startswith("tenant=") for t in tags)
    assert "tenant=acme" in snapshots_argv(repo, "acme")


@pytest.mark.parametrize(("status", "refused", "words"), [
    (403, True, "refused: HTTP 403"),
    (405, True, "refused: HTTP 405"),
    (200, False, "as if deleted"),
    (204, False, "as if deleted"),
    (500, False, "neither deleted nor refused"),
    (404, False, "neither deleted nor refused"),
    (401, False, "neither deleted nor refused"),
])
def test_only_an_explicit_refusal_of_the_delete_counts_as_one(status, refused, words):
    assert deletion_answer(status)[0] is refused
    assert words in deletion_answer(status)[1]


def test_the_maintenance_job_renders_for_cron_and_systemd(tmp_path):
    inst = Installation(Path("/opt/bkp/.venv/bin/bkp"), Path("/etc/bkp/policies"),
                        Path("/var/lib/bkp"))
    cron = render_maintenance_cron(inst)
    assert "30 4 * * 0 root" in cron and "maintain --all" in cron and " run " not in cron
    units = render_maintenance_systemd(inst)
    assert "# /etc/systemd/system/bkp-maintain.service" in units
    assert 'ExecStart="/opt/bkp/.venv/bin/bkp" maintain --all' in units
    assert "OnCalendar=Sun *-*-* 04:30:00" in units
    written = write_schedule(units, "systemd", tmp_path / "units", "bkp-maintain")
    assert sorted(p.name for p in written) == ["bkp-maintain.service", "bkp-maintain.timer"]
    assert "[Timer]" in (tmp_path / "units" / "bkp-maintain.timer").read_text()


@pytest.mark.parametrize(("tags", "paths", "canary"), [
    (["bkp-tags=2", "bkp-canary", "kind=canary"], ["/bkp-canary"], True),
    (["bkp-canary", "kind=canary", "bkp-tags=2"], ["/bkp-canary"], True),
    (["bkp-tags=2", "bkp-canary", "kind=canary", "tenant=acme"], ["/bkp-canary"], False),
    (["bkp-tags=2", "bkp-canary", "kind=files", "tenant=acme"], ["/srv"], False),
    (["bkp-canary"], ["/srv"], False),
    (["bkp-tags=2", "bkp-canary", "kind=canary"], ["/srv"], False),
])
def test_only_the_snapshot_bkp_wrote_as_canary_is_one(tags, paths, canary):
    assert is_canary({"tags": tags, "paths": paths}) is canary


# restic 0.14's `forget` through an append-only door (rclone serve restic --append-only).
REFUSED_FORGET = (
    "Remove(<snapshot/7363ca4270>) returned error, retrying after 552.330144ms: blob not "
    "removed, server response: 403 Forbidden (403)\n"
    "unable to remove <snapshot/7363ca4270> from the repository\n"
    "blob not removed, server response: 403 Forbidden (403)\n"
    "github.com/restic/restic/internal/backend/rest.(*Backend).Remove\n"
    "\tgithub.com/restic/restic/internal/backend/rest/rest.go:399\n"
    "main.deleteFiles.func2\n"
    "\tgithub.com/restic/restic/cmd/restic/delete.go:47\n"
    "runtime.goexit\n"
    "\truntime/asm_amd64.s:1594\n")


def test_a_refused_deletion_stops_restic_at_once_and_says_append_only():
    first = REFUSED_FORGET.splitlines()[0]
    assert stop_on_hopeless(first) == "deletion_refused"
    assert stop_on_hopeless(first.replace("(403)", "(500)").replace("403 Forbidden",
                                                                    "500 Oops")) is None
    repo = Repository(url="", env=SecretEnv({"RESTIC_REPOSITORY": "rest:x"}), label="rest:x")
    failure = classify(Completed(["restic"], 1, "", REFUSED_FORGET, 1.0), repo, "acme",
                       "forget/prune")
    assert failure.cause == "deletion_refused" and failure.exit_code == 1
    assert "append-only for this credential" in failure.message


def test_an_unknown_failure_names_the_error_not_the_end_of_a_go_stack_trace():
    tail = REFUSED_FORGET.replace("403 Forbidden (403)", "418 Teapot (418)")
    repo = Repository(url="/r", env=SecretEnv({"RESTIC_PASSWORD_FILE": "/k"}))
    failure = classify(Completed(["restic"], 1, "", tail, 1.0), repo, "acme", "forget/prune")
    assert failure.cause == "unknown"
    assert "418 Teapot" in failure.message and "goexit" not in failure.message
