"""The adversary against issue 11 (who may act): impersonation, forged and replayed
approvals, a damaged or silently emptied bkp.yaml, an auditor who tries to act, policy
edits that weaken a tenant's protection out of sight. Real OS users (useradd), real keys
(ssh-keygen), real restic, the real CLI. Each test failed before its fix, or guards a
refusal that held."""
# ruff: noqa: F811  (pytest fixtures imported from test_who_may_act are parameters here)

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import new_bkp_env
from tests.e2e.test_media_cli import MIB, image_file, sha256_of
from tests.e2e.test_who_may_act import Desk, people  # noqa: F401  (the module's fixture)

pytestmark = pytest.mark.integration


def one_clear_line(done: subprocess.CompletedProcess, *words: str) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("bkp:")
             or line.startswith("Error:")]
    assert lines, done.stderr
    for word in words:
        assert word in lines[0], (word, done.stderr)
    return lines[0]


def tables(home: Path) -> dict[str, list]:
    """Every row of every table of the catalog, audit trail apart."""
    conn = sqlite3.connect(home / "catalog.db")
    try:
        names = [r[0] for r in conn.execute(
            "select name from sqlite_master where type = 'table' and name not like 'sqlite_%'")]
        return {n: conn.execute(f'select * from "{n}"').fetchall()
                for n in names if n != "audit_log"}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def desk(tmp_path_factory, people):
    """One installation with registered operators for the tests that leave bkp.yaml as is."""
    return Desk(tmp_path_factory.mktemp("desk"), people)


def _rewrite(desk: Desk, change) -> None:
    data = yaml.safe_load(desk.config.read_text())
    change(data)
    desk.config.write_text(yaml.safe_dump(data))


# ---------------------------------------------------------------- impersonation

@pytest.mark.parametrize("claimed", ["alice jansen", "ALICE JANSEN", "Alice  Jansen",
                                     "Alice\u200bJansen", "Alice\u00a0Jansen",
                                     "\uff21lice Jansen"],
                         ids=["lower case", "upper case", "two spaces", "zero-width space",
                              "no-break space", "fullwidth A"])
@pytest.mark.parametrize("how", ["--operator", "BKP_OPERATOR"])
def test_a_name_that_reads_as_a_registered_person_is_impersonation(desk, claimed, how):
    """Mallory may use a label (cron's `scheduler`), but not one a reader of the trail takes
    for Alice Jansen: that is naming another registered person."""
    serial = f"LOOK-{abs(hash((claimed, how))) % 10**6:06d}"
    args = ["--operator", claimed] if how == "--operator" else []
    env = {"BKP_OPERATOR": claimed} if how == "BKP_OPERATOR" else {}
    before = len(desk.events()) if (desk.home / "catalog.db").exists() else 0
    done = desk.bkp("mallory", *args, "media", "register", "--serial", serial, "--type",
                    "hdd", **env)
    assert done.returncode == 4, (done.returncode, done.stderr)
    one_clear_line(done, "Alice Jansen")
    assert serial not in desk.bkp(None, "media", "list").stdout
    new = desk.events()[before:]
    assert [(e["outcome"], e["operator"]) for e in new] == [
        ("refused", desk.people["mallory"].os_user)]


def test_alice_may_spell_her_own_name_loosely(desk):
    done = desk.json("alice", "--operator", "alice  JANSEN", "media", "register",
                     "--serial", "SELF-0001", "--type", "hdd")
    assert done["medium"]["serial"] == "SELF-0001"
    assert desk.events()[-1]["operator"] == "Alice Jansen"


def test_root_without_a_login_session_has_no_role(desk):
    """No login uid (a container, a service) and no sudo: root is nobody registered."""
    disk = image_file(desk.root / "ROOT-1.img", MIB)
    desk.json("alice", "media", "register", "--serial", "ROOT-0001", "--type", "hdd")
    done = desk.bkp(None, "sanitize", str(disk), "--serial", "ROOT-0001", "--yes",
                    "--witness", "Anne Bakker")
    assert done.returncode == 4, done.stderr
    one_clear_line(done, "not registered")


# ---------------------------------------------------------------- approvals

