"""A TCP proxy for replication tests: cut connections (also mid-frame), flip bytes.

The proxy forwards primary -> standby ("down") and standby -> primary ("up")
traffic through two threads per connection.  Faults:

* ``cut_after(n)``: after ``n`` more downstream bytes, forward only part of
  the buffer in hand and close both sides (a drop in the middle of a frame).
* ``flip_at(n)``: XOR one byte 0xFF at downstream byte ``n`` from now.
* ``cut_now()``: close every live connection.
* ``block()`` / ``unblock()``: refuse (close at once) new connections.
"""
import socket
import threading

__all__ = ["FaultProxy"]


class FaultProxy(object):
    def __init__(self, target):
        self.target = tuple(target)
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.server.settimeout(0.1)
        self.address = self.server.getsockname()
        self.lock = threading.Lock()
        self.down_bytes = 0
        self._cut_at = None
        self._flip_at = None
        self.flipped = 0
        self.cuts = 0
        self.connections = 0
        self.blocked = False
        self._live = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def cut_after(self, n):
        with self.lock:
            self._cut_at = self.down_bytes + n

    def flip_at(self, n):
        with self.lock:
            self._flip_at = self.down_bytes + n

    def cut_now(self):
        with self.lock:
            live, self._live = self._live, []
            self.cuts += 1
        for a, b in live:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def block(self):
        self.blocked = True
        self.cut_now()

    def unblock(self):
        self.blocked = False

    def close(self):
        self._stop.set()
        self.cut_now()
        self._thread.join(2)
        self.server.close()

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.blocked:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self.lock:
                self._live.append((client, upstream))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, down):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                cut = False
                if down:
                    with self.lock:
                        start = self.down_bytes
                        end = start + len(data)
                        if self._flip_at is not None and start <= self._flip_at < end:
                            buf = bytearray(data)
                            buf[self._flip_at - start] ^= 0xFF
                            data = bytes(buf)
                            self._flip_at = None
                            self.flipped += 1
                        if self._cut_at is not None and self._cut_at < end:
                            data = data[:max(0, self._cut_at - start)]
                            self._cut_at = None
                            cut = True
                        self.down_bytes += len(data)
                if data:
                    dst.sendall(data)
                if cut:
                    self.cut_now()
                    break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
