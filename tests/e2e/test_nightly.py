"""Unattended nights through the real CLI: due runs, the run lock, SIGKILL recovery,
timeouts, status, monitoring and the audit trail."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from tests.helpers import big_file, popen_bkp, restic_locks, restic_running_for, wait_until

pytestmark = pytest.mark.e2e


def test_run_twice_does_the_work_once(bkp_env):
    bkp_env.local_tenant("night-a")
    bkp_env.local_tenant("night-b")
    bkp_env.bkp_json("init", "--all")
    first, _ = bkp_env.bkp_json("run")
    assert sorted(r["tenant"] for r in first["runs"]) == ["night-a", "night-b"]
    assert all(r["status"] == "ok" for r in first["runs"])
    second, _ = bkp_env.bkp_json("run")
    assert second["runs"] == []
    assert {(d["tenant"], d["kind"]) for d in second["not_due"]} >= {
        ("night-a", "backup"), ("night-b", "backup")}
    snaps = json.loads(bkp_env.restic("night-a", "snapshots", "--json").stdout)
    assert len(snaps) == 1


def test_overlapping_run_exits_1_at_once_with_the_holder(bkp_env):
    bkp_env.local_tenant("slow")
    big_file(bkp_env.root / "data" / "slow" / "big.bin", 300)
    bkp_env.bkp_json("init", "slow")
    first = popen_bkp(bkp_env, "run")
    lock = bkp_env.home / "locks" / "run.lock"
    wait_until(lambda: lock.exists() and str(first.pid) in lock.read_text(), what="run lock")
    second = bkp_env.bkp("run")
    still_working = first.poll() is None  # the second did not queue behind the first
    first.communicate(timeout=300)
    assert second.returncode == 1
    assert f"another run (pid {first.pid}, started" in second.stderr
    assert still_working
    assert first.returncode == 0


def test_sigkill_mid_backup_then_next_run_is_green(bkp_env):
    bkp_env.local_tenant("crashy")
    big_file(bkp_env.root / "data" / "crashy" / "big.bin", 400)
    bkp_env.bkp_json("init", "crashy")
    repo = bkp_env.tenants["crashy"]["destination"]["path"]
    victim = popen_bkp(bkp_env, "backup", "crashy")
    wait_until(lambda: restic_running_for(repo), what="restic to start")
    wait_until(lambda: any((Path(repo) / "data").rglob("*")) and restic_locks(repo),
               what="restic to write")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    wait_until(lambda: not restic_running_for(repo), timeout=30, what="restic to die with bkp")
    assert restic_locks(repo)  # restic's lock was left behind

    status, _ = bkp_env.bkp_json("status", "crashy")
    last = status["tenants"][0]["last_backup"]
    assert last["status"] == "interrupted"
    assert status["tenants"][0]["state"] == "failed" and not status["tenants"][0]["rpo_ok"]

    night, code = bkp_env.bkp_json("run")
    assert code == 0 and night["runs"][0]["status"] == "ok", night
    check = bkp_env.restic("crashy", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert not restic_locks(repo)  # the dead process's lock was removed


class StallRestic:
    """An HTTP proxy in front of the S3 server: bkp's own preflight (boto3) passes, every
    request from restic (minio-go) is accepted and never answered: a hung destination."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stalled = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                return
            head += chunk
        if b"minio-go" in head.lower():
            self.stalled += 1
            self.held.append(client)
            return
        upstream = socket.create_connection(("127.0.0.1", self.target))
        upstream.sendall(head)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self):
        self.listener.close()
        for sock in self.held:
            sock.close()


def test_hung_destination_hits_the_policy_timeout(bkp_env, s3):
    bkp_env.s3_tenant("hangs", s3)
    bkp_env.bkp_json("init", "hangs")
    proxy = StallRestic(int(s3.endpoint.rsplit(":", 1)[1]))
    try:
        dest = dict(bkp_env.tenants["hangs"]["destination"],
                    endpoint=f"http://127.0.0.1:{proxy.port}")
        bkp_env.write_policy("hangs", dest, timeout_minutes=1)
        done = bkp_env.bkp("backup", "hangs", "--json", timeout=240)
    finally:
        proxy.close()
    assert done.returncode == 1, done.stdout + done.stderr
    run = json.loads(done.stdout)["runs"][0]
    assert run["status"] == "failed" and "did not finish within" in run["error"], run
    assert proxy.stalled >= 1  # restic really was the one hanging
    assert not restic_running_for(dest["endpoint"])


