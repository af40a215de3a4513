"""A pod's signed result: only the tenant's own key makes it acceptable, and it speaks for its
own tenant only. Real Ed25519 keys on disk, no fakes."""

from __future__ import annotations

import json

import pytest

from bkp.evidence import pod_results
from bkp.evidence.pod_results import Rejected


@pytest.fixture
def keys(tmp_path):
    made = {}
    for tenant in ("acme-zorg", "beta-zorg"):
        private, public = tmp_path / f"{tenant}.result.key", tmp_path / f"{tenant}.result.pub"
        pod_results.create_key(private, public)
        made[tenant] = (pod_results.load_private(private), pod_results.load_public(public))
    return made


def result(tenant="acme-zorg", runs=None, events=None):
    # as a pod writes them: a closed run, and the audit event that records it
    runs = runs if runs is not None else [{"id": 1, "tenant": tenant, "kind": "backup",
                                           "status": "ok", "snapshot_id": "0123abcd",
                                           "started_at": "2026-01-05T02:00:00.000000Z",
                                           "ended_at": "2026-01-05T02:01:00.000000Z"}]
    events = events if events is not None else [{"tenant": tenant, "action": "backup",
                                                 "outcome": "ok",
                                                 "details": '{"run_id":1}'}]
    return pod_results.result_document(tenant, "backup", runs, events, {}, "pod-1")


def public_of(keys):
    return lambda tenant: keys[tenant][1] if tenant in keys else None


def test_a_result_signed_by_its_tenant_verifies(keys):
    document = result()
    data = pod_results.sign(document, keys["acme-zorg"][0])
    verified = pod_results.verify(pod_results.object_name(document), data, public_of(keys))
    assert verified.document == document


def test_one_changed_value_is_rejected(keys):
    document = result()
    name = pod_results.object_name(document)
    signed = json.loads(pod_results.sign(document, keys["acme-zorg"][0]))
    signed["document"]["runs"][0]["status"] = "failed"
    with pytest.raises(Rejected, match="signature is not acme-zorg's"):
        pod_results.verify(name, json.dumps(signed).encode(), public_of(keys))


def test_unsigned_and_garbage_are_rejected(keys):
    document = result()
    name = pod_results.object_name(document)
    with pytest.raises(Rejected, match="unsigned"):
        pod_results.verify(name, json.dumps({"document": document}).encode(), public_of(keys))
    with pytest.raises(Rejected, match="not a JSON document"):
        pod_results.verify(name, b"\xff\x00", public_of(keys))
    with pytest.raises(Rejected, match="no document"):
        pod_results.verify(name, b"[]", public_of(keys))


def test_another_tenants_key_cannot_speak_for_this_tenant(keys):
    document = result("acme-zorg")
    data = pod_results.sign(document, keys["beta-zorg"][0])
    with pytest.raises(Rejected, match="signature is not acme-zorg's"):
        pod_results.verify(pod_results.object_name(document), data, public_of(keys))


def test_a_tenants_own_key_cannot_carry_another_tenants_records(keys):
    runs = [{"id": 1, "tenant": "beta-zorg", "kind": "backup", "status": "ok"}]
    document = result("acme-zorg", runs=runs)
    data = pod_results.sign(document, keys["acme-zorg"][0])
    with pytest.raises(Rejected, match="another tenant"):
        pod_results.verify(pod_results.object_name(document), data, public_of(keys))


def test_an_unknown_tenant_or_a_misnamed_object_is_rejected(keys):
    document = result()
    data = pod_results.sign(document, keys["acme-zorg"][0])
    with pytest.raises(Rejected, match="no result key"):
        pod_results.verify(pod_results.object_name(document), data, lambda tenant: None)
    other_name = pod_results.object_name(document).replace("acme-zorg", "beta-zorg")
    with pytest.raises(Rejected, match="does not name tenant acme-zorg"):
        pod_results.verify(other_name, data, public_of(keys))


def test_the_private_key_is_refused_when_others_may_read_it(tmp_path, keys):
    private = tmp_path / "acme-zorg.result.key"
    private.chmod(0o644)
    with pytest.raises(Exception, match="accessible by group or others"):
        pod_results.load_private(private)


def test_the_private_key_is_read_as_cryptography_reads_it_and_nothing_else_is(tmp_path, keys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from bkp.errors import PolicyError

    private = tmp_path / "acme-zorg.result.key"
    theirs = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert pod_results.load_private(private).public_key().public_bytes_raw() == \
        theirs.public_key().public_bytes_raw()
    pem = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        *pem, serialization.NoEncryption())
    locked = ed25519.Ed25519PrivateKey.generate().private_bytes(
        *pem, serialization.BestAvailableEncryption(b"secret"))
    for wrong in (other, locked, b"", b"not a key", private.read_bytes() + b"tail",
                  private.read_bytes().replace(b"PRIVATE KEY", b"PUBLIC KEY")):
        private.write_bytes(wrong)
        with pytest.raises(PolicyError, match="is not a result key"):
            pod_results.load_private(private)


@pytest.mark.parametrize("rendered", [b"\n", b"\r\n", b"  \n\n"])
def test_the_private_key_is_read_after_the_blank_lines_a_template_puts_before_it(tmp_path,
                                                                                  keys, rendered):
    """A Secret rendered by a template (Helm's nindent, a Vault agent template) often starts
    with a line break. cryptography's loader, which pods used before, read such a key; every
    pod refusing it (exit 3) would stop a whole fleet's backups after an upgrade."""
    private = tmp_path / "acme-zorg.result.key"
    expected = pod_results.load_private(private).public_key().public_bytes_raw()
    private.write_bytes(rendered + private.read_bytes())
    assert pod_results.load_private(private).public_key().public_bytes_raw() == expected