@pytest.fixture(scope="module")
def waiting(desk):
    """A sanitization by Alice whose validation by Victor waits for his signature."""
    record, _ = desk.sanitized("alice", "APPR-0001")
    pending = desk.json("vic", "certificate", "validate", str(record), "--title", "QA",
                        "--approve")
    assert pending["status"] == "pending_approval"
    return record, pending["message"]


def _approve(desk: Desk, record, signature, person: str = "adam"):
    return desk.bkp(person, "approve", str(record), "--signature", str(signature), "--json")


def _still_waiting(desk: Desk, record) -> None:
    waiting = desk.json(None, "status")["approvals"]
    assert str(record) in [a["subject"] for a in waiting]


def test_an_auditors_key_does_not_approve(desk, waiting):
    record, message = waiting
    done = _approve(desk, record, desk.sign("audrey", message))
    assert done.returncode == 4
    one_clear_line(done, "Audrey Smit")
    _still_waiting(desk, record)


def test_a_signature_for_another_namespace_does_not_approve(desk, waiting):
    record, message = waiting
    text = desk.root / "other-namespace.txt"
    text.write_text(message)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(desk.people["vic"].key),
                    "-n", "file", str(text)], check=True, capture_output=True)
    done = _approve(desk, record, text.with_name(text.name + ".sig"))
    assert done.returncode == 4
    one_clear_line(done)
    _still_waiting(desk, record)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge", "directory", "missing",
                                  "garbage", "binary tail", "text tail", "empty"])
def test_a_signature_file_that_is_not_one_signature(desk, waiting, tmp_path, kind):
    """Whatever the file is, one clear refusal at once, and the request still waits."""
    record, message = waiting
    path = tmp_path / "request.sig"
    if kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        with open(path, "wb") as file:
            file.truncate(64 << 30)  # sparse: 64 GiB of nothing
    elif kind == "directory":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind in ("binary tail", "text tail"):
        good = desk.sign("vic", message).read_bytes()
        path.write_bytes(good + (b"\xff\xfe\x00junk" if kind == "binary tail" else
                                 b"\nApproved by the board, see ticket 12\n"))
    elif kind == "empty":
        path.write_bytes(b"")
    done = _bkp_within(desk, "adam", "approve", str(record), "--signature", str(path),
                       "--json")
    assert done.returncode in (2, 4), (done.returncode, done.stderr)
    one_clear_line(done)
    _still_waiting(desk, record)


