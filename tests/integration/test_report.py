"""The auditor's evidence report, from real backups and drills on local and sftp tenants:
controls judged as the facts say, each file format verifies, and any change is exit 5."""

from __future__ import annotations

import hashlib
import html.parser
import io
import json
import sqlite3
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_tool

pytestmark = pytest.mark.integration


def controls(document: dict, tenant: str) -> dict[str, dict]:
    section = next(t for t in document["tenants"] if t["tenant"] == tenant)
    return {c["id"]: c for c in section["controls"]}


def make(env, *args: str) -> dict:
    document, _ = env.bkp_json("report", *args)
    return document


@pytest.fixture
def fleet(bkp_env, sshd):
    """A local tenant backed up and drilled; an sftp tenant backed up, never drilled; a
    local tenant whose RPO (a fraction of a second) its one backup cannot meet."""
    env = bkp_env
    env.local_tenant("lokaal-zorg", drill={"sample": 0, "rto_minutes": 30})
    env.sftp_tenant("sftp-zorg", sshd)
    env.local_tenant("laat-zorg", rpo_hours=0.00001)
    env.bkp_json("init", "lokaal-zorg", "sftp-zorg", "laat-zorg")
    env.bkp_json("backup", "lokaal-zorg", "sftp-zorg", "laat-zorg")
    env.bkp_json("drill", "lokaal-zorg")
    env.bkp_json("certificate", "key", "create", expect=None)
    return env


def test_controls_come_out_as_the_facts_say(fleet, sshd):
    document = make(fleet)
    local, sftp, late = (controls(document, t) for t in ("lokaal-zorg", "sftp-zorg",
                                                         "laat-zorg"))
    # a local destination is not off-site, whatever else is fine
    assert local["offsite-eea"]["status"] == "not_met"
    assert "not off-site" in local["offsite-eea"]["reason"]
    assert local["restore-tested"]["status"] == "met"
    drill_run = next(e for e in local["restore-tested"]["evidence"] if e["kind"] == "drill")
    assert drill_run["snapshot_id"]
    assert local["backup-current"]["status"] == "met"
    assert local["retention"]["status"] == "met"
    assert local["encrypted"]["status"] == "met"
    assert local["traceability"]["status"] == "met"
    assert local["copies"]["status"] == "not_met"  # no second copy in the policy
    assert local["media-sanitized"]["status"] == "not_evidenced"  # nothing registered
    # never drilled: not restore-tested; off-site and encrypted from what the run saw
    assert sftp["restore-tested"]["status"] == "not_met"
    assert sftp["offsite-eea"]["status"] == "met"
    observed = sftp["offsite-eea"]["evidence"][0]["observed"]
    assert observed["transport"] == "ssh" and observed["host_key"].split()[1].startswith(
        "SHA256:") and observed["host"] == sshd.host
    assert sftp["encrypted"]["status"] == "met" and "SSH" in sftp["encrypted"]["reason"]
    # one good backup, then a gap far beyond its RPO
    assert late["backup-current"]["status"] == "not_met"
    section = next(t for t in document["tenants"] if t["tenant"] == "laat-zorg")
    assert section["backups"]["rpo_met_pct"] < 100 and section["backups"]["ok"] == 1
    # every control names its promise and ISO/BIO controls; fleet matrix failures first
    for control in local.values():
        assert control["promise"] and control["iso27002"] and control["bio"]
    counts = [row["not_met"] for row in document["fleet"]]
    assert counts == sorted(counts, reverse=True)
    assert document["audit"]["valid"] and len(document["audit"]["head"]) == 64
    drills = next(t for t in document["tenants"] if t["tenant"] == "lokaal-zorg")["drills"]
    assert drills[0]["status"] == "passed" and drills[0]["rto_minutes"] == 30
    assert drills[0]["restore_s"] is not None and drills[0]["rto_met"] is True


def test_a_drill_before_the_destination_changed_does_not_count(fleet):
    env = fleet
    policy = env.policies / "lokaal-zorg.yaml"
    doc = yaml.safe_load(policy.read_text())
    doc["destination"]["path"] = str(env.root / "offsite" / "lokaal-zorg-new")
    policy.write_text(yaml.safe_dump(doc, sort_keys=False))
    env.bkp_json("init", "lokaal-zorg")
    env.bkp_json("backup", "lokaal-zorg")
    control = controls(make(env, "lokaal-zorg"), "lokaal-zorg")["restore-tested"]
    assert control["status"] == "not_met" and "destination changed" in control["reason"]
    assert any(e["kind"] == "policy_change" and e["id"] for e in control["evidence"])
    env.bkp_json("drill", "lokaal-zorg")
    assert controls(make(env, "lokaal-zorg"), "lokaal-zorg")["restore-tested"]["status"] \
        == "met"


