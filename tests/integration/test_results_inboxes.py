"""The results inboxes as the pods and the gatherer use them (bkp.destinations.inbox),
against real servers: a shared directory, a directory on the real sshd, a moto bucket. Each
takes a result whole or not at all, replaces a pod's kept/ record, lists results only, and
reads at most one byte more than a result may have; the directories refuse what is not a
plain file without opening it. The sftp inbox works through one session until closed, and
a server that does not hold the pinned host key gets nothing."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from bkp.destinations.inbox import MAX_RESULT_BYTES, NotAResult, open_inbox
from bkp.errors import OperationError, SafetyError
from bkp.policy import _build_destination

pytestmark = pytest.mark.integration

RESULT = "20261124T221503123456Z-kliniek-a-backup-0123456789ab.json"


def sftp_place(sshd, folder: Path, **values) -> dict:
    return {"type": "sftp", "country": "NL", "host": sshd.host, "port": sshd.port,
            "user": sshd.user, "path": str(folder), "host_key": sshd.host_key,
            "identity_file": str(sshd.identity_file), **values}


@pytest.fixture(params=["local", "sftp", "s3"])
def inbox(request, tmp_path):
    """(an open inbox, its folder on this machine or None for a bucket)."""
    folder = tmp_path / "srv" / "inbox"  # not there yet: the first put makes it
    if request.param == "local":
        place = {"type": "local", "country": "NL", "path": str(folder)}
    elif request.param == "sftp":
        place = sftp_place(request.getfixturevalue("sshd"), folder)
    else:
        s3 = request.getfixturevalue("s3")
        bucket = f"inbox-{uuid.uuid4().hex[:16]}"
        s3.create_bucket(bucket, "eu-central-1")
        place = {"type": "s3", "country": "DE", "endpoint": s3.endpoint, "bucket": bucket,
                 "region": "eu-central-1", "prefix": "results",
                 "credentials_file": str(s3.credentials_file)}
        folder = None
    with open_inbox(_build_destination(place)) as opened:
        yield opened, folder


def test_a_result_and_a_kept_record_go_in_whole_and_only_results_are_listed(inbox):
    box, folder = inbox
    assert box.names() == []  # nothing written yet, not even the folder
    box.put(RESULT, b'{"a result": 1}')
    box.put("kept/kliniek-a.json", b"night 1")
    box.put("kept/kliniek-a.json", b"night 2")  # tomorrow's pod replaces its record
    assert box.names() == [RESULT]
    assert box.get(RESULT) == b'{"a result": 1}'
    assert box.get("kept/kliniek-a.json") == b"night 2"
    with pytest.raises(OperationError):
        box.get("kept/kliniek-b.json")
    if folder is not None:
        assert sorted(p.name for p in folder.rglob("*")) == sorted(
            [RESULT, "kept", "kliniek-a.json"])  # no temporary left behind


def test_a_result_too_large_is_read_only_one_byte_past_the_limit(inbox):
    box, _ = inbox
    box.put(RESULT, b"x" * (MAX_RESULT_BYTES + 4096))
    assert len(box.get(RESULT)) == MAX_RESULT_BYTES + 1


@pytest.fixture(params=["local", "sftp"])
def folder_inbox(request, tmp_path):
    folder = tmp_path / "srv" / "inbox"
    folder.mkdir(parents=True)
    place = ({"type": "local", "country": "NL", "path": str(folder)}
             if request.param == "local"
             else sftp_place(request.getfixturevalue("sshd"), folder))
    with open_inbox(_build_destination(place)) as opened:
        yield opened, folder


def test_a_directory_s_temporaries_are_never_listed(folder_inbox):
    """A result being written is a dot-name until it is whole."""
    box, folder = folder_inbox
    (folder / f".{RESULT}.7.part").write_bytes(b"half")
    box.put(RESULT, b"whole")
    assert box.names() == [RESULT]


def test_what_is_not_a_plain_file_is_never_opened_as_a_result(folder_inbox, tmp_path):
    """Anyone who can write to the inbox leaves a link to a file of the gatherer's (or the
    server's) own, a named pipe (opening it waits for a writer forever) and a folder, each
    named as a result: each is refused as no result, the link never followed."""
    box, folder = folder_inbox
    secret = tmp_path / "host-secret.txt"
    secret.write_text("BSN 123456782\n")
    link, pipe, inner = (RESULT.replace("0123456789ab", f"{n:012x}") for n in (1, 2, 3))
    (folder / link).symlink_to(secret)
    os.mkfifo(folder / pipe)
    (folder / inner).mkdir()
    assert box.names() == sorted([link, pipe])  # a folder is no object
    with pytest.raises(NotAResult, match="is a link, not a result"):
        box.get(link)
    with pytest.raises(NotAResult, match="not a plain file"):
        box.get(pipe)
    with pytest.raises(NotAResult, match="not a plain file"):
        box.get(inner)
    # a link to a folder is a link too, and not listed as a folder
    (folder / RESULT).symlink_to(tmp_path)
    assert RESULT in box.names()
    with pytest.raises(NotAResult, match="is a link"):
        box.get(RESULT)


def sftp_inbox(sshd, folder: Path, **values):
    return open_inbox(_build_destination(sftp_place(sshd, folder, **values)))


def test_the_sftp_inbox_keeps_its_results_private_and_works_through_one_session(sshd,
                                                                              tmp_path):
    folder = tmp_path / "srv" / "inbox"
    with sftp_inbox(sshd, folder) as box:
        box.put(RESULT, b"whole")
        session = box._session[0]
        box.put("kept/kliniek-a.json", b"record")
        assert box.names() == [RESULT] and box.get(RESULT) == b"whole"
        assert box._session[0] is session and session.is_active()
    assert not session.is_active()  # closed with the inbox
    for made in (folder, folder / "kept"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700
    for written in (folder / RESULT, folder / "kept" / "kliniek-a.json"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_an_sftp_inbox_whose_server_holds_another_key_gets_nothing(sshd, tmp_path):
    folder = tmp_path / "srv" / "inbox"
    with sftp_inbox(sshd, folder, host_key=sshd.other_host_key) as box:
        with pytest.raises(SafetyError) as refused:
            box.put(RESULT, b"whole")
        for call in (box.names, lambda: box.get(RESULT)):
            with pytest.raises(SafetyError):  # said again
                call()
    said = str(refused.value)
    assert said.startswith(f"cannot use the results inbox sftp:{sshd.user}@")
    assert "the connection was refused" in said and "results.inbox.host_key" in said
    assert not (tmp_path / "srv").exists()


def test_an_sftp_inbox_that_cannot_be_reached_says_which_inbox(sshd, tmp_path):
    from tests.conftest import free_port

    with (sftp_inbox(sshd, tmp_path / "inbox", port=free_port()) as box,
          pytest.raises(OperationError, match="cannot use the results inbox sftp:") as e):
        box.names()
    assert "cannot reach" in str(e.value) and "Traceback" not in str(e.value)


def test_an_sftp_inbox_on_a_file_says_so(sshd, tmp_path):
    (tmp_path / "srv").write_text("not a folder")
    with (sftp_inbox(sshd, tmp_path / "srv" / "inbox") as box,
          pytest.raises(OperationError, match=r"cannot write .* to the results inbox sftp:")):
        box.put(RESULT, b"whole")


def test_an_sftp_inbox_that_failed_to_connect_is_not_tried_again_for_every_result(sshd,
                                                                               tmp_path):
    """A server that hangs up at once: the inbox says so, and says it again for the rest of
    the night's objects without a connection each (each could wait CONNECT_TIMEOUT)."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def hang_up():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            accepted.append(client)
            client.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        with sftp_inbox(sshd, tmp_path / "inbox", port=listener.getsockname()[1]) as box:
            for call in (box.names, lambda: box.get(RESULT), lambda: box.put(RESULT, b"x")):
                with pytest.raises(OperationError, match="SSH handshake with"):
                    call()
    finally:
        listener.close()
    assert len(accepted) == 1
