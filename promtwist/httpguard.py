# -*- test-case-name: promtwist.test.test_webguard,promtwist.test.test_httpserver -*-
"""
The defences every HTTP port of promtwist shares, whichever server speaks
HTTP on it: the allow-list of client networks, with its rate-limited
refusal log, and the refusals of a request head that is too large or too
slow, or of a request body, each with its status and one-line reason.

L{promtwist.webguard} (twisted.web, for the admin and metrics ports) and
L{promtwist.proxy.httpserver} (the scrape port's own server) both use
these, so that the ports refuse the same things in the same words.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IAddress, IReactorTime, ITransport
from twisted.logger import Logger

from promtwist.addresses import normalNetworks, peerAddress
from promtwist.logs import clip, observer

# A refused address is logged at most this often, so a scanner cannot fill
# the log; and at most this many addresses are remembered for that, so a
# scan from many addresses cannot fill memory.
REFUSAL_LOG_INTERVAL = 60.0
REMEMBERED_REFUSALS = 1024
# The entry of an allowed-networks list that admits clients of a unix-socket
# listener, which have no IP address to match.
UNIX_PEERS = "unix"

# Seconds a refused or timed-out connection may take to close before it is
# aborted: a client that stops reading could hold the close up forever.
# Twisted's HTTPChannel.abortTimeout.
ABORT_TIMEOUT = 15.0

_log = Logger(observer=observer)


@dataclass(frozen=True)
class Refusal:
    """
    A request refused before it reaches a resource: the connection gets
    C{status} with a one-line C{reason}, then closes.
    """

    status: int
    phrase: bytes
    reason: str

    def send(self, transport: ITransport) -> None:
        """
        Write the answer to C{transport}, and log the refusal at debug
        level; closing is the server's business.
        """
        _log.debug(
            "{peer}: {code} {reason}",
            peer=str(transport.getPeer()),
            code=self.status,
            reason=self.reason,
        )
        transport.write(self.response())

    def response(self) -> bytes:
        """
        The whole HTTP/1.1 answer, which closes the connection.
        """
        body = self.reason.encode("utf-8") + b"\n"
        return (
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n"
            b"\r\n%s" % (self.status, self.phrase, len(body), body)
        )


def headTooLarge(atRequestLine: bool, maxHeaderBytes: int) -> Refusal:
    """
    A head over C{maxHeaderBytes}: 414 when its request line alone passes
    the limit, 431 otherwise.
    """
    if atRequestLine:
        return Refusal(414, b"URI Too Long", f"request line longer than {maxHeaderBytes} bytes")
    return Refusal(
        431,
        b"Request Header Fields Too Large",
        f"request line and headers longer than {maxHeaderBytes} bytes",
    )


def headTimedOut(headerTimeout: float) -> Refusal:
    """
    A head not complete C{headerTimeout} seconds after it started.
    """
    return Refusal(
        408,
        b"Request Timeout",
        f"request headers not complete within {headerTimeout:g} seconds",
    )


def bodyRefused(maxBodyBytes: int) -> Refusal:
    """
    A body that does not declare its length, or declares more than
    C{maxBodyBytes}.
    """
    return Refusal(
        413,
        b"Content Too Large",
        f"request bodies must declare a length of at most {maxBodyBytes} bytes"
        if maxBodyBytes
        else "this port takes no request bodies",
    )


class AllowedNetworks:
    """
    The networks clients may connect from, checked before a byte is read.
    A refusal is logged at most once a minute per address.

    A client of a unix-socket listener has no IP address: a list that
    names networks admits it only when it also has the entry C{unix}
    (L{UNIX_PEERS}), so that moving a guarded port to a socket file opens
    it to nobody the list did not name.

    @ivar networks: the IP networks.
    @ivar unixPeers: whether clients of a unix socket are admitted.
    @ivar open: whether the list is empty, admitting everyone.
    """

    def __init__(self, networks: Sequence[str], clock: IReactorTime) -> None:
        """
        @param networks: CIDR networks (C{10.0.0.0/8}, C{::1},
            C{::ffff:10.0.0.0/104} meaning C{10.0.0.0/8}), and C{unix} for
            unix-socket clients.
        @raise ValueError: if a network is not valid.
        """
        self.open = not networks
        self.unixPeers = UNIX_PEERS in networks
        # In normal form, as clients are compared (promtwist.addresses).
        self.networks = tuple(
            normal
            for network in networks
            if network != UNIX_PEERS
            for normal in normalNetworks(network)
        )
        self._clock = clock
        # Address → when its refusal was last logged, oldest first.
        self._refusalsLogged: OrderedDict[str, float] = OrderedDict()

    def admits(self, address: IAddress | None) -> bool:
        """
        Whether a client at C{address} may connect; a refusal is logged.
        """
        if self.open:
            return True
        if isinstance(address, UNIXAddress):
            if self.unixPeers:
                return True
            self._logRefusal("a unix-socket client (allow them with the entry 'unix')")
            return False
        ip = peerAddress(address)
        if ip is not None and any(ip in network for network in self.networks):
            return True
        self._logRefusal(str(ip) if ip is not None else clip(str(address)))
        return False

    def _logRefusal(self, host: str) -> None:
        now = self._clock.seconds()
        logged = self._refusalsLogged
        while logged and next(iter(logged.values())) <= now - REFUSAL_LOG_INTERVAL:
            logged.popitem(last=False)
        if host in logged:
            return
        if len(logged) >= REMEMBERED_REFUSALS:
            logged.popitem(last=False)
        logged[host] = now
        _log.info(
            "refused a connection from {host}: not in the allowed networks"
            " (logged at most once a minute per address)",
            host=host,
        )
