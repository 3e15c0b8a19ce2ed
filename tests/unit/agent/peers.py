"""Real HTTP peers on this host for the agent's clients: one that answers every request alike and keeps
the connection alive, as the proxy did that answered for an unrouted Service address (issue 9)."""

from __future__ import annotations

import http.server
import threading
from typing import Any


class KeptAlive(http.server.BaseHTTPRequestHandler):
    """Answers every GET and POST with the class's ``status`` and ``body``, keeping the connection open."""

    protocol_version = "HTTP/1.1"
    status = 404
    body = b""
    requests = 0

    def _answer(self) -> None:
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Peer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    @property
    def requests(self) -> int:
        return int(self.RequestHandlerClass.requests)  # type: ignore[attr-defined]

    def stop_listening(self) -> None:
        """Take no new connection; those already open are still answered (the wrong peer stays reachable)."""
        self.shutdown()
        self.socket.close()


def serve(port: int, status: int, body: bytes = b"") -> Peer:
    handler = type("Answers", (KeptAlive,), {"status": status, "body": body, "requests": 0})
    peer = Peer(("127.0.0.1", port), handler)
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    return peer
