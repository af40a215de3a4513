"""The pure parts of NIST SP 800-88 Rev. 2 sanitization: the rules of sensitive media,
markers, what hdparm and nvme-cli say, people from bkp.yaml, records made before the Rev. 2
fields, and the export's defused cells."""

from __future__ import annotations

import io
import json

import pypdf
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bkp import installation
from bkp.errors import SafetyError
from bkp.evidence import certificates as certs
from bkp.media import devices, markers
from bkp.media.register import _csv_safe
from bkp.media.sanitize import SanitizeRequest, check_classification_rules, technique_of
from tests.unit.test_certificates import EVENT, MEDIUM, RECORD

# ---------------------------------------------------------------- sensitive media

BACKED_UP = {"backed_up": True, "where": "sftp destination in NL"}


def rule(method="zero", destination="reuse", classification="sensitive", backup=BACKED_UP,
         **options):
    request = SanitizeRequest(device="/dev/sdx", serial="S", method=method,
                              destination_after=destination, **options)
    check_classification_rules({"serial": "S"}, request, classification, backup)


@pytest.mark.parametrize("method", ["zero", "random", "dod3"])
@pytest.mark.parametrize("destination", ["reuse", "return", "recycle"])
def test_clear_for_a_sensitive_medium_that_leaves_is_refused(method, destination):
    with pytest.raises(SafetyError, match="is a NIST Clear method"):
        rule(method, destination)
    rule(method, destination, accept_clear="re-used in the same tenant's rack")
    rule(method, destination, classification="normal")
    rule(method, destination, classification=None)


@pytest.mark.parametrize("destination", ["storage", "destroy"])
def test_clear_to_storage_or_destruction_is_allowed(destination):
    rule("zero", destination)


def test_purge_is_allowed_anywhere():
    for method in ("ata-secure-erase", "ata-sanitize", "nvme-format", "nvme-sanitize"):
        rule(method, "return")


def test_sensitive_data_not_known_backed_up_needs_a_note():
    for backup in (None, {"backed_up": False, "note": "no successful backup recorded"}):
        with pytest.raises(SafetyError, match="not known to be backed up"):
            rule("zero", "destroy", backup=backup)
        with pytest.raises(SafetyError, match="--backup-note"):
            rule("zero", "destroy", backup=backup, backed_up=False)
        rule("zero", "destroy", backup=backup, backed_up=False, backup_note="tenant gone")
        rule("zero", "destroy", backup=backup, classification="normal")
    # the catalog says backed up, the operator says not: the operator's word needs a note
    with pytest.raises(SafetyError):
        rule("zero", "destroy", backed_up=False)


# ---------------------------------------------------------------- markers

def test_markers_cover_first_last_and_every_subsection():
    size = 1 << 30
    plan = markers.plan(size, b"\x01" * 16)
    assert len(plan.offsets) == markers.COUNT == len(set(plan.offsets))
    assert plan.offsets[0] == 0 and plan.offsets[-1] == size - markers.BLOCK
    assert all(o % markers.BLOCK == 0 and o + markers.BLOCK <= size for o in plan.offsets)
    span = size / (markers.COUNT - 2)
    inner = plan.offsets[1:-1]
    assert all(int(i * span) <= o < int((i + 1) * span) + markers.BLOCK
               for i, o in enumerate(inner))
    assert markers.plan(size, b"\x01" * 16) == plan  # the seed regenerates them
    assert markers.plan(size, b"\x02" * 16).offsets != plan.offsets
    assert plan.marker(0) != plan.marker(markers.BLOCK) and len(plan.marker(0)) == 4096
    assert markers.plan(3 * 4096).offsets == (0, 4096, 8192)
    assert markers.plan(100).offsets == ()


def test_marker_problems_are_sentences():
    gone = {"count": 64, "gone": 64, "still_present": [], "promise": None,
            "promise_kept": None, "promise_broken": []}
    assert markers.problem(gone) is None
    kept = {**gone, "gone": 0, "still_present": [0]}
    assert "reported success but did not erase" in markers.problem(kept)
    broken = {**gone, "promise": "every block all 0x00", "promise_kept": False,
              "promise_broken": [8192]}
    assert "first at byte 8192" in markers.problem(broken)