def test_healthcheck_pings_and_prometheus_textfile(bkp_env, ping_server):
    base, pings = ping_server
    bkp_env.local_tenant("pinged", monitoring={"healthcheck_url": f"{base}/ping/good"})
    bkp_env.local_tenant("broken", monitoring={"healthcheck_url": f"{base}/ping/bad"})
    bkp_env.local_tenant("deaf", monitoring={"healthcheck_url": "http://127.0.0.1:9/ping"})
    bkp_env.bkp_json("init", "--all")
    import shutil
    shutil.rmtree(bkp_env.root / "data" / "broken")
    (bkp_env.policies / "garbled.yaml").write_text("tenant: garbled\nsources: [\n")
    textfile = bkp_env.root / "metrics" / "bkp.prom"
    report, _ = bkp_env.bkp_json("run", "--healthcheck-url", f"{base}/ping/all",
                                 "--prometheus-textfile", str(textfile), expect=3)
    status = {r["tenant"]: r["status"] for r in report["runs"]}
    # a deaf ping endpoint is harmless; an unreadable policy is a failure, not a silence
    assert status == {"pinged": "ok", "broken": "failed", "deaf": "ok", "garbled": "failed"}
    paths = [p for p, _ in pings]
    assert paths.index("/ping/good/start") < paths.index("/ping/good")
    assert "/ping/bad/start" in paths and "/ping/bad/fail" in paths
    # the body names the tenant, the status and the exit code: never the error's paths
    assert dict(pings)["/ping/bad/fail"] == "broken backup failed exit 1"
    assert paths[0] == "/ping/all/start" and paths[-1] == "/ping/all/fail"
    assert "garbled backup failed exit 3" in pings[-1][1].splitlines()
    assert "broken backup failed exit 1" in pings[-1][1].splitlines()
    assert not any("/" in body for _, body in pings)
    metrics = textfile.read_text()
    assert 'bkp_backup_last_ok{tenant="pinged"} 1' in metrics
    assert 'bkp_backup_last_ok{tenant="broken"} 0' in metrics
    assert 'bkp_backup_rpo_ok{tenant="broken"} 0' in metrics
    assert 'bkp_backup_last_success_timestamp_seconds{tenant="pinged"}' in metrics


def test_status_never_calls_a_failed_or_missing_backup_fine(bkp_env):
    bkp_env.local_tenant("flaky")
    bkp_env.local_tenant("never")
    bkp_env.bkp_json("init", "flaky")
    bkp_env.bkp_json("backup", "flaky")
    import shutil
    shutil.rmtree(bkp_env.root / "data" / "flaky")
    bkp_env.bkp_json("backup", "flaky", expect=1)
    status, _ = bkp_env.bkp_json("status")
    rows = {t["tenant"]: t for t in status["tenants"]}
    assert rows["flaky"]["last_backup"]["status"] == "failed"
    assert rows["flaky"]["state"] == "failed"
    assert rows["flaky"]["rpo_ok"]  # the older good backup is still within the RPO...
    assert rows["never"]["state"] == "never" and rows["never"]["rpo_ok"] is False
    human = bkp_env.bkp("status")
    line = next(ln for ln in human.stdout.splitlines() if ln.startswith("flaky"))
    assert "FAILED" in line  # ...but the operator sees the failure at a glance


def test_busy_tenant_is_refused_without_marking_it_failed(bkp_env):
    import fcntl

    bkp_env.local_tenant("busy")
    bkp_env.bkp_json("init", "busy")
    bkp_env.bkp_json("backup", "busy")
    lock = bkp_env.home / "locks" / "tenant-busy.lock"
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another bkp process is working
        done = bkp_env.bkp("backup", "busy", "--json")
    assert done.returncode == 1 and "holds the lock" in json.loads(done.stdout)["runs"][0]["error"]
    status, _ = bkp_env.bkp_json("status", "busy")
    assert status["tenants"][0]["state"] == "ok"  # the busy refusal is not a failed night
    events = bkp_env.bkp_json("audit", "log", "--tenant", "busy")[0]["events"]
    assert events[-1]["action"] == "backup" and events[-1]["outcome"] == "refused"


def test_a_killed_run_is_audited_when_found(bkp_env):
    bkp_env.local_tenant("found-dead")
    bkp_env.bkp_json("init", "found-dead")  # a command that acts creates the catalog
    db = sqlite3.connect(bkp_env.home / "catalog.db")
    db.execute("insert into runs (tenant, kind, status, started_at, host, pid, pid_start, "
               "operator) values ('found-dead', 'backup', 'running', "
               "'2026-01-01T02:00:00.000000Z', ?, 999999, 1, 'night-operator')",
               [socket.gethostname()])
    db.commit()
    # status shows it as what it is, and writes nothing...
    status, _ = bkp_env.bkp_json("status", "found-dead")
    assert status["tenants"][0]["last_backup"]["status"] == "interrupted"
    events = bkp_env.bkp_json("audit", "log", "--tenant", "found-dead")[0]["events"]
    assert [(e["action"], e["outcome"]) for e in events] == [("init", "initialised")]
    # ...the next command that acts records it, with its audit event.
    acting = bkp_env.bkp("init", "found-dead")
    assert acting.returncode == 0 and "interrupted" in acting.stderr
    events = bkp_env.bkp_json("audit", "log", "--tenant", "found-dead")[0]["events"]
    assert [(e["action"], e["outcome"]) for e in events][1] == ("backup", "interrupted")
    assert events[1]["details"]["started_by"] == "night-operator"