def _bkp_within(desk: Desk, person: str, *args: str) -> subprocess.CompletedProcess:
    """desk.bkp, but a bkp that hangs on its input fails the test instead of the suite."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("BKP_", "RESTIC_", "SUDO_"))}
    environment.update(BKP_HOME=str(desk.home), BKP_POLICIES=str(desk.root / "policies"),
                       BKP_CONFIG=str(desk.config))
    uid = desk.people[person].uid

    def login():
        with open("/proc/self/loginuid", "w") as file:
            file.write(str(uid))

    return subprocess.run([sys.executable, "-m", "bkp", *args], capture_output=True,
                          text=True, env=environment, timeout=60, stdin=subprocess.DEVNULL,
                          preexec_fn=login)


def test_a_signature_is_bound_to_its_request_and_expires(desk):
    """Victor's good signature for one request approves no other record, and not the same
    record once the request expired or was made again."""
    first, _ = desk.sanitized("alice", "BIND-0001")
    second, _ = desk.sanitized("alice", "BIND-0002")
    one = desk.json("vic", "certificate", "validate", str(first), "--title", "QA", "--approve")
    desk.json("vic", "certificate", "validate", str(second), "--title", "QA", "--approve")
    signature = desk.sign("vic", one["message"])

    done = _approve(desk, second, signature)  # another record: another text
    assert done.returncode == 4
    one_clear_line(done, "does not match")

    conn = sqlite3.connect(desk.home / "catalog.db")  # a week passes
    with conn:
        conn.execute("update approvals set expires_at = '2000-01-01T00:00:00.000000Z' "
                      "where subject = ?", (str(first),))
    conn.close()
    done = _approve(desk, first, signature)
    assert done.returncode == 4
    one_clear_line(done, "expired")

    again = desk.json("vic", "certificate", "validate", str(first), "--title", "QA",
                      "--approve")
    assert again["message"] != one["message"]  # a new nonce
    done = _approve(desk, first, signature)  # the old signature, replayed
    assert done.returncode == 4
    one_clear_line(done, "does not match")

    approved = desk.json("adam", "approve", str(first), "--signature",
                         str(desk.sign("vic", again["message"])))
    assert approved["status"] == "approved"
    done = _approve(desk, first, desk.sign("vic", again["message"]))  # twice
    assert done.returncode == 2
    one_clear_line(done, "nothing waits")
    for missing in ("999999", "abc", "1 or 1=1"):
        done = desk.bkp("adam", "approve", missing, "--signature", str(signature))
        assert done.returncode == 2, (missing, done.stderr)
        one_clear_line(done)


def test_only_a_registered_approver_may_hand_in_a_signature(desk):
    record, _ = desk.sanitized("alice", "HAND-0001")
    pending = desk.json("vic", "certificate", "validate", str(record), "--title", "QA",
                        "--approve")
    signature = desk.sign("vic", pending["message"])
    for person in ("mallory", "audrey"):
        done = _approve(desk, record, signature, person)
        assert done.returncode == 4, (person, done.stderr)
        one_clear_line(done)
    _still_waiting(desk, record)


# ---------------------------------------------------------------- bkp.yaml itself

def _operator(people, short: str, **change) -> dict:
    person = people[short]
    entry = {"name": person.name, "os_users": [person.os_user], "role": person.role or
             "operator", "ssh_key": person.key.with_suffix(".pub").read_text().strip()}
    entry.update(change)
    return entry


def _keygen(tmp_path: Path, *args: str) -> str:
    key = tmp_path / f"key-{len(list(tmp_path.iterdir()))}"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-f", str(key), *args], check=True)
    return key.with_suffix(".pub").read_text().strip()


@pytest.mark.parametrize("case", [
    "lookalike names", "blank name", "name with a direction override", "name with a newline",
    "unknown role", "rsa 2048", "not a key", "key with options", "same key twice",
    "os user not a name", "no operators key list"])
def test_an_operators_list_that_cannot_be_trusted_is_refused(tmp_path, people, case):
    desk = Desk(tmp_path, people)
    data = yaml.safe_load(desk.config.read_text())
    operators = data["operators"]
    if case == "lookalike names":
        operators.append(_operator(people, "mallory", name="alice  JANSEN"))
    elif case == "blank name":
        operators.append(_operator(people, "mallory", name="   "))
    elif case == "name with a direction override":
        operators.append(_operator(people, "mallory", name="Mallory\u202enesnaJ ecilA"))
    elif case == "name with a newline":
        operators.append(_operator(people, "mallory", name="Mallory\nkind: erase"))
    elif case == "unknown role":
        operators.append(_operator(people, "mallory", role="root"))
    elif case == "rsa 2048":
        operators.append(_operator(people, "mallory", ssh_key=_keygen(
            tmp_path, "-t", "rsa", "-b", "2048")))
    elif case == "not a key":
        operators.append(_operator(people, "mallory", ssh_key="ssh-ed25519 bm90IGEga2V5"))
    elif case == "key with options":
        operators.append(_operator(people, "mallory", ssh_key="restrict " + _keygen(
            tmp_path, "-t", "ed25519")))
    elif case == "same key twice":
        operators.append(_operator(people, "mallory", ssh_key=operators[0]["ssh_key"]))
    elif case == "os user not a name":
        operators.append(_operator(people, "mallory", os_users=["root; rm -rf /"]))
    elif case == "no operators key list":
        data["operators"] = {"name": "Mallory"}
    desk.config.write_text(yaml.safe_dump(data))
    checked = desk.bkp(None, "policy", "validate")
    assert checked.returncode == 3, (case, checked.stdout, checked.stderr)
    assert "Traceback" not in checked.stderr + checked.stdout
    assert "operators" in checked.stdout + checked.stderr
    disk = image_file(tmp_path / "X.img", MIB)
    done = desk.bkp("adam", "media", "register", "--serial", "CONF-0001", "--type", "hdd")
    assert done.returncode == 3, (case, done.stderr)
    one_clear_line(done, "bkp.yaml")
    done = desk.bkp("adam", "sanitize", str(disk), "--serial", "CONF-0001", "--yes")
    assert done.returncode == 3, (case, done.stderr)
    assert not (desk.home / "catalog.db").exists()  # nothing written


@pytest.mark.parametrize("damage", ["emptied", "operators dropped", "a directory",
                                   "a dangling link", "not yaml", "removed"])
def test_a_lost_operators_list_fails_closed(tmp_path, people, damage):
    """Once operators were registered, a bkp.yaml that lost them (emptied by a careless
    edit, replaced, unreadable) does not quietly give every identity every right."""
    desk = Desk(tmp_path, people)
    disk = image_file(tmp_path / "LOST-1.img", MIB)
    before_disk = sha256_of(disk)
    desk.json("alice", "media", "register", "--serial", "LOST-0001", "--type", "hdd")
    rows, trail = tables(desk.home), desk.events()
    if damage == "emptied":
        desk.config.write_text("")
    elif damage == "operators dropped":
        desk.config.write_text(yaml.safe_dump({"organization": "Hosting B.V."}))
    elif damage == "a directory":
        desk.config.unlink()
        desk.config.mkdir()
    elif damage == "a dangling link":
        desk.config.unlink()
        desk.config.symlink_to(tmp_path / "nowhere.yaml")
    elif damage == "not yaml":
        desk.config.write_text("operators: [unclosed\n")
    elif damage == "removed":
        desk.config.unlink()
    done = desk.bkp("mallory", "sanitize", str(disk), "--serial", "LOST-0001", "--yes",
                    "--witness", "Anne Bakker")
    assert done.returncode == 3, (damage, done.returncode, done.stderr)
    one_clear_line(done)
    assert sha256_of(disk) == before_disk
    assert tables(desk.home) == rows
    assert desk.events() == trail
    status = desk.json("mallory", "status")
    assert status["access"]["problem"], status["access"]


def test_access_control_is_turned_off_only_on_purpose_and_on_the_record(tmp_path, people):
    desk = Desk(tmp_path, people)
    desk.json("alice", "media", "register", "--serial", "OFF-0001", "--type", "hdd")
    _rewrite(desk, lambda d: d.update(operators=[]))  # said in so many words
    done = desk.json("mallory", "media", "register", "--serial", "OFF-0002", "--type", "hdd")
    assert done["medium"]["serial"] == "OFF-0002"
    changed = [e for e in desk.events() if e["action"] == "operators.changed"]
    assert len(changed) == 1, [e["action"] for e in desk.events()]
    details = json.loads(changed[0]["details"])
    assert {p["name"] for p in details["removed"]} == {"Alice Jansen", "Victor de Wit",
                                                      "Adam Visser", "Audrey Smit"}
    assert changed[0]["os_user"] == people["mallory"].os_user


def test_who_may_act_is_itself_on_the_record(tmp_path, people):
    """Making someone an admin is a change of the rules that protect tenants' data."""
    desk = Desk(tmp_path, people)
    desk.json("alice", "media", "register", "--serial", "REC-0001", "--type", "hdd")
    recorded = [e for e in desk.events() if e["action"] == "operators.recorded"]
    assert len(recorded) == 1
    names = {p["name"]: p for p in json.loads(recorded[0]["details"])["operators"]}
    assert names["Adam Visser"]["role"] == "admin"
    assert names["Adam Visser"]["key_fingerprint"].startswith("SHA256:")

    _rewrite(desk, lambda d: d["operators"].append(_operator(people, "mallory",
                                                             role="admin")))
    _rewrite(desk, lambda d: d["operators"][0].update(role="admin"))  # alice promoted
    desk.json("alice", "media", "register", "--serial", "REC-0002", "--type", "hdd")
    changed = [e for e in desk.events() if e["action"] == "operators.changed"]
    assert len(changed) == 1
    details = json.loads(changed[0]["details"])
    assert [p["name"] for p in details["added"]] == ["Mallory"]
    assert [(c["name"], c["from"]["role"], c["to"]["role"]) for c in details["changed"]] == [
        ("Alice Jansen", "operator", "admin")]
    # nothing changed since: nothing more recorded
    desk.json("alice", "media", "register", "--serial", "REC-0003", "--type", "hdd")
    assert len([e for e in desk.events() if e["action"].startswith("operators.")]) == 2


