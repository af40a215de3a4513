"""NIST SP 800-88 Rev. 2 through the real CLI: the rules of sensitive media, each person's
details from bkp.yaml, validation as a step of its own, destruction records, the register
export and a batch's summary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pypdf
import pytest

from tests.e2e.test_media_cli import MIB, Bench, image_file, sha256_of

pytestmark = pytest.mark.e2e

BKP_YAML = """\
organization: Hosting B.V.
location: Datacenter Amsterdam, Kabelweg 1
people:
  - name: Jeroen de Vries
    title: Systems engineer
    contact: jeroen@hosting.example
  - name: Anne Bakker
    title: Facility manager
    contact: "+31 20 555 0101"
  - name: Karin Visser
    title: Security officer
    contact: karin@hosting.example
    location: Head office Utrecht
"""


@pytest.fixture
def bench(tmp_path) -> Bench:
    bench = Bench(tmp_path)
    config = tmp_path / "bkp.yaml"
    config.write_text(BKP_YAML)
    original = bench.env

    def env(**extra):
        return original(BKP_CONFIG=str(config), **extra)

    bench.env = env
    return bench


def pdf_text(path) -> str:
    return pypdf.PdfReader(str(path)).pages[0].extract_text()


def sensitive_disk(bench: Bench, serial: str, size: int = 4 * MIB) -> Path:
    disk = image_file(bench.root / f"{serial}.img", size)
    bench.json("media", "register", "--serial", serial, "--type", "ssd", "--asset-tag",
               f"HB-{serial}", "--classification", "sensitive")
    return disk


def wipe(bench: Bench, disk: Path, serial: str, *args: str, expect: int = 0) -> dict:
    return bench.json("sanitize", str(disk), "--serial", serial, "--yes", "--witness",
                      "Anne Bakker", *args, expect=expect)


# ---------------------------------------------------------------- sensitive media

def test_sensitive_clear_for_reuse_is_refused_untouched_unless_accepted(bench):
    disk = sensitive_disk(bench, "SENS-0001")
    before = sha256_of(disk)
    backed = ("--not-backed-up", "--backup-note", "copied to the tenant's new server")
    for destination in ("reuse", "return", "recycle"):
        done = bench.bkp("sanitize", str(disk), "--serial", "SENS-0001", "--yes",
                         "--method", "zero", "--destination", destination, *backed)
        assert done.returncode == 4, done.stderr
        assert "is a NIST Clear method" in done.stderr and "--accept-clear" in done.stderr
        assert "Traceback" not in done.stderr
    dry = bench.json("sanitize", str(disk), "--serial", "SENS-0001", "--method", "random",
                     "--dry-run", *backed, expect=4)
    assert dry["would"] == "refuse"
    assert sha256_of(disk) == before  # nothing written
    refusals = [e for e in bench.json("audit", "log")["events"]
                if e["action"] == "sanitize" and e["outcome"] == "refused"]
    assert len(refusals) == 3

    # to internal storage (or destruction) Clear is allowed
    stored = sensitive_disk(bench, "SENS-0002")
    assert wipe(bench, stored, "SENS-0002", "--destination", "storage", *backed)[
        "result"] == "erased"

    reason = "stays in our own cage; re-used for the same tenant"
    data = wipe(bench, disk, "SENS-0001", "--destination", "reuse", "--accept-clear", reason,
                *backed)
    assert data["result"] == "erased" and sha256_of(disk) != before
    document = json.loads(Path(data["certificate"]["json"]).read_text())
    assert document["certificate"]["accept_clear"] == reason
    text = bench.bkp("certificate", str(data["record_id"])).stdout
    line = next(x for x in text.splitlines() if "Clear accepted because:" in x)
    assert line.split(":", 1)[1].strip() == reason
    assert reason in pdf_text(data["certificate"]["pdf"])


def test_sensitive_data_not_known_to_be_backed_up_needs_a_note(bench):
    disk = sensitive_disk(bench, "SENS-0003")
    before = sha256_of(disk)
    plain = bench.bkp("sanitize", str(disk), "--serial", "SENS-0003", "--yes",
                      "--destination", "storage")
    assert plain.returncode == 4 and "not known to be backed up" in plain.stderr
    bare = bench.bkp("sanitize", str(disk), "--serial", "SENS-0003", "--yes",
                     "--destination", "storage", "--not-backed-up")
    assert bare.returncode == 4 and "--backup-note" in bare.stderr
    assert sha256_of(disk) == before
    note = "tenant left in 2024; its contract ended the obligation to keep"
    data = wipe(bench, disk, "SENS-0003", "--destination", "storage", "--not-backed-up",
                "--backup-note", note)
    backup = json.loads(Path(data["certificate"]["json"]).read_text())["certificate"][
        "data"]["backup"]
    assert backup == {"backed_up": False, "note": note}


# ---------------------------------------------------------------- Rev. 2 fields

def test_rev2_fields_in_json_text_and_pdf(bench):
    disk = sensitive_disk(bench, "REV2-0001")
    data = wipe(bench, disk, "REV2-0001", "--method", "random", "--destination", "destroy",
                "--not-backed-up", "--backup-note", "test medium")
    certificate = json.loads(Path(data["certificate"]["json"]).read_text())["certificate"]
    people = certificate["people"]
    assert people["performer"] == {
        "name": "Jeroen de Vries", "title": "Systems engineer",
        "organization": "Hosting B.V.", "location": "Datacenter Amsterdam, Kabelweg 1",
        "contact": "jeroen@hosting.example", "date": data["ended_at"]}
    assert people["witness"]["title"] == "Facility manager"
    assert people["witness"]["contact"] == "+31 20 555 0101"
    assert people["validator"] is None and certificate["validated"] is False
    assert certificate["property_number"] == "HB-REV2-0001"
    assert certificate["pre_sanitization_categorization"].startswith("High")
    assert certificate["method_category"] == "Clear"
    assert certificate["technique"] == "overwrite"
    assert certificate["tool"]["name"] == "bkp" and certificate["tool"]["version"]
    assert certificate["verification"]["mode"] == "full"
    assert certificate["verification_result"] == "passed"
    assert certificate["post_sanitization_destination"] == "destroy"

    text = bench.bkp("certificate", str(data["record_id"])).stdout
    page = pdf_text(data["certificate"]["pdf"])
    for needle in ("Systems engineer", "Facility manager", "Datacenter Amsterdam",
                   "jeroen@hosting.example", "HB-REV2-0001", "High", "overwrite",
                   "IEEE 2883", "passed", "NOT VALIDATED"):
        assert needle in text, needle
        assert needle in page, needle
    assert len(pypdf.PdfReader(data["certificate"]["pdf"]).pages) == 1


# ---------------------------------------------------------------- validation

def test_validation_by_a_second_person_is_on_the_certificate_and_verified(bench):
    disk = image_file(bench.root / "VAL-0001.img", 4 * MIB)
    bench.json("media", "register", "--serial", "VAL-0001", "--type", "hdd")
    data = wipe(bench, disk, "VAL-0001")
    record = str(data["record_id"])
    listed = bench.json("media", "list", "--awaiting-validation")["media"]
    assert [(m["serial"], m["validation"], m["record_id"]) for m in listed] == [
        ("VAL-0001", "awaiting", data["record_id"])]
    human = bench.bkp("media", "list").stdout
    assert "1 record awaiting validation" in human
    first = bench.json("certificate", "verify", data["certificate"]["pdf"])
    assert first["valid"] and first["validation"]["state"] == "not_validated"

    # the performer cannot validate their own work
    self_check = bench.bkp("certificate", "validate", record, "--validator",
                           "Jeroen de Vries", "--title", "Engineer", "--approve")
    assert self_check.returncode == 4 and "cannot validate it" in self_check.stderr
    lookalike = bench.bkp("certificate", "validate", record, "--validator",
                          "jeroen  de vries", "--title", "Engineer", "--approve")
    assert lookalike.returncode == 4 and "cannot validate it" in lookalike.stderr

    result = bench.json("certificate", "validate", record, "--validator", "Karin Visser",
                        "--title", "Security officer", "--approve", "--comment",
                        "markers and hash checked")
    assert result["validation"]["validator"] == "Karin Visser"
    validated = Path(result["certificate"]["pdf"])
    page = pdf_text(validated)
    assert "validated by Karin Visser" in page and "NOT VALIDATED" not in page
    assert "Head office Utrecht" in page  # the validator's own location from bkp.yaml
    report = bench.json("certificate", "verify", str(validated))
    assert report["valid"] and report["validation"]["state"] == "validated"
    assert report["validation"]["checked"]
    assert bench.json("media", "list", "--awaiting-validation")["media"] == []
    assert bench.json("media", "list")["media"][0]["validation"] == "approved"
    again = bench.bkp("certificate", "validate", record, "--validator", "Anne Bakker",
                      "--title", "Manager", "--reject")
    assert again.returncode == 4 and "already validated" in again.stderr


def test_an_edited_validation_is_exit_5(bench, tmp_path):
    from bkp.evidence import certificates as certs
    from bkp.evidence import keyring

    disk = image_file(bench.root / "VAL-0002.img", 4 * MIB)
    bench.json("media", "register", "--serial", "VAL-0002", "--type", "hdd")
    data = wipe(bench, disk, "VAL-0002")
    result = bench.json("certificate", "validate", str(data["record_id"]), "--validator",
                        "Karin Visser", "--title", "Security officer", "--approve")
    document = json.loads(Path(result["certificate"]["json"]).read_text())

    # edited in the file: the signature no longer matches
    edited = json.loads(json.dumps(document))
    edited["certificate"]["validation"]["validator"] = "Mallory Fox"
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(edited))
    report = bench.json("certificate", "verify", str(path), expect=5)
    assert "signature does not match" in report["problems"][0]

    # re-signed by someone holding the installation's key: the trail knows better
    ring = keyring.load_ring(bench.home)
    with keyring.signing_key(bench.home) as signer:
        forged = certs.sign(edited["certificate"], signer.private_key)
    assert ring
    path.write_text(json.dumps(forged))
    report = bench.json("certificate", "verify", str(path), expect=5)
    assert any("Mallory Fox" in p and "audit event" in p for p in report["problems"])

    # a validation invented for a record nobody validated
    bench.json("media", "register", "--serial", "VAL-0003", "--type", "hdd")
    other = wipe(bench, image_file(bench.root / "VAL-0003.img", 4 * MIB), "VAL-0003")
    unvalidated = json.loads(Path(other["certificate"]["json"]).read_text())["certificate"]
    unvalidated["validation"].update(validator="Karin Visser", decision="approved",
                                     title="Security officer", time=unvalidated["issued_at"])
    with keyring.signing_key(bench.home) as signer:
        path.write_text(json.dumps(certs.sign(unvalidated, signer.private_key)))
    report = bench.json("certificate", "verify", str(path), expect=5)
    assert any("records no validation" in p for p in report["problems"])


# ---------------------------------------------------------------- destruction

def test_a_destruction_record_names_the_service_place_number_and_day(bench):
    bench.json("media", "register", "--serial", "DESTR-0001", "--type", "ssd")
    photo = bench.root / "photo.jpg"
    photo.write_bytes(b"photo of the shredded SSD")
    future = bench.bkp("destroy", "--serial", "DESTR-0001", "--method", "shred",
                       "--witness", "Anne Bakker", "--destroyed-on", "2999-01-01")
    assert future.returncode == 2 and "in the future" in future.stderr
    data = bench.json("destroy", "--serial", "DESTR-0001", "--method", "shred", "--witness",
                      "Anne Bakker", "--evidence", str(photo), "--service",
                      "Shred-It Nederland", "--location", "Amsterdam depot",
                      "--service-certificate", "SI-2026-0042", "--destroyed-on",
                      "2026-11-20")
    certificate = json.loads(Path(data["certificate"]["json"]).read_text())["certificate"]
    assert certificate["destruction"] == {
        "service": "Shred-It Nederland", "location": "Amsterdam depot",
        "service_certificate": "SI-2026-0042", "destroyed_on": "2026-11-20"}
    assert certificate["method_category"] == "Destruct"
    assert certificate["technique"] == "shred"
    assert certificate["people"]["witness"]["title"] == "Facility manager"
    page = pdf_text(data["certificate"]["pdf"])
    for needle in ("Shred-It Nederland", "Amsterdam depot", "SI-2026-0042", "2026-11-20"):
        assert needle in page, needle
    assert bench.json("certificate", "verify", data["certificate"]["pdf"])["valid"]


# ---------------------------------------------------------------- export

def test_export_lists_each_records_evidence_and_defuses_formulas(bench):
    disk = image_file(bench.root / "EXP-0001.img", 4 * MIB)
    bench.json("media", "register", "--serial", "EXP-0001", "--type", "hdd", "--asset-tag",
               "=HYPERLINK(\"http://evil\")", "--model", "Disk, with \"quotes\"; and more",
               "--vendor", "@SUM(1+1)")
    data = wipe(bench, disk, "EXP-0001")
    bench.json("media", "register", "--serial", "+2-3", "--type", "usb", "--host", "+cmd|x")
    out = bench.root / "register.csv"
    assert bench.bkp("media", "export", "--output", str(out)).returncode == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    by_serial = {r["serial"]: r for r in rows}
    row = by_serial["EXP-0001"]
    assert row["record_id"] == str(data["record_id"])
    assert row["method"] == "zero" and row["technique"] == "overwrite"
    assert row["hash"] == data["verification"]["hash"]
    assert row["certificate_id"] == str(data["certificate"]["id"])
    assert row["validation"] == "awaiting"
    assert row["asset_tag"] == "'=HYPERLINK(\"http://evil\")"
    assert row["vendor"] == "'@SUM(1+1)"
    assert row["model"] == "Disk, with \"quotes\"; and more"  # one cell, quoted
    assert by_serial["'+2-3"]["host"] == "'+cmd|x"
    for cells in rows:
        for value in cells.values():
            assert (value or "x")[0] not in "=+-@", value


def test_a_batch_summary_lists_every_medium_with_certificate_and_hash(bench):
    from datetime import UTC, datetime

    from bkp.evidence import pdf_signature

    today = datetime.now(UTC).date().isoformat()
    done = []
    for serial in ("BATCH-0001", "BATCH-0002"):
        bench.json("media", "register", "--serial", serial, "--type", "hdd")
        done.append(wipe(bench, image_file(bench.root / f"{serial}.img", 2 * MIB), serial))
    bench.json("certificate", "validate", str(done[0]["record_id"]), "--validator",
               "Karin Visser", "--title", "Security officer", "--approve")
    listing = bench.json("certificate", "batch", "--since", today)
    assert [m["serial"] for m in listing["media"]] == ["BATCH-0001", "BATCH-0002"]
    assert [m["validation"] for m in listing["media"]] == ["validated", "not validated"]
    assert listing["not_validated"] == 1

    out = bench.root / "batch.pdf"
    made = bench.bkp("certificate", "batch", "--since", today, "--output", str(out))
    assert made.returncode == 0, made.stderr
    text = "".join(page.extract_text() for page in pypdf.PdfReader(str(out)).pages)
    for line in listing["media"]:
        assert line["serial"] in text and line["hash"] in text
        assert str(line["certificate_id"]) in text
    check = pdf_signature.check_signature(out.read_bytes())
    assert check.intact and not check.problems

    later = bench.bkp("certificate", "batch", "--since", "2999-01-01", "--output", str(out))
    assert later.returncode == 1 and "nothing to sum up" in later.stderr
    bad = bench.bkp("certificate", "batch", "--since", "yesterday")
    assert bad.returncode == 2 and "is not a date" in bad.stderr


def test_a_record_from_before_the_rev2_fields_validates_and_verifies(bench):
    disk = image_file(bench.root / "OLD-0001.img", 2 * MIB)
    bench.json("media", "register", "--serial", "OLD-0001", "--type", "hdd")
    data = wipe(bench, disk, "OLD-0001")
    with bench.db() as db:  # as a record made before these columns existed reads now
        db.execute("update sanitizations set people = null, technique = null, tool = null, "
                   "accept_clear = null, categorization = null, drive_evidence = null, "
                   "verification_result = null where id = ?", (data["record_id"],))
    result = bench.json("certificate", "validate", str(data["record_id"]), "--validator",
                        "Karin Visser", "--title", "Security officer", "--approve")
    for issued in (data["certificate"], result["certificate"]):
        assert bench.json("certificate", "verify", issued["pdf"])["valid"]
    text = bench.bkp("certificate", str(data["record_id"])).stdout
    assert "validated by Karin Visser" in text and "OLD-0001" in text


def test_sensitive_wins_and_an_unknown_tenant_classification_is_refused(bench):
    disk = image_file(bench.root / "UNK-0001.img", 2 * MIB)
    before = sha256_of(disk)
    bench.json("media", "register", "--serial", "UNK-0001", "--type", "hdd", "--tenant",
               "gone-tenant")
    unknown = bench.bkp("sanitize", str(disk), "--serial", "UNK-0001", "--yes")
    assert unknown.returncode == 4 and "is unknown" in unknown.stderr
    # the registered classification cannot be talked down on the command line
    bench.json("media", "register", "--serial", "UNK-0002", "--type", "hdd",
               "--classification", "sensitive")
    talked = bench.bkp("sanitize", str(disk), "--serial", "UNK-0002", "--yes",
                       "--classification", "normal", "--backed-up")
    assert talked.returncode == 4 and "is a NIST Clear method" in talked.stderr
    odd = bench.bkp("sanitize", str(disk), "--serial", "UNK-0001", "--yes",
                    "--classification", "secret")
    assert odd.returncode == 2
    assert sha256_of(disk) == before
    done = bench.json("sanitize", str(disk), "--serial", "UNK-0001", "--yes",
                      "--classification", "Normal")
    assert done["result"] == "erased"
