"""Values that become names: file and lock names, tenant ids, media serials."""

from __future__ import annotations

import pytest

from bkp import locks, names
from bkp.errors import PolicyError


@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "../x", "/etc", "a\x00b", "a\nb",
                                   "tenant-acme\n", "x" * 256, "\u2028"])
def test_a_value_that_could_escape_its_directory_names_no_file(value):
    with pytest.raises(names.UnsafeName) as raised:
        names.file_name(value, "tenant")
    assert raised.value.exit_code == 3


@pytest.mark.parametrize("value", ["tenant-acme.lock", "drill-000001.md", 42, "a..b", "...x",
                                   "x" * 255, "é"])
def test_ordinary_names_pass_unchanged(value):
    assert names.file_name(value, "name") == str(value)


def test_child_checks_every_part(tmp_path):
    assert names.child(tmp_path, "reports", "acme", what="x") == tmp_path / "reports" / "acme"
    with pytest.raises(names.UnsafeName):
        names.child(tmp_path, "reports", "..", what="tenant")


@pytest.mark.parametrize("tenant", ["../../etc/cron.d/x", "acme\n", "a/b", ".."])
def test_a_tenant_lock_never_lands_outside_the_locks_folder(tmp_path, tenant):
    folder = tmp_path / "home" / "locks"
    with pytest.raises(PolicyError), locks.tenant_lock(folder, tenant):
        pass
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_a_tenant_lock_is_a_file_in_the_locks_folder(tmp_path):
    with locks.tenant_lock(tmp_path, "acme-zorg"):
        assert (tmp_path / "tenant-acme-zorg.lock").is_file()


@pytest.mark.parametrize("tenant, ok", [
    ("acme-zorg", True), ("a1", True), ("acme\n", False), ("acme-zorg\n", False),
    ("Acme", False), ("-acme", False), ("a", False), ("a" * 64, False), ("a" * 63, True),
    ("acme zorg", False), ("acme/zorg", False),
])
def test_tenant_ids_are_matched_in_full(tenant, ok):
    assert names.is_tenant_id(tenant) is ok


@pytest.mark.parametrize("serial", ["WD-WCC4N7KX1234", "S3Z8NB0K123456X", "ZA1234_5678",
                                    "A00001L7", "SN 123 456", "0000:03:00.0", "X", "1",
                                    "ABC#12(3)", "a" * 128, "=HYPERLINK(1)"])
def test_real_world_serials_are_accepted(serial):
    assert names.serial_problem(serial) is None


@pytest.mark.parametrize("serial", ["", "-rf", "--all", "a/b", "a\\b", "abc\n", "abc\r",
                                    " abc", "abc ", "a\x00b", "a\tb", "a" * 129, "..", "-",
                                    "é1", "AB\u200bC", "---"])
def test_serials_that_are_no_serial_are_refused(serial):
    problem = names.serial_problem(serial)
    assert problem and "serial" in problem and "\n" not in problem


def test_the_ascii_shortcut_of_control_character_agrees_with_the_rule():
    """Printable ASCII skips the per-character lookup; every ASCII character still gets the
    answer of the Unicode categories."""
    import unicodedata

    from bkp.names import control_character

    for char in map(chr, range(128)):
        expected = char if unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs") else None
        assert control_character(f"ab{char}cd") == expected, repr(char)
