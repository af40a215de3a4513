"""The pure parts of offboarding and erasure: which rules refuse, which repositories lie
inside another, the migration that gives erasure records a place, the certificate."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import sqlite_utils

from bkp.catalog import Catalog, add_erasure, get_erasure, get_record, update_erasure
from bkp.catalog import schema as catalog_schema
from bkp.evidence import certificates as certs
from bkp.policy import Destination, Policy, Retention
from bkp.tenants.erasure import _inside, confirmed, nested_repository, protection


def policy(**retention) -> Policy:
    return Policy(tenant="acme", file=Path("/etc/bkp/policies/acme.yaml"), purpose="x",
                  classification="sensitive", sources=("/srv",),
                  destination=Destination(type="local", country="NL", path="/mnt/b/acme"),
                  retention=Retention(last=3, **retention))


def test_a_legal_hold_and_keep_until_refuse_and_the_day_after_does_not():
    assert "legal hold" in protection(policy(legal_hold=True))
    kept = policy(keep_until="2030-06-30")
    assert "must be kept until 2030-06-30" in protection(kept, today=date(2030, 6, 30))
    assert "must be kept until" in protection(kept, today=date(2029, 1, 1))
    assert protection(kept, today=date(2030, 7, 1)) is None
    assert protection(policy()) is None


def test_confirmation_is_the_tenant_id_typed_or_yes():
    confirmed("acme", True, lambda: None)
    confirmed("acme", False, lambda: " acme\n")
    for typed in (None, "", "acme-zorg", "ACME"):
        try:
            confirmed("acme", False, lambda typed=typed: typed)
        except Exception as exc:
            assert getattr(exc, "exit_code", None) == 4 and "not confirmed" in str(exc)
        else:
            raise AssertionError(f"{typed!r} confirmed the erasure")


def test_a_repository_inside_another_location_is_found():
    assert _inside(("local", "/mnt/b/acme/x"), ("local", "/mnt/b/acme"))
    assert _inside(("local", "/mnt/b/acme"), ("local", "/mnt/b/acme"))
    assert not _inside(("local", "/mnt/b/acme-2"), ("local", "/mnt/b/acme"))
    s3 = ("s3", "host", 443, "/", "bucket")
    assert _inside((*s3, "bkp/other"), (*s3, "bkp"))
    assert _inside((*s3, "anything"), (*s3, ""))  # the whole bucket
    assert not _inside((*s3, "bkp2"), (*s3, "bkp"))
    assert not _inside(("s3", "host", 443, "/", "other", "bkp"), (*s3, "bkp"))
    inner = Destination(type="local", country="NL", path="/mnt/b/acme/nested")
    assert "tenant other" in nested_repository(policy(), [("tenant other", inner)])
    beside = replace(inner, path="/mnt/b/other")
    assert nested_repository(policy(), [("tenant other", beside)]) is None


def test_the_migration_keeps_sanitization_records_and_makes_room_for_erasures(tmp_path):
    path = tmp_path / "catalog.db"
    db = sqlite_utils.Database(path)
    db.conn.execute("PRAGMA foreign_keys=ON")
    catalog_schema.migrations().apply(db, stop_before="0016_erasures")
    assert catalog_schema.pending_names(db)[0] == "0016_erasures"  # a catalog of before
    db["media"].insert({"serial": "S1", "type": "hdd", "registered_at": "t"})
    db["records"].insert({"kind": "sanitization", "serial": "S1", "created_at": "t"})
    db["certificates"].insert({"record_id": 1, "issued_at": "t", "payload": "{}",
                               "signature": "x"})
    db.conn.close()

    catalog = Catalog(path)
    assert get_record(catalog, 1)["serial"] == "S1"
    record_id = add_erasure(catalog, {"tenant": "acme", "kind": "offboard",
                                      "status": "requested"})
    assert record_id == 2 and get_record(catalog, 2) == {
        "id": 2, "kind": "erasure", "serial": None, "created_at": get_record(
            catalog, 2)["created_at"], "tenant": "acme"}
    assert update_erasure(catalog, 2, status="erased")["status"] == "erased"
    assert get_erasure(catalog, 2)["tenant"] == "acme"
    assert [row["record_id"] for row in catalog.db["certificates"].rows] == [1]


def record(**fields) -> dict:
    places = [{"id": "destination", "type": "s3", "location": "s3:https://s3/b/bkp",
               "status": "erased", "snapshots": 4, "keys_removed": 1,
               "objects_removed": 40, "bytes_removed": 123456, "left": [],
               "verification": {"listed_objects": 0, "repository_opens": False}}]
    return {"id": 7, "kind": "offboard", "tenant": "acme", "status": "erased",
            "reason": "contract ended", "witness": "Anne Bakker", "operator": "Alice Jansen",
            "os_user": "alice", "requested_at": "2026-11-01T10:00:00Z",
            "started_at": "2026-11-02T10:00:00Z", "ended_at": "2026-11-02T10:05:00Z",
            "attempts": 2, "snapshots": None, "method": "keys first, then every object",
            "destinations": json.dumps(places),
            "kept": json.dumps({"kept": [{"what": "the audit trail", "why": "evidence"}],
                                "host": {"removed": ["/var/lib/bkp/cache/acme"],
                                         "left": []}}), **fields}


def payload() -> dict:
    return certs.erasure_payload(
        certificate_id=3, issued_at="2026-11-02T10:06:00Z", record=record(),
        audit_event={"seq": 41, "hash": "ab" * 32, "action": "offboard"},
        tool_version="0.1.0", approval={"approved_by": "Victor de Wit",
                                        "approved_at": "2026-11-01T12:00:00Z",
                                        "key_fingerprint": "SHA256:abc",
                                        "signature_sha256": "cd" * 32})


def test_the_erasure_certificate_says_what_where_how_who_and_what_is_kept():
    content = payload()
    assert content["kind"] == "erasure" and content["erasure"]["tenant"] == "acme"
    assert content["verification"]["hash"] == certs.erasure_hash(
        json.loads(record()["destinations"]))
    text = certs.render_text({"certificate": content, "signature": {
        "algorithm": "Ed25519", "key_fingerprint": "SHA256:k", "value": "v"}})
    for said in ("CERTIFICATE OF ERASURE", "Tenant:", "acme", "contract ended",
                 "Erased at destination (s3)", "Keys removed:", "Objects removed:",
                 "123 456", "Repository opens:", "no", "Anne Bakker",
                 "Victor de Wit", "SHA256:abc", "the audit trail", "/var/lib/bkp/cache/acme",
                 "Attempts:"):
        assert said in text, said


def test_the_erasure_certificate_pdf_is_one_page():
    import io

    from pypdf import PdfReader

    document = {"format": certs.FORMAT, "certificate": payload(),
                "signature": {"algorithm": "Ed25519", "key_fingerprint": "SHA256:k",
                              "value": "v" * 88, "public_key": "p"}}
    reader = PdfReader(io.BytesIO(certs.render_pdf(document)))
    assert len(reader.pages) == 1
    assert "Erasure" in reader.pages[0].extract_text()
