"""
Listening services that fail startup when their port is taken and report the
port they bound (port 0 in tests).
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorTCP


class Listener(StreamServerEndpointService):
    """
    Like C{strports.service}: a bind failure is raised at startup, so twistd
    exits instead of running without its port.

    @ivar port: the listening port once bound, else L{None}.
    """

    _raiseSynchronously = True
    port: IListeningPort | None = None

    def __init__(
        self, reactor: IReactorTCP, portNumber: int, factory: IProtocolFactory, interface: str = ""
    ) -> None:
        super().__init__(TCP4ServerEndpoint(reactor, portNumber, interface=interface), factory)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    @property
    def portNumber(self) -> int:
        assert self.port is not None, "not listening"
        address = self.port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port
