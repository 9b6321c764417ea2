"""preStop hooks against real sockets: httpGet reaches the pod's port from inside its network
namespace (here the test's own), failures say why, and sleep waits."""

from __future__ import annotations

import http.server
import os
import threading
import time

import pytest

from moorage.v1 import objects_pb2 as pb
from nodeagent.pods import hooks

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="enters a network namespace: root")


@pytest.fixture
def server():
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            seen.append(self.path)
            self.send_response(200 if self.path == "/quit" else 500)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], seen
    httpd.shutdown()


def handler_for(port: int, path: str) -> tuple[pb.Container, pb.LifecycleHandler]:
    c = pb.Container(name="app", image="busybox")
    c.ports.add(name="http", container_port=port)
    h = c.lifecycle.pre_stop
    h.http_get.path = path
    h.http_get.port.str_val = "http"        # a named port, resolved as probes resolve it
    return c, h


def test_http_get_pre_stop_reaches_the_pod(server):
    port, seen = server
    c, h = handler_for(port, "/quit")
    ok, why = hooks.run_pre_stop(None, "cid", c, h, "/proc/self/ns/net", "", 5.0)
    assert (ok, why) == (True, "")
    assert seen == ["/quit"]


def test_a_failing_hook_says_why(server):
    port, _ = server
    c, h = handler_for(port, "/broken")
    ok, why = hooks.run_pre_stop(None, "cid", c, h, "/proc/self/ns/net", "", 5.0)
    assert not ok and "statuscode: 500" in why
    ok, why = hooks.run_pre_stop(None, "cid", c, h, "/proc/self/ns/net", "", 0)
    assert not ok and "no time left" in why


def test_sleep_hook_waits_at_most_the_time_left():
    c = pb.Container(name="app", image="busybox")
    c.lifecycle.pre_stop.sleep.seconds = 30
    began = time.monotonic()
    ok, _ = hooks.run_pre_stop(None, "cid", c, c.lifecycle.pre_stop, "", "", 0.3)
    assert ok and time.monotonic() - began < 5
