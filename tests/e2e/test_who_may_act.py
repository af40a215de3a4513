"""Who may act: real OS users (useradd), personal keys (ssh-keygen), the real CLI.

Each bkp process gets the login uid of the person it runs for, as PAM sets it at login
(and sudo keeps it): the OS identity bkp reads cannot be typed.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import contract
from tests.e2e.test_media_cli import MIB, image_file, sha256_of

PEOPLE = {  # key: (name, role)
    "alice": ("Alice Jansen", "operator"),
    "vic": ("Victor de Wit", "validator"),
    "adam": ("Adam Visser", "admin"),
    "audrey": ("Audrey Smit", "auditor"),
}


@dataclass
class Person:
    name: str
    role: str
    os_user: str
    uid: int
    key: Path  # private key file; .pub next to it


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """Real OS users and their own ed25519 keys; removed afterwards."""
    base = tmp_path_factory.mktemp("people")
    tag = secrets.token_hex(3)
    made, out = [], {}
    for short, (name, role) in [*PEOPLE.items(), ("mallory", ("Mallory", None))]:
        user = f"bkt{tag}{short}"[:32]
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                       check=True)
        made.append(user)
        key = base / f"{short}_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", short, "-f",
                        str(key)], check=True)
        out[short] = Person(name, role, user, pwd.getpwnam(user).pw_uid, key)
    yield out
    for user in made:
        subprocess.run(["userdel", user], check=False)


class Desk:
    """A BKP_HOME and bkp.yaml with registered operators; bkp run as a given person."""

    def __init__(self, root: Path, people: dict[str, Person], registered: bool = True):
        self.root, self.people = root, people
        self.home = root / "home"
        self.home.mkdir(mode=0o700)
        (root / "policies").mkdir()
        self.config = root / "bkp.yaml"
        operators = [{"name": p.name, "os_users": [p.os_user], "role": p.role,
                      "ssh_key": p.key.with_suffix(".pub").read_text().strip(),
                      "title": f"{p.role} of the day"}
                     for short, p in people.items() if p.role]
        self.config.write_text(yaml.safe_dump(
            {"organization": "Hosting B.V.", **({"operators": operators} if registered
                                                 else {})}))

    def bkp(self, person: str | None, *args: str, **env) -> subprocess.CompletedProcess:
        uid = self.people[person].uid if person else None
        environment = {k: v for k, v in os.environ.items()
                       if not k.startswith(("BKP_", "RESTIC_", "SUDO_"))}
        environment.update(BKP_HOME=str(self.home), BKP_POLICIES=str(self.root / "policies"),
                           BKP_CONFIG=str(self.config), **env)

        def login():  # what pam_loginuid does at login; root keeps running bkp (sudo)
            if uid is not None:
                with open("/proc/self/loginuid", "w") as file:
                    file.write(str(uid))

        done = subprocess.run([sys.executable, "-m", "bkp", *args], capture_output=True,
                              text=True, env=environment, timeout=300,
                              stdin=subprocess.DEVNULL, preexec_fn=login)
        contract.check(list(args), done.stdout)
        return done

    def json(self, person: str | None, *args: str, expect: int = 0, **env) -> dict:
        done = self.bkp(person, *args, "--json", **env)
        assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def events(self) -> list[dict]:
        conn = sqlite3.connect(self.home / "catalog.db")
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("select * from audit_log order by seq")]
        finally:
            conn.close()

    def sign(self, person: str, text: str) -> Path:
        message = self.root / f"request-{secrets.token_hex(4)}.txt"
        message.write_text(text)
        subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(self.people[person].key),
                        "-n", "bkp", str(message)], check=True, capture_output=True)
        return message.with_name(message.name + ".sig")

    def sanitized(self, person: str, serial: str) -> tuple[int, Path]:
        disk = image_file(self.root / f"{serial}.img", 4 * MIB)
        self.json(person, "media", "register", "--serial", serial, "--type", "hdd")
        data = self.json(person, "sanitize", str(disk), "--serial", serial, "--yes",
                         "--witness", "Anne Bakker")
        return data["record_id"], disk


@pytest.fixture
def desk(tmp_path, people) -> Desk:
    return Desk(tmp_path, people)


def test_the_actor_is_the_os_login_not_the_typed_name(desk, people):
    desk.json("alice", "media", "register", "--serial", "ACT-0001", "--type", "hdd")
    event = desk.events()[-1]
    assert (event["operator"], event["os_user"]) == ("Alice Jansen", people["alice"].os_user)

    # --operator may not name another registered person; the refusal is on the record
    # under the OS identity, never under the name claimed
    done = desk.bkp("mallory", "--operator", "Alice Jansen", "media", "register",
                    "--serial", "ACT-0002", "--type", "hdd")
    assert done.returncode == 4, done.stderr
    assert "not registered to Alice Jansen" in done.stderr
    refused = desk.events()[-1]
    assert refused["outcome"] == "refused"
    assert (refused["operator"], refused["os_user"]) == (people["mallory"].os_user,
                                                          people["mallory"].os_user)
    assert desk.json(None, "media", "list")["media"][-1]["serial"] == "ACT-0001"

    # a label that names nobody registered drops every right instead (cron's `scheduler`)
    done = desk.bkp("alice", "--operator", "scheduler", "sanitize", "/nonexistent",
                    "--serial", "ACT-0001", "--yes")
    assert done.returncode == 4 and "scheduler is not a registered operator" in done.stderr

    status = desk.json("alice", "status")["access"]
    assert status["operators_registered"] == 4
    assert status["you"]["operator"] == "Alice Jansen"
    assert status["you"]["os_user"] == people["alice"].os_user


def test_destructive_commands_need_a_role_that_allows_them(desk):
    disk = image_file(desk.root / "ROLE-1.img", 2 * MIB)
    before = sha256_of(disk)
    desk.json("alice", "media", "register", "--serial", "ROLE-1", "--type", "hdd")
    for person in ("mallory", "audrey", "vic"):
        done = desk.bkp(person, "sanitize", str(disk), "--serial", "ROLE-1", "--yes",
                        "--witness", "Anne Bakker")
        assert done.returncode == 4, (person, done.stderr)
        assert "needs a registered admin or operator" in done.stderr
    assert sha256_of(disk) == before  # refused before anything was touched
    assert desk.bkp("audrey", "media", "register", "--serial", "ROLE-2",
                    "--type", "hdd").returncode == 4
    assert desk.bkp("alice", "certificate", "key", "create").returncode == 4
    assert desk.bkp("audrey", "audit", "verify").returncode == 0  # reading is for everyone
    assert {e["os_user"] for e in desk.events()} >= {desk.people["mallory"].os_user,
                                                     desk.people["audrey"].os_user}


def test_a_validation_is_complete_only_with_the_validators_own_signature(desk, people):
    record, _ = desk.sanitized("alice", "VAL-0001")
    # the person who did the work never validates it
    done = desk.bkp("alice", "certificate", "validate", str(record), "--title", "QA",
                    "--approve")
    assert done.returncode == 4, done.stderr

    pending = desk.json("vic", "certificate", "validate", str(record), "--title",
                        "Quality officer", "--approve", "--comment", "read back checked")
    assert pending["status"] == "pending_approval"
    message = desk.bkp(None, "approve", str(record), "--message").stdout
    assert message == pending["message"] and "nonce:" in message
    waiting = desk.json(None, "status")["approvals"]
    assert [(a["subject"], a["status"]) for a in waiting] == [(str(record), "pending")]

    # signed by the performer, by an unregistered key, or over another text: refused
    for person, text, why in (("alice", message, "Alice Jansen"),
                              ("mallory", message, "not made with a key registered"),
                              ("vic", message.replace("Quality", "Qualty"), "does not match")):
        signature = desk.sign(person, text)
        done = desk.bkp("adam", "approve", str(record), "--signature", str(signature))
        assert done.returncode == 4, (person, done.stderr)
        assert why in done.stderr, done.stderr
    not_a_signature = desk.root / "forged.sig"
    not_a_signature.write_text("-----BEGIN SSH SIGNATURE-----\nAAAA\n"
                               "-----END SSH SIGNATURE-----\n")
    assert desk.bkp("adam", "approve", str(record), "--signature",
                    str(not_a_signature)).returncode == 4

    approved = desk.json("adam", "approve", str(record), "--signature",
                         str(desk.sign("vic", message)))
    assert approved["approved_by"] == "Victor de Wit" and approved["status"] == "approved"
    assert approved["validation"]["decision"] == "approved"
    assert desk.json(None, "status")["approvals"] == []

    document = json.loads(Path(approved["certificate"]["json"]).read_text())["certificate"]
    validation = document["validation"]
    assert validation["validator"] == "Victor de Wit"
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(people["vic"].key)],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    assert validation["approval"]["key_fingerprint"] == fingerprint
    assert "clock" in document and "synchronized" in document["clock"]
    verdict = desk.json(None, "certificate", "verify", approved["certificate"]["pdf"])
    assert verdict["valid"] is True
    assert verdict["validation"]["state"] == "validated" and verdict["validation"]["checked"]
    text = desk.bkp(None, "certificate", str(record)).stdout
    assert "Victor de Wit" in text and fingerprint in text

    # the validator's signature in the record checks out with plain ssh-keygen
    signature = desk.root / "kept.sig"
    signature.write_text(validation["approval"]["signature"])
    allowed = desk.root / "allowed"
    public = people["vic"].key.with_suffix(".pub").read_text()
    allowed.write_text(f'vic namespaces="bkp" {public}')
    assert subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "vic",
                           "-n", "bkp", "-s", str(signature)], input=message.encode(),
                          capture_output=True).returncode == 0
    assert desk.bkp("adam", "certificate", "validate", str(record), "--title", "x",
                    "--approve").returncode == 4  # validated once
    events = [e for e in desk.events() if e["action"] == "approve"]
    assert [e["outcome"] for e in events] == ["refused"] * 4 + ["approved"]
    assert all(e["os_user"] == people["adam"].os_user for e in events)


def test_without_operators_bkp_works_as_before_and_says_so(tmp_path, people):
    desk = Desk(tmp_path, people, registered=False)
    access = desk.json("mallory", "status")["access"]
    assert access["operators_registered"] == 0
    assert "no operators registered" in access["note"]
    record, _ = desk.sanitized("mallory", "FREE-001")
    done = desk.json("mallory", "--operator", "Jan", "certificate", "validate", str(record),
                     "--validator", "Piet", "--title", "QA", "--approve")
    assert done["status"] == "validated" and done["signed"] is False
    assert done["validation"]["validator"] == "Piet"
    assert desk.events()[-1]["os_user"] == people["mallory"].os_user
    done = desk.bkp("mallory", "approve", str(record), "--signature", "/dev/null")
    assert done.returncode == 4 and "no operators are registered" in done.stderr


def test_a_weakened_policy_is_on_the_record_until_an_admin_acknowledges_it(bkp_env, people,
                                                                           tmp_path):
    (tmp_path / "desk").mkdir()
    desk = Desk(tmp_path / "desk", people)
    bkp_env.local_tenant("praktijk", retention={"last": 3, "daily": 7, "legal_hold": True})
    env = {"BKP_CONFIG": str(desk.config)}
    bkp_env.bkp_json("init", "praktijk", BKP_OPERATOR="", **env)
    bkp_env.bkp_json("backup", "praktijk", BKP_OPERATOR="", **env)
    assert [e["action"] for e in _events(bkp_env)].count("policy.recorded") == 1

    bkp_env.local_tenant("praktijk", retention={"last": 1, "daily": 7})
    status = bkp_env.bkp_json("status", "praktijk", BKP_OPERATOR="", **env)[0]["tenants"][0]
    assert status["policy_changed_since_last_run"] is True
    bkp_env.bkp_json("backup", "praktijk", BKP_OPERATOR="", **env)
    changed = [e for e in _events(bkp_env) if e["action"] == "policy.changed"]
    assert len(changed) == 1 and changed[0]["outcome"] == "flagged"
    details = json.loads(changed[0]["details"])
    keys = {c["key"]: (c["from"], c["to"]) for c in details["changes"]}
    assert keys["retention.legal_hold"] == (True, None)
    assert keys["retention.last"] == (3, 1)
    assert any("legal hold was lifted" in w for w in details["weakenings"])
    status = bkp_env.bkp_json("status", "praktijk", BKP_OPERATOR="", **env)[0]["tenants"][0]
    assert len(status["policy_flags"]) == 1
    assert status["policy_changed_since_last_run"] is False

    runs = sqlite3.connect(bkp_env.home / "catalog.db").execute(
        "select policy_fingerprint, clock_synchronized from runs order by id").fetchall()
    assert len({r[0] for r in runs}) == 2 and all(r[0].startswith("sha256:") for r in runs)
    assert all(r[1] in (0, 1) for r in runs)

    # only an admin acknowledges; then the flag is gone, and the acknowledgement recorded
    done = _as(desk, bkp_env, "alice", "policy", "acknowledge", "praktijk")
    assert done.returncode == 4, done.stderr
    done = _as(desk, bkp_env, "adam", "policy", "acknowledge", "praktijk", "--note",
               "customer ended the hold in writing", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["acknowledged"]) == 1
    status = bkp_env.bkp_json("status", "praktijk", BKP_OPERATOR="", **env)[0]["tenants"][0]
    assert status["policy_flags"] == []
    last = _events(bkp_env)[-1]
    assert (last["action"], last["operator"]) == ("policy.acknowledged", "Adam Visser")


def _events(bkp_env) -> list[dict]:
    conn = sqlite3.connect(bkp_env.home / "catalog.db")
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute("select * from audit_log order by seq")]


def _as(desk: Desk, bkp_env, person: str, *args: str) -> subprocess.CompletedProcess:
    """bkp for the tenant's installation, run by one of the desk's people."""
    return desk.bkp(person, "--policies", str(bkp_env.policies), "--home", str(bkp_env.home),
                    *args)
