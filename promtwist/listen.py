"""
Listening services that fail startup when their port is taken and report the
port they bound (port 0 in tests).
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTCP,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol


class Listener(StreamServerEndpointService):
    """
    Like C{strports.service}: a bind failure is raised at startup, so twistd
    exits instead of running without its port.

    @ivar port: the listening port once bound, else L{None}.
    """

    _raiseSynchronously = True
    port: IListeningPort | None = None

    def __init__(
        self,
        reactor: IReactorTCP,
        portNumber: int,
        factory: IProtocolFactory,
        interface: str = "",
        tls: IOpenSSLContextFactory | None = None,
    ) -> None:
        """
        @param tls: serve TLS with these options (see L{promtwist.tls})
            instead of plain TCP, through L{withTLS}.
        """
        endpoint = TCP4ServerEndpoint(reactor, portNumber, interface=interface)
        super().__init__(endpoint, factory if tls is None else withTLS(factory, tls))

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


class _TLSFactory(TLSMemoryBIOFactory):
    """
    A L{TLSMemoryBIOFactory} that passes a refusal on: Twisted's wraps
    whatever the wrapped factory returns, L{None} included, and then fails on
    every refused connection, leaving it open.
    """

    # IProtocolFactory allows None; WrappingFactory's annotation does not.
    def buildProtocol(self, addr: IAddress | None) -> TLSMemoryBIOProtocol | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


def withTLS(
    factory: IProtocolFactory,
    contextFactory: IOpenSSLServerConnectionCreator | IOpenSSLContextFactory,
) -> TLSMemoryBIOFactory:
    """
    Serve C{factory} over TLS on a plain TCP listener, keeping its refusals
    (a L{promtwist.webguard.HardenedSite} refusing an address, the agent
    port refusing connections past its handshake cap): the connection is
    closed before a TLS handshake starts.

    Use this rather than an C{ssl:} endpoint, L{SSL4ServerEndpoint} or
    C{listenSSL}, whose TLS layer wraps the refusal and then fails on it,
    leaving the connection open.

    @param contextFactory: the TLS settings, such as a
        L{CertificateOptions<twisted.internet.ssl.CertificateOptions>}.
    """
    return _TLSFactory(contextFactory, False, factory)