def test_a_broken_audit_trail_is_not_traceable(fleet):
    with sqlite3.connect(fleet.home / "catalog.db") as db:
        db.execute("update audit_log set outcome = 'ok-edited' where seq = 2")
    document = make(fleet, "lokaal-zorg")
    assert not document["audit"]["valid"]
    assert controls(document, "lokaal-zorg")["traceability"]["status"] == "not_met"


def write(env, fmt: str, name: str, *tenants: str) -> Path:
    path = env.root / name
    done = env.bkp("report", *tenants, "--format", fmt, "--output", str(path))
    assert done.returncode == 0, done.stderr
    return path


def verify(env, path: Path) -> tuple[int, dict]:
    done = env.bkp("report", "verify", str(path), "--json")
    return done.returncode, json.loads(done.stdout)


def test_each_format_verifies_and_any_change_is_exit_5(fleet):
    env = fleet
    catalog = env.home / "catalog.db"
    events_before = len(env.bkp_json("audit", "log")[0]["events"])
    files = {fmt: write(env, fmt, f"report.{fmt}") for fmt in ("json", "html", "pdf")}
    events = env.bkp_json("audit", "log")[0]["events"]
    issued = [e for e in events[events_before:]]
    assert [e["action"] for e in issued] == ["report.issued"] * 3  # and nothing else
    for fmt, path in files.items():
        assert issued[list(files).index(fmt)]["details"]["sha256"] == \
            hashlib.sha256(path.read_bytes()).hexdigest()
        before = catalog.read_bytes()
        code, result = verify(env, path)
        assert (code, result["valid"], result["format"]) == (0, True, fmt), result
        assert result["issued_event"] == issued[list(files).index(fmt)]["seq"]
        assert catalog.read_bytes() == before  # verify writes nothing

    def changed(name: str, data: bytes) -> tuple[int, dict]:
        path = env.root / name
        path.write_bytes(data)
        return verify(env, path)

    text = files["json"].read_text()
    edited = text.replace('"status": "not_met"', '"status": "met"', 1)
    assert edited != text
    assert changed("edited.json", edited.encode())[0] == 5
    assert changed("truncated.json", text.encode()[: len(text) // 2])[0] == 5
    code, result = changed("resigned.json", resigned_by_another_key(edited))
    assert code == 5 and "not by a trusted key" in result["problems"][0], result

    page = files["html"].read_bytes()
    outside = page.replace(b"NOT MET", b"met", 1)  # the table, not the embedded JSON
    assert outside != page
    code, result = changed("outside.html", outside)
    assert code == 5 and any("changed after it was signed" in p for p in result["problems"])
    start = page.index(b'id="bkp-report">')
    end = page.index(b"</script>", start)
    block = page[start:end].replace(b'"status":"not_met"', b'"status":"met"', 1)
    inside = page[:start] + block + page[end:]
    assert inside != page
    assert changed("inside.html", inside)[0] == 5
    other = write(env, "html", "other.html", "sftp-zorg").read_bytes()
    marker = b"<!-- bkp-html-signature "
    swapped = page[:page.rfind(marker)] + other[other.rfind(marker):]
    assert changed("swapped.html", swapped)[0] == 5
    assert changed("truncated.html", page[:-40])[0] == 5
    assert changed("cut.html", page[: len(page) // 2])[0] == 5
    assert changed("appended.html", page + b"<p>all met</p>\n")[0] == 5

    pdf = files["pdf"].read_bytes()
    code, result = changed("updated.pdf", incremental_update(pdf))
    assert code == 5 and any("incremental update" in p for p in result["problems"]), result
    middle = len(pdf) // 3
    assert changed("flipped.pdf", pdf[:middle] + bytes([pdf[middle] ^ 1]) + pdf[middle + 1:]
                   )[0] == 5
    assert changed("short.pdf", pdf[:-100])[0] == 5


def resigned_by_another_key(text: str) -> bytes:
    """An edited report signed again, correctly, by a key that is not the installation's."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bkp.evidence.report_files import json_bytes, sign_document

    return json_bytes(sign_document(json.loads(text), Ed25519PrivateKey.generate()))


def incremental_update(pdf: bytes) -> bytes:
    """The signed PDF with an annotation added as an incremental update, as a viewer or an
    attacker would append it: the signed bytes stay as they were."""
    from pypdf import PdfWriter
    from pypdf.annotations import FreeText

    writer = PdfWriter(io.BytesIO(pdf), incremental=True)
    writer.add_annotation(0, FreeText(text="all controls met", rect=(50, 50, 300, 100)))
    out = io.BytesIO()
    writer.write(out)
    data = out.getvalue()
    assert data.startswith(pdf) and len(data) > len(pdf)
    return data


def test_what_is_not_a_report_is_said_so(fleet):
    env = fleet
    notes = env.root / "notes.txt"
    notes.write_text("minutes of the audit meeting\n")
    code, result = verify(env, notes)
    assert code == 5 and not result["valid"] and "not a bkp report" in result["problems"][0]
    certificate_like = env.root / "other.json"
    certificate_like.write_text(json.dumps({"format": "bkp-certificate/1"}))
    code, result = verify(env, certificate_like)
    assert code == 5 and "not a bkp report" in result["problems"][0]
    empty = env.root / "empty.pdf"
    empty.write_bytes(b"")
    assert verify(env, empty)[0] == 5
    missing = env.bkp("report", "verify", str(env.root / "nothing-here.json"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


FETCHING_TAGS = frozenset({"link", "img", "iframe", "object", "embed", "video", "audio",
                           "source", "base", "form", "image", "use"})


class References(html.parser.HTMLParser):
    """Everything in a page that could make a browser fetch something."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in FETCHING_TAGS:
            self.found.append(f"<{tag}>")
        if tag == "script" and dict(attrs).get("type") != "application/json":
            self.found.append("<script> that runs")
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "srcset", "poster", "data") \
                    and not (value or "").startswith("#"):
                self.found.append(f"{tag} {name}={value}")


def test_html_is_self_contained_and_renders_in_a_real_browser(fleet):
    env = fleet
    page = write(env, "html", "report.html")
    text = page.read_text()
    parser = References()
    parser.feed(text)
    assert parser.found == []
    assert "url(" not in text and "@import" not in text
    chromium = require_tool("chromium")
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={env.root / 'chromium-profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for tenant in ("lokaal-zorg", "sftp-zorg", "laat-zorg"):
        assert tenant in dom.stdout
    assert "<svg" in dom.stdout and "Fleet overview" in dom.stdout
    shot = env.root / "report.png"
    done = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,1600",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    assert colours_in_png(shot.read_bytes()) > 64  # text, tables and charts, not blank


def colours_in_png(data: bytes) -> int:
    """Distinct byte values in a PNG's decompressed pixel rows: a blank page has a handful
    (its one colour and the row filters), a page of text, tables and charts hundreds."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


def test_pdf_text_carries_the_same_content(fleet):
    from pypdf import PdfReader

    pdf = write(fleet, "pdf", "report.pdf")
    text = "\n".join(page.extract_text() for page in PdfReader(pdf).pages)
    for tenant in ("lokaal-zorg", "sftp-zorg", "laat-zorg"):
        assert f"Tenant {tenant}" in text
    assert "Fleet overview" in text and "NOT MET" in text
    assert "offsite-eea" in text and "BIO 8.13.04" in text


def test_s3_runs_observe_the_buckets_own_region_and_plain_http(bkp_env, s3):
    env = bkp_env
    env.s3_tenant("s3-zorg", s3)
    env.bkp_json("init", "s3-zorg")
    env.bkp_json("backup", "s3-zorg")
    env.bkp_json("certificate", "key", "create")
    verdicts = controls(make(env), "s3-zorg")
    offsite = verdicts["offsite-eea"]
    assert offsite["status"] == "met", offsite
    assert offsite["evidence"][0]["observed"]["bucket_region"] == "eu-central-1"
    # the test S3 server speaks plain http on loopback: in transit unencrypted, and said so
    assert verdicts["encrypted"]["status"] == "not_met"
    assert "http to 127.0.0.1" in verdicts["encrypted"]["reason"]
