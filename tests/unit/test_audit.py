"""The hash chain catches a changed, inserted or deleted event, and a cut-off tail with an
anchor."""

import sqlite3

from bkp.catalog import Catalog
from bkp.evidence import audit


def make_log(tmp_path, n=5) -> Catalog:
    catalog = Catalog(tmp_path / "catalog.db")
    for i in range(n):
        audit.record(catalog, operator="alice", os_user="root", action="backup",
                     outcome="ok", tenant=f"t{i % 2}", details={"i": i})
    return catalog


def sql(catalog: Catalog, statement: str, *args) -> None:
    conn = sqlite3.connect(catalog.path)
    conn.execute(statement, args)
    conn.commit()
    conn.close()


def test_intact_chain_verifies(tmp_path):
    catalog = make_log(tmp_path)
    report = audit.verify_chain(catalog.audit_events())
    assert report.valid and report.events == 5 and not report.problems
    assert report.head == catalog.audit_events()[-1]["hash"]


def test_changed_event_is_caught(tmp_path):
    catalog = make_log(tmp_path)
    sql(catalog, "update audit_log set operator = 'mallory' where seq = 3")
    report = audit.verify_chain(catalog.audit_events())
    assert not report.valid
    assert any("event 3" in p and "changed" in p for p in report.problems)


def test_changed_event_with_recomputed_hash_breaks_the_next_link(tmp_path):
    catalog = make_log(tmp_path)
    event = catalog.audit_events()[2]
    event["outcome"] = "failed"
    sql(catalog, "update audit_log set outcome = 'failed', hash = ? where seq = 3",
        audit.event_hash(event))
    report = audit.verify_chain(catalog.audit_events())
    assert not report.valid and any("event 4" in p for p in report.problems)


def test_deleted_event_is_caught(tmp_path):
    catalog = make_log(tmp_path)
    sql(catalog, "delete from audit_log where seq = 2")
    report = audit.verify_chain(catalog.audit_events())
    assert not report.valid and any("event 3" in p for p in report.problems)


def test_inserted_event_is_caught(tmp_path):
    catalog = make_log(tmp_path)
    # make room after event 2, then forge an event 3 that links to event 2 correctly
    for seq in (5, 4, 3):
        sql(catalog, "update audit_log set seq = ? where seq = ?", seq + 1, seq)
    second = catalog.audit_events()[1]
    forged = {"seq": 3, "time": "2026-01-01T00:00:00.000000Z", "operator": "mallory",
              "os_user": "root", "host": "h", "tenant": "t0", "action": "forget",
              "outcome": "ok", "details": "{}", "prev_hash": second["hash"]}
    forged["hash"] = audit.event_hash(forged)
    sql(catalog, "insert into audit_log (seq, time, operator, os_user, host, tenant, action, "
                 "outcome, details, prev_hash, hash) values (?,?,?,?,?,?,?,?,?,?,?)",
        *forged.values())
    report = audit.verify_chain(catalog.audit_events())
    assert not report.valid
    # the forged event itself is consistent; the event after it no longer links
    assert any(p.startswith("event 4:") and "link" in p for p in report.problems)


def test_truncated_tail_is_caught_only_with_an_anchor(tmp_path):
    catalog = make_log(tmp_path)
    anchor = audit.verify_chain(catalog.audit_events()).head
    sql(catalog, "delete from audit_log where seq = 5")
    plain = audit.verify_chain(catalog.audit_events())
    assert plain.valid  # a shorter chain is still a chain...
    anchored = audit.verify_chain(catalog.audit_events(), anchor=anchor)
    assert not anchored.valid and anchored.anchor_found is False


def test_anchor_found_in_a_longer_log(tmp_path):
    catalog = make_log(tmp_path, 3)
    anchor = audit.verify_chain(catalog.audit_events()).head
    audit.record(catalog, operator="bob", os_user="root", action="init", outcome="ok")
    report = audit.verify_chain(catalog.audit_events(), anchor=anchor)
    assert report.valid and report.anchor_found


def test_concurrent_writers_never_fork_the_chain(tmp_path):
    import threading

    catalog = Catalog(tmp_path / "catalog.db")
    other = Catalog(tmp_path / "catalog.db")  # a second connection, as a second process has

    def write(cat, who):
        for i in range(20):
            audit.record(cat, operator=who, os_user="root", action="x", outcome="ok",
                         details={"i": i})

    threads = [threading.Thread(target=write, args=(c, w))
               for c, w in ((catalog, "a"), (other, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = audit.verify_chain(catalog.audit_events())
    assert report.valid and report.events == 40
