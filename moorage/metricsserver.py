"""A /metrics HTTP server for the control plane and the agent.

prometheus_client's start_http_server binds through http.server.HTTPServer, whose server_bind
reverse-resolves the listen address (socket.getfqdn). On a host, or a lab's network
namespace, whose resolvers cannot be reached that takes the resolver's whole timeout (10 s
here) before anything is served, which delayed every agent's start (and so its node's
heartbeats) by as much. This server binds without the lookup."""

from __future__ import annotations

import socket
import socketserver
import threading
from http.server import ThreadingHTTPServer

from prometheus_client import REGISTRY
from prometheus_client.exposition import MetricsHandler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)   # not HTTPServer's: no getfqdn
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port


class _V6Server(_Server):
    address_family = socket.AF_INET6


def start(port: int, addr: str = "0.0.0.0", registry=REGISTRY
          ) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serves `registry` on addr:port in a daemon thread; OSError if it cannot listen."""
    server_class = _V6Server if ":" in addr else _Server
    server = server_class((addr, port), MetricsHandler.factory(registry))
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread
