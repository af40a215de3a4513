"""The catalog's own table operations store and read rows exactly as sqlite-utils does (it
wrote every catalog before them, and still owns the schema)."""

import datetime
import decimal
import sqlite3
import uuid

import pytest
import sqlite_utils

from bkp.catalog import Catalog, schema, tables

ROW = {"tenant": "acme", "kind": "backup", "status": "ok", "files": 3, "duration_s": 1.5,
       "error": None, "copies": [{"id": "b", "status": "ok"}], "observations": {"é": "ü"},
       "started_at": datetime.datetime(2026, 11, 25, 4, 0, tzinfo=datetime.UTC),
       "snapshot_id": uuid.UUID(int=7), "bytes_added": decimal.Decimal("2")}


def _fresh(path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    schema.apply(conn)
    return conn


def test_rows_are_stored_as_sqlite_utils_stores_them(tmp_path):
    ours = tables.Database(_fresh(tmp_path / "ours.db"))
    theirs = sqlite_utils.Database(_fresh(tmp_path / "theirs.db"))
    assert ours["runs"].insert(ROW).last_pk == theirs["runs"].insert(ROW).last_pk == 1
    assert ours["runs"].get(1) == theirs["runs"].get(1)
    change = {"status": "failed", "copies": ("x",), "ended_at": datetime.date(2026, 11, 25)}
    ours["runs"].update(1, change)
    theirs["runs"].update(1, change)
    assert list(ours["runs"].rows) == list(theirs["runs"].rows)
    assert ours["runs"].get(1)["copies"] == '["x"]'


def test_a_missing_row_is_an_error_not_none(tmp_path):
    db = tables.Database(_fresh(tmp_path / "c.db"))
    with pytest.raises(tables.NotFoundError):
        db["runs"].get(41)
    with pytest.raises(tables.NotFoundError):
        db["runs"].update(41, {"status": "ok"})
    assert db["runs"].update(41, {}).last_pk is None  # nothing asked, nothing done


def test_a_given_key_is_the_last_key_and_rows_filter_order_and_count(tmp_path):
    db = tables.Database(_fresh(tmp_path / "c.db"))
    record = db["records"].insert({"kind": "erasure", "created_at": "t"}).last_pk
    assert db["erasures"].insert({"id": record, "tenant": "acme", "kind": "offboard",
                                  "status": "requested", "requested_at": "t"}).last_pk == record
    for tenant in ("b", "a", "b"):
        db["runs"].insert({"tenant": tenant, "kind": "backup", "status": "ok",
                           "started_at": "t"})
    assert [r["id"] for r in db["runs"].rows_where("tenant = ?", ["b"], order_by="id desc",
                                                  limit=1)] == [3]
    assert db["runs"].count == 3 and db["runs"].count_where("tenant = ?", ["a"]) == 1
    assert {"runs", "erasures", "records"} <= set(db.table_names())


def test_making_and_reading_an_up_to_date_catalog_needs_no_sqlite_utils(tmp_path):
    import subprocess
    import sys

    Catalog(tmp_path / "catalog.db").close()
    probe = ("import sys; from pathlib import Path; from bkp.catalog import Catalog; "
             f"c = Catalog.read_only(Path({str(tmp_path / 'catalog.db')!r})); c.last_run('a', "
             "'backup'); Catalog(c.path).close(); "
             f"Catalog(Path({str(tmp_path / 'new' / 'catalog.db')!r})).close(); "
             "print('sqlite_utils' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_a_new_catalog_is_made_as_the_migrations_would_make_it(tmp_path):
    assert schema.SNAPSHOT.read_text(encoding="utf-8") == schema.snapshot_sql(), (
        "bkp/catalog/schema.sql is stale: run "
        "python -c 'from bkp.catalog import schema; schema.write_snapshot()'")
    migrated, created = _fresh(tmp_path / "m.db"), sqlite3.connect(tmp_path / "c.db",
                                                                   isolation_level=None)
    schema.create(created)
    shape = ("select type, name, tbl_name, sql from sqlite_master where name not like "
             "'sqlite_%' order by name")
    assert created.execute(shape).fetchall() == migrated.execute(shape).fetchall()
    assert schema.applied_names(created) == schema.applied_names(migrated) \
        == schema.registered_names()
    assert schema.pending_names(created) == []


def test_a_failed_creation_leaves_no_half_schema(tmp_path, monkeypatch):
    broken = tmp_path / "schema.sql"
    broken.write_text('CREATE TABLE "runs" ("id" INTEGER PRIMARY KEY);\nNOT SQL;\n')
    monkeypatch.setattr(schema, "SNAPSHOT", broken)
    conn = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        schema.create(conn)
    assert conn.execute("select count(*) from sqlite_master").fetchone()[0] == 0


def test_a_tenants_latest_run_is_found_without_sorting_its_history(tmp_path):
    # Status asks this three times per tenant: sorting a year of nights for each answer
    # made `bkp status` over a fleet take seconds.
    catalog = Catalog(tmp_path / "catalog.db")
    for day in range(1, 28):  # the last one (27) fails
        run = catalog.open_run("acme", "backup", operator="cron")
        catalog.close_run(run, "ok" if day % 3 else "failed")
    plans = []
    catalog.db.conn.set_trace_callback(plans.append)
    last, good = catalog.last_run("acme", "backup"), catalog.last_run("acme", "backup", "ok")
    catalog.db.conn.set_trace_callback(None)
    assert last["status"] == "failed" and good["status"] == "ok"
    for sql in [s for s in plans if s.startswith("select")]:
        plan = " ".join(row[3] for row in catalog.db.execute(f"explain query plan {sql}"))
        assert "idx_runs_tenant_kind_latest" in plan and "TEMP B-TREE" not in plan, plan


def test_a_host_without_a_catalog_reads_an_empty_one_with_the_whole_schema():
    empty = Catalog.empty()
    assert schema.pending_names(empty.db) == [] and schema.missing_tables(empty.db) == []
    assert empty.last_run("acme", "backup") is None
