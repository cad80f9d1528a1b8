"""
The scrape port's server on a L{StringTransport}, for tests of what answers
through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from promtwist.proxy.exchange import Exchange
from promtwist.proxy.httpserver import Handler, ScrapePortConnection, ScrapePortFactory

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "10.0.0.1", 8080)


def factory(handler: Handler, clock: Clock | None = None, **settings: Any) -> ScrapePortFactory:
    """
    A scrape port with the proxy's default limits unless C{settings} say
    otherwise.
    """
    limits: dict[str, Any] = {"maxHeaderBytes": 16384, "headerTimeout": 10, "idleTimeout": 45}
    limits.update(settings)
    return ScrapePortFactory(handler, clock=clock or Clock(), **limits)


def connect(
    site: ScrapePortFactory, peer: IPv4Address = PEER
) -> tuple[ScrapePortConnection, StringTransport]:
    connection = site.buildProtocol(peer)
    assert connection is not None
    transport = StringTransport(hostAddress=HOST, peerAddress=peer)
    connection.makeConnection(transport)
    return connection, transport


class Held:
    """
    A handler that keeps each exchange unanswered, for the test to answer.
    """

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def __call__(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)


def exchangeFor(request: bytes) -> tuple[Exchange, StringTransport]:
    """
    The exchange the server makes of C{request}, unanswered, and the
    transport its answer goes to.
    """
    held = Held()
    connection, transport = connect(factory(held))
    connection.dataReceived(request)
    (exchange,) = held.exchanges
    return exchange, transport


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    complete: bool
    head: bytes = b""

    def repeated(self, name: bytes) -> list[bytes]:
        """
        Every value of header C{name} (lower-case), in order.
        """
        return [
            line.partition(b": ")[2]
            for line in self.head.split(b"\r\n")[1:]
            if line.partition(b": ")[0].lower() == name
        ]


def parseResponse(data: bytes) -> Response:
    """
    The first HTTP response in C{data}; C{complete} says whether its body
    was framed completely (by length or by the chunked terminator).
    """
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        headers[name.lower()] = value
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        return Response(status, headers, rest[:length], len(rest) >= length, head)
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                return Response(status, headers, body, True, head)
            body, rest = body + rest[:n], rest[n + 2 :]
        return Response(status, headers, body, False, head)
    return Response(status, headers, rest, False, head)