# ---------------------------------------------------------------- an auditor acts

def test_an_auditor_touches_nothing(tmp_path_factory, people):
    env = new_bkp_env(tmp_path_factory.mktemp("auditor"))
    env.local_tenant("praktijk", retention={"last": 3})
    desk = Desk(tmp_path_factory.mktemp("auditor-desk"), people)
    base = ("--policies", str(env.policies), "--home", str(env.home))
    assert desk.bkp("adam", *base, "init", "praktijk").returncode == 0
    assert desk.bkp("adam", *base, "backup", "praktijk").returncode == 0
    disk = image_file(tmp_path_factory.mktemp("disk") / "AUD-1.img", MIB)
    assert desk.bkp("alice", *base, "media", "register", "--serial", "AUD-0001",
                    "--type", "hdd").returncode == 0
    done = desk.bkp("alice", *base, "sanitize", str(disk), "--serial", "AUD-0001", "--yes",
                    "--witness", "Anne Bakker", "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)["record_id"]
    snapshots = sorted(os.listdir(env.root / "offsite" / "praktijk" / "snapshots"))
    disk_sum = sha256_of(disk)
    rows = tables(env.home)
    trail = [e["seq"] for e in _events(env.home)]
    signature = desk.sign("vic", "anything")
    attempts = [
        ("sanitize", str(disk), "--serial", "AUD-0001", "--yes", "--witness", "Anne Bakker"),
        ("destroy", "--serial", "AUD-0001", "--method", "shred", "--witness", "Anne Bakker"),
        ("restic", "praktijk", "--", "forget", "--keep-last", "1", "--prune"),
        ("restic", "praktijk", "--", "key", "add"),
        ("backup", "praktijk"), ("init", "praktijk"), ("drill", "praktijk"),
        ("restore", "praktijk", "--target", str(tmp_path_factory.mktemp("restore") / "t")),
        ("catalog", "sync", "praktijk"),
        ("media", "register", "--serial", "AUD-0002", "--type", "hdd"),
        ("certificate", "key", "create"), ("certificate", "key", "rotate"),
        ("certificate", "validate", str(record), "--title", "QA", "--approve"),
        ("approve", str(record), "--signature", str(signature)),
        ("policy", "acknowledge", "praktijk"),
        ("evidence", "recover", "--force"),
        ("run",),
    ]
    for args in attempts:
        done = desk.bkp("audrey", *base, *args)
        assert done.returncode == 4, (args, done.returncode, done.stderr)
        one_clear_line(done)
    assert sha256_of(disk) == disk_sum
    assert sorted(os.listdir(env.root / "offsite" / "praktijk" / "snapshots")) == snapshots
    assert tables(env.home) == rows
    new = [e for e in _events(env.home) if e["seq"] not in trail]
    assert {(e["outcome"], e["os_user"]) for e in new} <= {
        ("refused", people["audrey"].os_user)}
    assert desk.bkp("audrey", *base, "audit", "verify").returncode == 0


def _events(home: Path) -> list[dict]:
    conn = sqlite3.connect(home / "catalog.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from audit_log order by seq")]
    finally:
        conn.close()