def test_promises_and_techniques_come_from_the_commands():
    normal = [devices.ata_set_password_argv("/dev/sdb"),
              devices.ata_secure_erase_argv("/dev/sdb", enhanced=False)]
    enhanced = [devices.ata_secure_erase_argv("/dev/sdb", enhanced=True)]
    assert markers.promise_of(normal)[1] == (0x00, 0xFF)
    assert markers.promise_of(enhanced) is None
    assert technique_of(normal, "ata-secure-erase") == "overwrite"
    assert technique_of(enhanced, "ata-secure-erase").startswith("overwrite (enhanced")
    assert technique_of([devices.nvme_sanitize_argv("/dev/nvme0", True)],
                        "nvme-sanitize") == "crypto erase"
    assert technique_of([devices.nvme_sanitize_argv("/dev/nvme0", False)],
                        "nvme-sanitize") == "block erase"
    assert technique_of([devices.nvme_format_argv("/dev/nvme0n1", True)],
                        "nvme-format") == "crypto erase"
    assert technique_of([devices.ata_sanitize_argv("/dev/sdb", True)],
                        "ata-sanitize") == "crypto erase"


# ---------------------------------------------------------------- what the tools say

def test_hdparm_hidden_area_output():
    assert devices.parse_hdparm_hpa(
        "\n/dev/sdb:\n max sectors   = 976771055/976773168, HPA is enabled\n") == (
        976771055, 976773168)
    assert devices.parse_hdparm_hpa("SG_IO: bad/missing sense data") == (None, None)
    assert devices.parse_hdparm_dco("DCO Revision: 0x0001\n\tReal max sectors: 976773168\n"
                                    ) == 976773168
    hpa = devices.HiddenArea(976771055, 976773168, 976773168, checked=True)
    assert hpa.hidden and hpa.hpa and not hpa.dco
    dco = devices.HiddenArea(900, 900, 1000, checked=True)
    assert dco.hidden and dco.dco and not dco.hpa
    assert dco.as_json()["real_bytes"] == 512000 and dco.as_json()["reported_bytes"] == 460800
    clean = devices.HiddenArea(1000, 1000, 1000, checked=True)
    assert not clean.hidden and "HPA none, DCO none" in clean.as_json()["summary"]


def test_nvme_namespace_lists():
    assert devices.parse_nvme_list_ns('{"nsid_list":[{"nsid":1},{"nsid":3}]}') == [1, 3]
    assert devices.parse_nvme_list_ns('{"nsid_list":[{"nsid":1}]}') == [1]
    assert devices.parse_nvme_list_ns("[   0]:0x1\n[   1]:0x2\n") == [1, 2]
    caps = devices.parse_nvme_id_ctrl('{"oacs": 2, "fna": 5, "sanicap": 3, "nn": 8}')
    assert caps.format_all_namespaces and caps.crypto_erase and caps.namespaces == 8


# ---------------------------------------------------------------- people from bkp.yaml

def test_people_details_come_from_bkp_yaml(tmp_path):
    config = tmp_path / "bkp.yaml"
    config.write_text("organization: Hosting B.V.\nlocation: Amsterdam\npeople:\n"
                      "  - {name: Anne Bakker, title: Facility manager, contact: '+31 20'}\n"
                      "  - {name: Karin Visser, organization: Audit bv, location: Utrecht}\n")
    settings = installation.load(str(config))
    assert settings.person("Anne Bakker") == {
        "name": "Anne Bakker", "title": "Facility manager", "organization": "Hosting B.V.",
        "location": "Amsterdam", "contact": "+31 20"}
    karin = settings.person("karin  visser")  # the same person, as bkp reads names
    assert karin["organization"] == "Audit bv" and karin["location"] == "Utrecht"
    stranger = settings.person("Piet Jansen", organization="Other bv")
    assert stranger == {"name": "Piet Jansen", "title": None, "organization": "Other bv",
                        "location": "Amsterdam", "contact": None}
    assert settings.person(None) is None

    config.write_text("people:\n  - {name: Anne Bakker}\n  - {name: anne bakker}\n")
    report = installation.validate(config)
    assert any("each person once" in p.message for p in report.errors)


