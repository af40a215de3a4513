"""Healthcheck pings: the transport rule of endpoints, and bodies without tenant data."""

from __future__ import annotations

import http.server
import threading
from typing import ClassVar

import pytest

from bkp.context import Outcome
from bkp.tenants import monitoring


class Recorder(http.server.BaseHTTPRequestHandler):
    pings: ClassVar[list] = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        Recorder.pings.append((self.path, self.rfile.read(length).decode()))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A ping endpoint listening on every address: reachable as loopback and as this host's
    own non-loopback address."""
    Recorder.pings = []
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], Recorder.pings
    httpd.shutdown()


def own_address() -> str:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only the route is looked up
        return probe.getsockname()[0]


def test_plain_http_to_a_remote_host_is_never_sent(server):
    port, pings = server
    address = own_address()
    assert not address.startswith("127."), "needs a non-loopback address to test"
    assert monitoring.ping(f"http://{address}:{port}/p", "fail", "acme backup failed") is False
    assert monitoring.ping(f"http://127.0.0.1:{port}/p", "fail", "x") is True
    assert [path for path, _ in pings] == ["/p/fail"]


FAILURE = Outcome("acme-zorg", 1, {
    "tenant": "acme-zorg", "status": "failed",
    "error": "restic backup failed: open /srv/tenants/acme-zorg/patients/jansen-bsn.pdf: "
             "permission denied"})
DRILL = Outcome("beta", 5, {"tenant": "beta", "status": "failed", "result": "failed",
                            "problems": [{"message": "/srv/b/x.txt differs"}]})
INVALID = Outcome("evil\n/etc/passwd", 3, {"tenant": "evil\n/etc/passwd", "status": "failed",
                                           "error": "/etc/bkp/policies/evil.yaml:3 bad"})


def test_a_ping_body_names_tenants_statuses_and_exit_codes_only():
    body = monitoring.ping_body(runs=[FAILURE, INVALID], drills=[DRILL])
    assert body.splitlines() == ["acme-zorg backup failed exit 1",
                                 "(invalid tenant id) backup failed exit 3",
                                 "beta drill failed exit 5"]
    assert "/" not in body


def test_a_successful_tenant_ping_says_ok():
    ok = Outcome("acme-zorg", 0, {"tenant": "acme-zorg", "status": "ok",
                                  "snapshot_id": "abcd1234"})
    assert monitoring.ping_body(runs=[ok]) == "acme-zorg backup ok exit 0"