def test_audit_trail_records_actions_and_catches_tampering(bkp_env):
    bkp_env.local_tenant("audited")
    bkp_env.bkp_json("init", "audited")
    bkp_env.bkp_json("backup", "audited")
    log, _ = bkp_env.bkp_json("audit", "log", "--tenant", "audited")
    actions = [(e["action"], e["outcome"], e["operator"]) for e in log["events"]]
    assert actions == [("init", "initialised", "test-operator"),
                       ("policy.recorded", "ok", "test-operator"),
                       ("backup", "ok", "test-operator")]
    assert all(e["os_user"] and e["host"] and e["time"].endswith("Z") for e in log["events"])
    verified, _ = bkp_env.bkp_json("audit", "verify")
    assert verified["valid"] and verified["events"] == 3
    head, _ = bkp_env.bkp_json("audit", "head")

    db = sqlite3.connect(bkp_env.home / "catalog.db")
    db.execute("delete from audit_log where seq = (select max(seq) from audit_log)")
    db.commit()
    # a cut-off tail is still a chain, but the backup run it recorded has lost its event
    cut, _ = bkp_env.bkp_json("audit", "verify", expect=5)
    assert any("backup run 1 of audited" in p and "no event" in p for p in cut["problems"])
    anchored, _ = bkp_env.bkp_json("audit", "verify", "--anchor", head["head"], expect=5)
    assert not anchored["valid"] and anchored["anchor_found"] is False
    db.execute("update audit_log set operator = 'someone-else' where seq = 1")
    db.commit()
    broken = bkp_env.bkp("audit", "verify")
    assert broken.returncode == 5 and "BROKEN" in broken.stdout


def test_schedule_prints_cron_and_systemd_for_this_installation(bkp_env):
    cron = bkp_env.bkp("schedule")
    assert cron.returncode == 0
    line = next(ln for ln in cron.stdout.splitlines() if not ln.startswith("#"))
    assert f"BKP_HOME='{bkp_env.home}'" in line
    assert line.rstrip().endswith(">>'/var/log/bkp.log' 2>&1")
    assert "BKP_OPERATOR='scheduler'" in line  # scheduled runs name who acts
    exe = next(w for w in line.split() if w.startswith("'/") and w.endswith("/bkp'"))
    assert os.access(exe.strip("'"), os.X_OK)
    units = bkp_env.bkp("schedule", "--format", "systemd")
    assert "ProtectSystem=strict" in units.stdout and "[Timer]" in units.stdout
    assert "CapabilityBoundingSet=CAP_DAC_READ_SEARCH" in units.stdout


def test_schedule_files_with_a_ping_url_are_private(bkp_env):
    url = "https://hc.example.eu/ping/0d1f"
    printed = bkp_env.bkp("schedule", "--healthcheck-url", url)
    assert url in printed.stdout and "mode 0600" in printed.stderr
    cron = bkp_env.root / "cron.d" / "bkp"
    cron.parent.mkdir()
    assert bkp_env.bkp("schedule", "--healthcheck-url", url, "-o", str(cron)).returncode == 0
    assert stat.S_IMODE(cron.stat().st_mode) == 0o600 and url in cron.read_text()
    units = bkp_env.root / "units"
    assert bkp_env.bkp("schedule", "--format", "systemd", "-o", str(units)).returncode == 0
    assert {p.name for p in units.iterdir()} == {"bkp.service", "bkp.timer"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in units.iterdir())


def test_schedule_refuses_a_password_env_tenant_it_cannot_carry(bkp_env):
    bkp_env.local_tenant("envpass")
    policy = bkp_env.policies / "envpass.yaml"
    text = policy.read_text()
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("password_file"))
    policy.write_text(text + "\npassword_env: BKP_PW_ENVPASS\n")
    cron = bkp_env.bkp("schedule")
    assert cron.returncode == 3 and "BKP_PW_ENVPASS" in cron.stderr
    envfile = bkp_env.secrets / "bkp.env"
    units = bkp_env.bkp("schedule", "--format", "systemd", "--environment-file", str(envfile))
    assert units.returncode == 0 and f'EnvironmentFile="{envfile}"' in units.stdout
