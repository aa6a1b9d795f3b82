"""A webhook receiver for dispatch tests that counts every delivery per send id and never dedupes,
like a provider that ignores Idempotency-Key: a duplicate sent is a duplicate counted."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class CountingReceiver:
    """An HTTP server on a free local port; each POST waits `delay_s`, then is counted and answered
    200 (the delivery happened when the request arrived: the count is taken before the wait)."""

    def __init__(self, delay_s: float = 0.04) -> None:
        self.delay_s = delay_s
        self.deliveries: Counter[str] = Counter()
        self.users: dict[str, str] = {}  # send id -> user id
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as providers speak

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver._count(body)
                time.sleep(receiver.delay_s)
                answer = json.dumps({"id": body["idempotency_key"]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _count(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.deliveries[body["idempotency_key"]] += 1
            self.users[body["idempotency_key"]] = body["user_id"]

    def total(self) -> int:
        with self._lock:
            return sum(self.deliveries.values())

    def duplicates(self) -> int:
        with self._lock:
            return sum(n - 1 for n in self.deliveries.values())

    def __enter__(self) -> CountingReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