# ---------------------------------------------------------------- weakened policies

@pytest.fixture(scope="module")
def practice(tmp_path_factory, people):
    """One installation with registered operators, for tenants whose rules get weakened."""
    env = new_bkp_env(tmp_path_factory.mktemp("practice"))
    desk = Desk(tmp_path_factory.mktemp("practice-desk"), people)
    return env, desk


def _as(practice, person: str | None, *args: str) -> subprocess.CompletedProcess:
    env, desk = practice
    return desk.bkp(person, "--policies", str(env.policies), "--home", str(env.home), *args)


def _ok(practice, person: str | None, *args: str) -> dict:
    done = _as(practice, person, *args, "--json")
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout)


def _changes(practice, tenant: str) -> list[dict]:
    return [json.loads(e["details"]) | {"outcome": e["outcome"]}
            for e in _events(practice[0].home)
            if e["action"] == "policy.changed" and e["tenant"] == tenant]


def test_edits_between_runs_are_judged_against_the_rules_last_acted_under(practice):
    env = practice[0]
    env.local_tenant("kliniek", retention={"last": 5, "daily": 14, "legal_hold": True})
    _ok(practice, "adam", "init", "kliniek")
    _ok(practice, "adam", "backup", "kliniek")
    # three edits, no run in between; the last restores the hold but keeps the rest weaker
    env.local_tenant("kliniek", retention={"last": 5, "daily": 14})
    env.local_tenant("kliniek", retention={"last": 1, "daily": 3, "legal_hold": True})
    env.local_tenant("kliniek", retention={"last": 1, "daily": 7, "legal_hold": True})
    _ok(practice, "adam", "backup", "kliniek")
    changes = _changes(practice, "kliniek")
    assert len(changes) == 1 and changes[0]["outcome"] == "flagged"
    weakened = " | ".join(changes[0]["weakenings"])
    assert "retention.last shortened (5 -> 1)" in weakened
    assert "retention.daily shortened (14 -> 7)" in weakened
    assert "legal hold" not in weakened
    for person in ("alice", "vic", "audrey", "mallory"):
        done = _as(practice, person, "policy", "acknowledge", "kliniek")
        assert done.returncode == 4, (person, done.stderr)
        one_clear_line(done)
    tenant = _ok(practice, None, "status", "kliniek")["tenants"][0]
    assert len(tenant["policy_flags"]) == 1


