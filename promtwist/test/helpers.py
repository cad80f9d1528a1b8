"""
Small helpers several test modules share.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.task import LoopingCall

MiB = 1024 * 1024


def rss() -> int:
    """
    This process's resident memory in bytes, for the attack tests' bounds
    on what an attacker can make the proxy hold.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class UnreadingPeer:
    """
    A peer that never reads what it is sent: a raw socket to 127.0.0.1 with
    a tiny receive buffer, fed C{greeting} and then C{frames} over and over
    (up to C{limit} bytes) as fast as the kernel takes them, so that what
    it has not sent yet is buffered nowhere in this process and only the
    server's memory is measured.

    @ivar sent: bytes the kernel took so far.
    @ivar reset: whether the server closed the connection.
    """

    def __init__(self, port: int, greeting: bytes, frames: bytes, limit: int = 256 * MiB) -> None:
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Loopback: connecting and a few hundred bytes never block.
        self.socket.connect(("127.0.0.1", port))
        self.socket.sendall(greeting)
        self.socket.setblocking(False)
        self.frames = frames
        self.limit = limit
        self.sent = 0
        self.reset = False
        self._offset = 0
        self._feeding = LoopingCall(self._feed)
        self._feeding.start(0.01)

    def _feed(self) -> None:
        while self.sent < self.limit:
            try:
                n = self.socket.send(self.frames[self._offset :])
            except BlockingIOError:
                return
            except OSError:
                self.reset = True
                break
            self.sent += n
            self._offset = (self._offset + n) % len(self.frames)
        self._feeding.stop()

    def close(self) -> None:
        if self._feeding.running:
            self._feeding.stop()
        self.socket.close()


def unsent(transport: Any) -> int:
    """
    What a TCP transport holds in user space for its peer to read.
    """
    held: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return held
