"""
Listening services that fail startup when their port is taken and report the
port they bound (port 0 in tests).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTCP,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from promtwist.startup import StartupError


class Listener(StreamServerEndpointService):
    """
    Like C{strports.service}: a bind failure is raised at startup, so twistd
    exits instead of running without its port.

    @ivar port: the listening port once bound, else L{None}.
    @ivar purpose: what the port is for, e.g. C{scrape}, in messages.
    @ivar key: the setting that chooses the port, e.g. C{proxy.http.port}.
    @ivar tls: whether it serves TLS.
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
        *,
        purpose: str = "",
        key: str = "",
    ) -> None:
        """
        @param tls: serve TLS with these options (see L{promtwist.tls})
            instead of plain TCP, through L{withTLS}.
        """
        endpoint = TCP4ServerEndpoint(reactor, portNumber, interface=interface)
        super().__init__(endpoint, factory if tls is None else withTLS(factory, tls))
        self.tls = tls is not None
        self.purpose = purpose
        self.key = key
        self._wanted = f"{interface or '0.0.0.0'}:{portNumber}"

    def privilegedStartService(self) -> None:
        """
        Bind, or raise L{StartupError} naming the address, what the port is
        for and the setting that moves it.
        """
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            cause = e.socketError.strerror if isinstance(e.socketError, OSError) else e.socketError
            what = f" for the {self.purpose} port" if self.purpose else ""
            fix = (
                f"; stop what holds it, or choose another port with {self.key}" if self.key else ""
            )
            if isinstance(e.socketError, OSError) and e.socketError.errno == errno.EACCES:
                fix = "; ports below 1024 need root (twistd --uid/--gid drop it after binding)"
            raise StartupError(
                f"cannot listen on {self._wanted}{what}: {str(cause).lower()}{fix}"
            ) from None
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    @property
    def address(self) -> str:
        """
        Where it listens, as C{host:port} (the port it bound, when asked
        for 0).
        """
        assert self.port is not None, "not listening"
        address = self.port.getHost()
        assert isinstance(address, IPv4Address)
        return f"{address.host}:{address.port}"

    @property
    def portNumber(self) -> int:
        assert self.port is not None, "not listening"
        address = self.port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port


def describeListeners(listeners: Iterable[Listener]) -> str:
    """
    The bound listeners for a startup line: C{scrape 0.0.0.0:8080 (TLS),
    agent 0.0.0.0:50051}.
    """
    return ", ".join(
        f"{listener.purpose} {listener.address}" + (" (TLS)" if listener.tls else "")
        for listener in listeners
    )


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
