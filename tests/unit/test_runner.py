"""The runner: timeouts kill the whole process group, secrets are redacted."""

import os
import time
from pathlib import Path

from bkp import runner


def test_timeout_kills_child_and_grandchild(tmp_path):
    marker = tmp_path / "grandchild.pid"
    done = runner.run(["sh", "-c", f"sleep 300 & echo $! > {marker}; wait"], timeout=1)
    assert done.timed_out and not done.ok
    pid = int(marker.read_text())
    time.sleep(0.2)
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"  # gone, or a zombie


def test_stderr_tail_is_redacted_and_bounded():
    script = "for i in $(seq 1 100); do echo line$i >&2; done; echo 'pw=sekrit-value' >&2; exit 3"
    done = runner.run(["sh", "-c", script], secrets=["sekrit-value"])
    assert done.returncode == 3
    assert "sekrit-value" not in done.stderr_tail and "pw=***" in done.stderr_tail
    lines = done.stderr_tail.splitlines()
    assert len(lines) == runner.HEAD_LINES + 1 + runner.TAIL_LINES
    # The first lines carry restic's message, before any stack trace: they are kept.
    assert lines[0] == "line1" and lines[runner.HEAD_LINES] == "..."


def test_stop_when_ends_a_child_that_retries_a_hopeless_cause():
    script = "echo 'Save(<lock/ab>) returned error: read-only file system' >&2; sleep 300"
    done = runner.run(["sh", "-c", script],
                      stop_when=lambda line: "read-only" if "read-only" in line else None)
    assert done.stopped == "read-only" and not done.ok
    assert done.returncode in (-15, -9)  # killed, not a sleep that ended by itself


def test_secret_env_values_are_redacted_without_being_listed():
    done = runner.run(["sh", "-c", "echo $RESTIC_PASSWORD >&2; exit 1"],
                      env={"RESTIC_PASSWORD": "hunter2hunter2"})
    assert "hunter2hunter2" not in done.stderr_tail


def test_inherited_restic_variables_are_dropped():
    os.environ["RESTIC_REPOSITORY"] = "/somewhere/else"
    try:
        done = runner.run(["sh", "-c", "echo ${RESTIC_REPOSITORY:-unset}"],
                          drop_env_prefixes=("RESTIC_",))
    finally:
        del os.environ["RESTIC_REPOSITORY"]
    assert done.stdout.strip() == "unset"


def test_stdout_lines_are_streamed():
    seen = []
    runner.run(["sh", "-c", "echo a; echo b"], on_stdout_line=seen.append)
    assert seen == ["a", "b"]


def test_a_child_runs_as_another_user_with_only_its_group(tmp_path):
    done = runner.run(["id", "-u"], user="nobody")
    assert done.ok and done.stdout.strip() == "65534"
    groups = runner.run(["id", "-G"], user="nobody").stdout.split()
    assert "0" not in groups  # root's groups are not kept


def test_stdin_path_is_opened_by_bkp_not_by_the_child(tmp_path):
    secret = tmp_path / "dump"  # under a 0700 pytest directory nobody cannot enter
    secret.write_bytes(b"rows\n")
    secret.chmod(0o600)
    done = runner.run(["cat"], user="nobody", stdin_path=secret)
    assert done.ok and done.stdout == "rows\n"


def test_a_service_logs_to_a_file_and_dies_with_bkp_even_as_another_user(tmp_path):
    log = tmp_path / "service.log"
    script = (f"from bkp import runner; s = runner.start(['sh', '-c', 'echo up; exec sleep 300'],"
              f" log_file=__import__('pathlib').Path({str(log)!r}), user='nobody');"
              f"print(s.pid, flush=True); import time; time.sleep(300)")
    import subprocess
    import sys

    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(owner.stdout.readline())
    deadline = time.monotonic() + 10
    while "up" not in log.read_text():  # its output reached the file: it runs as the service
        assert time.monotonic() < deadline, "the service wrote nothing to its log"
        time.sleep(0.05)
    owner.kill()
    owner.wait()

    def alive() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while alive():
        assert time.monotonic() < deadline, "the service outlived its SIGKILLed owner"
        time.sleep(0.05)


def test_a_service_is_stopped_with_its_process_group(tmp_path):
    service = runner.start(["sh", "-c", "sleep 300 & wait"], log_file=tmp_path / "log")
    assert service.running()
    service.stop(grace=2)
    assert not service.running()
