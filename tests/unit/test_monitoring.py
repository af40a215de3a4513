from bkp.tenants import monitoring


def test_ping_urls_follow_healthchecks_convention():
    assert monitoring.ping_url("https://hc.example/ping/abc/", "start") == \
        "https://hc.example/ping/abc/start"
    assert monitoring.ping_url("https://hc.example/ping/abc", "success") == \
        "https://hc.example/ping/abc"
    assert monitoring.ping_url("https://hc.example/ping/abc", "fail") == \
        "https://hc.example/ping/abc/fail"


def test_unreachable_ping_endpoint_returns_false_not_raises():
    assert monitoring.ping("http://127.0.0.1:9/nothing", "start") is False
    assert monitoring.ping(None, "start") is False


def test_textfile_format_groups_samples_under_help_and_type(tmp_path):
    text = monitoring.render_textfile([
        ("bkp_backup_last_ok", {"tenant": "a"}, 1.0),
        ("bkp_backup_rpo_ok", {"tenant": "a"}, 0.0),
        ("bkp_backup_last_ok", {"tenant": 'we"ird'}, 0.0),
    ])
    lines = text.splitlines()
    assert lines[0] == "# HELP bkp_backup_last_ok 1 when the most recent backup succeeded, else 0."
    assert lines[1] == "# TYPE bkp_backup_last_ok gauge"
    assert 'bkp_backup_last_ok{tenant="a"} 1' in lines
    assert 'bkp_backup_last_ok{tenant="we\\"ird"} 0' in lines
    path = tmp_path / "bkp.prom"
    monitoring.write_textfile(path, text)
    assert path.read_text() == text and not list(tmp_path.glob(".bkp-*"))


def test_timestamps_and_large_counts_keep_full_precision():
    text = monitoring.render_textfile([
        ("bkp_backup_last_success_timestamp_seconds", {"tenant": "a"}, 1795465217.123456),
        ("bkp_backup_last_bytes_added", {"tenant": "a"}, 123456789012),
    ])
    assert 'bkp_backup_last_success_timestamp_seconds{tenant="a"} 1795465217.123456' in text
    assert 'bkp_backup_last_bytes_added{tenant="a"} 123456789012' in text