def test_a_hold_lifted_for_a_manual_forget_is_on_the_record(practice):
    """Lift the hold, forget by hand through bkp restic, put the hold back: no run ever saw
    the weaker rules, but the deletion happened under them."""
    env = practice[0]
    env.local_tenant("dossier", retention={"last": 3, "legal_hold": True})
    _ok(practice, "adam", "init", "dossier")
    for n in range(2):
        (env.root / "data" / "dossier" / f"day-{n}.txt").write_text(f"{n}\n")
        _ok(practice, "adam", "backup", "dossier")
    env.local_tenant("dossier", retention={"last": 3})
    done = _as(practice, "alice", "restic", "dossier", "--", "forget", "--keep-last", "1")
    assert done.returncode == 0, done.stderr
    env.local_tenant("dossier", retention={"last": 3, "legal_hold": True})
    _ok(practice, "adam", "backup", "dossier")
    flagged = [c for c in _changes(practice, "dossier") if c["outcome"] == "flagged"]
    assert flagged, _changes(practice, "dossier")
    assert any("legal hold was lifted" in w for w in flagged[0]["weakenings"])
    tenant = _ok(practice, None, "status", "dossier")["tenants"][0]
    assert tenant["policy_flags"]


def test_a_source_no_longer_backed_up_weakens_the_rules(practice):
    env = practice[0]
    second = env.make_data("bron-extra", {"x.txt": b"x\n"})
    path = env.local_tenant("bron")
    data = yaml.safe_load(path.read_text())
    data["sources"].append(str(second))
    path.write_text(yaml.safe_dump(data))
    _ok(practice, "adam", "init", "bron")
    _ok(practice, "adam", "backup", "bron")
    data["sources"] = data["sources"][:1]
    path.write_text(yaml.safe_dump(data))
    _ok(practice, "adam", "backup", "bron")
    changes = _changes(practice, "bron")
    assert [c["outcome"] for c in changes] == ["flagged"], changes
    assert str(second) in " | ".join(changes[0]["weakenings"])


# ---------------------------------------------------------------- the clock

def _kernel_clock_synchronised() -> bool:
    """adjtimex(2) read here, not through bkp: TIME_ERROR (5) means unsynchronised."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buffer = ctypes.create_string_buffer(512)  # struct timex with room to spare; modes 0
    return libc.adjtimex(buffer) != 5


def test_the_clock_is_recorded_as_the_kernel_has_it(practice):
    env = practice[0]
    env.local_tenant("klok")
    _ok(practice, "adam", "init", "klok")
    _ok(practice, "adam", "backup", "klok")
    expected = _kernel_clock_synchronised()
    conn = sqlite3.connect(env.home / "catalog.db")
    synchronised = conn.execute("select clock_synchronized from runs where tenant = 'klok' "
                                "order by id desc").fetchone()[0]
    conn.close()
    assert synchronised == int(expected)
    clock = _ok(practice, None, "status")["access"]["clock"]
    assert clock["synchronized"] is expected
    text = _as(practice, None, "status").stdout
    assert ("clock NOT synchronised" in text) is (not expected)


# ---------------------------------------------------------------- words

def test_one_operator_is_not_operators(tmp_path, people):
    desk = Desk(tmp_path, {"vic": people["vic"]})
    access = desk.json(None, "status")["access"]
    assert access["note"].startswith("1 operator registered (1 validator)"), access["note"]