# ---------------------------------------------------------------- old records

def test_a_record_from_before_the_rev2_fields_still_renders():
    old = certs.sanitization_payload(certificate_id=3, issued_at="2025-01-02T17:00:01Z",
                                     record=RECORD, medium=MEDIUM, audit_event=EVENT,
                                     tool_version="0.1.0")
    for key in ("standards", "people", "property_number", "pre_sanitization_categorization",
                "method_category", "technique", "tool", "accept_clear",
                "verification_result", "drive", "post_sanitization_destination",
                "validated"):
        old.pop(key)  # as signed by a bkp that did not know them
    document = certs.sign(old, Ed25519PrivateKey.generate())
    text = certs.render_text(document)
    assert "NIST SP 800-88 Rev. 1, Appendix G" in text
    assert "NOT VALIDATED" in text and "HB-0042" in text and "Anne Bakker" in text
    pdf = pypdf.PdfReader(io.BytesIO(certs.render_pdf(document)))
    assert len(pdf.pages) == 1 and "NOT VALIDATED" in pdf.pages[0].extract_text()


def test_a_rev2_payload_says_everything_and_fits_one_page():
    record = {**RECORD, "technique": "overwrite", "categorization": "High", "accept_clear":
              "x" * 300, "tool": "hdparm v9.65", "people": json.dumps({
                  "performer": {"title": "Engineer", "location": "AMS", "contact": "a@b"},
                  "witness": {"title": "Manager"}}),
              "drive_evidence": json.dumps({"markers": {"count": 64, "gone": 64},
                                            "hidden_area": {"summary": "HPA none"}})}
    p = certs.sanitization_payload(certificate_id=3, issued_at="2025-01-02T17:00:01Z",
                                   record=record, medium=MEDIUM, audit_event=EVENT,
                                   tool_version="0.1.0")
    assert p["people"]["performer"]["date"] == RECORD["ended_at"]
    assert p["people"]["witness"]["organization"] == "Hosting B.V."
    assert p["verification_result"] == "passed" and p["property_number"] == "HB-0042"
    document = certs.sign(p, Ed25519PrivateKey.generate())
    page = pypdf.PdfReader(io.BytesIO(certs.render_pdf(document)))
    assert len(page.pages) == 1
    text = page.pages[0].extract_text()
    for needle in ("Engineer", "Manager", "hdparm v9.65", "64 of 64 random markers",
                   "HPA none", "NOT VALIDATED"):
        assert needle in text, needle


# ---------------------------------------------------------------- the export

@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", " =1",
                                   "|calc", "%0A"])
def test_formula_cells_are_defused(value):
    assert _csv_safe(value) == "'" + value


def test_plain_cells_stay():
    assert _csv_safe("WD-WCC4N1234567") == "WD-WCC4N1234567"
    assert _csv_safe(-5) == -5 and _csv_safe(None) is None


def test_a_tenants_medium_of_unknown_classification_is_refused():
    request = SanitizeRequest(device="/dev/sdx", serial="S", method="ata-sanitize",
                              destination_after="destroy")
    with pytest.raises(SafetyError, match="classification of tenant acme's data"):
        check_classification_rules({"serial": "S", "tenant": "acme"}, request, None, None)
    check_classification_rules({"serial": "S"}, request, None, None)  # no tenant named


def test_a_marker_plan_always_has_its_full_count_of_distinct_blocks():
    """A subsection's pick could land on the first or last block, chosen already: the plan
    then held 63 markers, and the certificate promised 64 (seen in CI)."""
    from bkp.media import markers

    for size_blocks in (markers.COUNT + 1, markers.COUNT + 2, 100, 1000, 4096, 123457):
        for seed in range(200):
            plan = markers.plan(size_blocks * markers.BLOCK, seed=seed.to_bytes(16, "big"))
            assert len(plan.offsets) == markers.COUNT, (size_blocks, seed)
            assert plan.offsets[0] == 0
            assert plan.offsets[-1] == (size_blocks - 1) * markers.BLOCK
