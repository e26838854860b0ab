"""Real transports for simulated instruments: a threaded TCP server on loopback and a pseudo-terminal.

Both deliver received lines to a device's `on_line(line, link)` and give it a `Link` to write bytes
back; a device may write at any time (MethodSCRIPT streams packets while a script runs)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import tty
from collections.abc import Callable


class Link:
    """One connection to the device: write bytes, or drop the connection."""

    def __init__(self, write: Callable[[bytes], None], drop: Callable[[], None], name: str) -> None:
        self._write = write
        self._drop = drop
        self.name = name
        self.lock = threading.Lock()
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        with self.lock:
            try:
                self._write(data)
            except OSError:
                self.closed = True

    def drop(self) -> None:
        self.closed = True
        self._drop()


LineHandler = Callable[[str, Link], None]
log = logging.getLogger(__name__)


def _deliver(on_line: LineHandler, line: str, link: Link) -> None:
    """Hand a line to the device; a device bug is logged, never kills the transport."""
    try:
        on_line(line, link)
    except Exception:  # noqa: BLE001
        log.exception("simulated instrument failed on %r", line)


def _split_lines(buffer: bytearray, chunk: bytes, terminator: bytes = b"\n") -> list[str]:
    """Complete lines (`terminator`-ended, a trailing \r stripped) taken out of `buffer` + `chunk`."""
    buffer.extend(chunk)
    lines = []
    while (i := buffer.find(terminator)) >= 0:
        lines.append(bytes(buffer[:i]).decode("ascii", "replace").rstrip("\r"))
        del buffer[:i + 1]
    return lines


class TcpServer:
    """A loopback TCP server, one thread per connection; `port=0` picks a free port."""

    def __init__(self, on_line: LineHandler, port: int = 0, host: str = "127.0.0.1", terminator: bytes = b"\n",
                 on_connect: Callable[[Link], None] | None = None) -> None:
        self.on_line = on_line
        self.on_connect = on_connect
        self.terminator = terminator
        self._sock = socket.create_server((host, port), reuse_port=False)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TcpServer:
        t = threading.Thread(target=self._accept, name=f"sim-tcp-{self.port}", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        def drop() -> None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

        link = Link(conn.sendall, drop, f"tcp://{self.address}")
        if self.on_connect:
            self.on_connect(link)
        buffer = bytearray()
        conn.settimeout(0.2)
        try:
            while not self._stop.is_set() and not link.closed:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if hasattr(socket, "TCP_QUICKACK"):  # answer small writes at once (no delayed ACK)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                if not chunk:
                    break
                for line in _split_lines(buffer, chunk, self.terminator):
                    _deliver(self.on_line, line, link)
        except OSError:
            pass
        finally:
            link.closed = True
            self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        for c in list(self._conns):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=2)


class PtyDevice:
    """A pseudo-terminal: the device owns the master, a driver opens `path` (/dev/pts/N) as a serial
    port. Raw mode (no echo, no newline translation); the master stays referenced for the device's life."""

    def __init__(self, on_line: LineHandler, terminator: bytes = b"\n") -> None:
        self.on_line = on_line
        self.terminator = terminator
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.link = Link(self._write, lambda: None, self.path)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def start(self) -> PtyDevice:
        self._thread = threading.Thread(target=self._serve, name=f"sim-pty-{self.path}", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        buffer = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            for line in _split_lines(buffer, chunk, self.terminator):
                _deliver(self.on_line, line, self.link)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
