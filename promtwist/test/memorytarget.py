"""
Scrape targets in memory: a twisted.web resource served to the agent's own
HTTP client over iosim transports, so that link tests exercise the real
request and response bytes without sockets.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from promtwist.agent.client import Origin, TargetPool

_SERVER = IPv4Address("TCP", "127.0.0.1", 80)
_CLIENT = IPv4Address("TCP", "127.0.0.1", 31337)


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    def __init__(self, targets: MemoryTargets) -> None:
        self.targets = targets

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        server = self.targets.site.buildProtocol(_CLIENT)
        client = protocolFactory.buildProtocol(_SERVER)
        assert server is not None and client is not None
        serverTransport = iosim.FakeTransport(
            server, isServer=True, hostAddress=_SERVER, peerAddress=_CLIENT
        )
        clientTransport = iosim.FakeTransport(
            client, isServer=False, hostAddress=_CLIENT, peerAddress=_SERVER
        )
        self.targets.pumps.append(iosim.connect(server, serverTransport, client, clientTransport))
        self.targets.connections += 1
        return succeed(client)


class MemoryTargets:
    """
    Every origin served by one resource; L{flush} moves the bytes.

    @ivar connections: how many connections the pool opened.
    """

    def __init__(self, resource: IResource, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.site = Site(resource, reactor=self.clock)
        self.pumps: list[iosim.IOPump] = []
        self.connections = 0
        self.pool = TargetPool(self.clock, self.endpointFor, maxIdlePerOrigin=4)

    def endpointFor(self, origin: Origin) -> IStreamClientEndpoint:
        return _MemoryEndpoint(self)

    def flush(self) -> None:
        """
        Move the bytes of every connection; forget the closed ones.
        """
        for pump in list(self.pumps):
            pump.flush()
            if pump.clientIO.disconnected and pump.serverIO.disconnected:
                self.pumps.remove(pump)
