"""An HTTP proxy on 127.0.0.1 in front of the test S3 server that lets a test act between two
S3 requests (rewrite an object after one request was answered and before the next), answer
the requests for some keys with 503 SlowDown, as a throttled S3 prefix does, or with a 403
(``AccessDenied``, ``InvalidObjectState``), as S3 does for an object the caller may not read
(a KMS key) or that a lifecycle rule archived.

Requests are forwarded whole (the body read first), one upstream connection per request: slow,
but exact, and enough for the few small documents the tests read through it.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
#: An S3 error answer; ``{code}`` is filled in.
ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
    "<Message>refused by the test proxy</Message></Error>"
)
#: Headers not copied from the upstream answer (the proxy sets its own length, closes).
_HOP = frozenset({"transfer-encoding", "connection", "content-length"})


class S3HookProxy:
    """Forwards S3 requests to ``target_port``; see the module docstring."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.after: Callable[[str, str], None] | None = None
        """Called with (method, path) after a request was answered upstream and before its
        answer is sent on: what it does happens between this request and the next."""
        self.throttled: re.Pattern[str] | None = None
        """Requests whose path matches are answered 503 SlowDown, not forwarded."""
        self.refused: re.Pattern[str] | None = None
        """Requests whose path matches are answered 403 with :attr:`refused_code`."""
        self.refused_code = "AccessDenied"
        self.seen: Counter[str] = Counter()
        """``METHOD path`` of every request forwarded or throttled."""
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests_to(self, key_part: str) -> list[str]:
        """The methods of the requests seen whose path holds ``key_part``."""
        with self._lock:
            return sorted(k.split(" ", 1)[0] for k in self.seen.elements() if key_part in k)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                with proxy._lock:
                    proxy.seen[f"{self.command} {self.path}"] += 1
                body = self._body()
                if proxy.throttled is not None and proxy.throttled.search(self.path):
                    self._answer(503, "Slow Down", [("Content-Type", "application/xml")], SLOWDOWN)
                    return
                if proxy.refused is not None and proxy.refused.search(self.path):
                    error = ERROR_XML.format(code=proxy.refused_code).encode()
                    self._answer(403, "Forbidden", [("Content-Type", "application/xml")], error)
                    return
                status, reason, headers, data = self._forward(body)
                if proxy.after is not None:
                    proxy.after(self.command, self.path)
                self._answer(status, reason, headers, data)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    size = int(self.headers.get("Content-Length") or 0)
                    return self.rfile.read(size) if size else b""
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)

            def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"
                    }
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    kept = [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP]
                    if self.command == "HEAD":
                        kept.append(("Content-Length", answer.getheader("Content-Length") or "0"))
                    return answer.status, answer.reason, kept, data
                finally:
                    conn.close()

            def _answer(
                self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes
            ) -> None:
                self.send_response(status, reason)
                for key, value in headers:
                    self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
