"""A TCP proxy the tests can cut and restore, so a database "goes down" for the gateway
without stopping the shared server."""

from __future__ import annotations

import socket
import threading


class TCPProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._relaying = threading.Event()
        self._relaying.set()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()

    def start(self) -> "TCPProxy":
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()
        return self

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._relaying.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Refuse new connections and reset the open ones: the database is 'down'."""
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(), so the port is really free
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._conns:
                try:
                    # shutdown() first: it wakes the pipe thread blocked in recv() on this
                    # socket; a bare close() from another thread would leave the kernel
                    # socket open and the peer waiting forever.
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass
            self._conns.clear()

    def restore(self) -> None:
        self.start()

    def freeze(self) -> None:
        """Keep every connection open (and accept new ones) but relay nothing: a database
        that stops answering without closing anything, which only a client-side deadline
        notices."""
        self._relaying.clear()

    def thaw(self) -> None:
        """Relay again, what was held first."""
        self._relaying.set()
