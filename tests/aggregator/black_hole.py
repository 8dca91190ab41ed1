"""A TCP proxy on 127.0.0.1 in front of the test S3 server that can turn into a black hole: an
endpoint that accepts connections and never answers (an overloaded gateway, a load balancer
whose targets stopped answering, a firewall that drops the packets of open connections).

Until :meth:`BlackHoleProxy.hang` the bytes are passed through both ways; from then on new
connections are accepted and never read, and the open ones (a client's pooled keep-alive
connections) stop passing bytes: every request in flight or sent later waits for an answer
that never comes. Connections are held open, never reset: a reset would be an answer.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

_POLL = 0.1


class BlackHoleProxy:
    """Forwards TCP connections to ``127.0.0.1:target_port`` until :meth:`hang`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._hung = threading.Event()
        self._closed = threading.Event()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self.swallowed = 0
        """Connections accepted after :meth:`hang` (each one a request that got no answer)."""
        self._server = socket.create_server(("127.0.0.1", 0), backlog=128)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def hang(self) -> None:
        """From now on nothing is answered, on new connections and open ones alike."""
        self._hung.set()

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for conn in self._held:
                with contextlib.suppress(OSError):
                    conn.close()

    def _hold(self, conn: socket.socket) -> None:
        with self._lock:
            self._held.append(conn)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                conn, _ = self._server.accept()
                self._hold(conn)
                if self._hung.is_set():
                    self.swallowed += 1
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                self._hold(upstream)
                threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Pass bytes both ways until either side closes or the proxy hangs."""
        peer = {a: b, b: a}
        with contextlib.suppress(OSError):
            while not self._hung.is_set() and not self._closed.is_set():
                ready, _, _ = select.select([a, b], [], [], _POLL)
                if self._hung.is_set():
                    return  # held open, silent: the bytes read no further
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        with contextlib.suppress(OSError):
                            peer[sock].shutdown(socket.SHUT_WR)
                        return
                    peer[sock].sendall(data)
