"""A loopback TCP proxy that a test can cut and restore, to take a server (Postgres)
away from a worker process and give it back, without touching the server itself."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``cut()`` drops every connection and
    refuses new ones until ``restore()``; ``drop(refuse=n)`` drops every connection and
    closes the next ``n`` as they arrive."""

    target: tuple[str, int]
    port: int = 0
    _listener: socket.socket | None = None
    _conns: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _refuse: int = 0

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if listener is not self._listener:  # cut while this accept was under way
                client.close()
                return
            with self._lock:
                refuse, self._refuse = self._refuse > 0, max(0, self._refuse - 1)
            if refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def drop(self, refuse: int = 0) -> None:
        """Drop every open connection, and close the next ``refuse`` ones on arrival."""
        with self._lock:
            conns, self._conns = self._conns, []
            self._refuse = refuse
        self._close(conns)

    def cut(self) -> None:
        """Drop every open connection and stop listening."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # close() alone does not wake a thread blocked in accept() on Linux: the
            # socket would go on taking connections. shutdown() does.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        self._close(conns)

    @staticmethod
    def _close(conns: list[socket.socket]) -> None:
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def restore(self) -> None:
        """Listen again on the same port."""
        self.start()
