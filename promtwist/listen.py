"""
Listening services that fail startup when their port is taken and report the
address they bound (port 0 in tests); where they listen is chosen in
L{promtwist.endpoints}.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from promtwist import __version__
from promtwist.acceptlog import AcceptLog, watchAccepts
from promtwist.addresses import socketHostPort
from promtwist.endpoints import BadDescription, described, onInterface, probe, wildcard
from promtwist.logs import clip
from promtwist.startup import StartupError
from promtwist.tls import answerALPN

# What an HTTP port answers a TLS client's ALPN offer with.
HTTP_1_1 = (b"http/1.1",)


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
        reactor: Any,
        portNumber: int,
        factory: IProtocolFactory,
        interface: str = "",
        tls: IOpenSSLContextFactory | None = None,
        *,
        purpose: str = "",
        key: str = "",
        backlog: int = 50,
        description: str = "",
        descriptionKey: str = "",
        protocols: Sequence[bytes] = (),
    ) -> None:
        """
        @param portNumber: the port of every address (the dual-stack
            wildcard), or of C{interface} when one is given.
        @param tls: serve TLS with these options (see L{promtwist.tls})
            instead of plain TCP, through L{withTLS}.
        @param backlog: connections the kernel queues until they are
            accepted (Twisted's default: 50).
        @param description: a Twisted server endpoint description that
            replaces C{portNumber} and C{interface} (see
            L{promtwist.endpoints.described}).
        @param descriptionKey: the setting C{description} came from, for
            messages.
        @param protocols: with TLS, what the port speaks by ALPN name, most
            preferred first (L{HTTP_1_1} for HTTP); a client offering none of
            them is served without a protocol (L{answerALPN}).
        @raise StartupError: when C{description} names no usable endpoint,
            or is C{ssl:} on a port promtwist's TLS settings also cover.
        """
        self.purpose = purpose
        self.key = descriptionKey if description else key
        if description:
            try:
                where = described(reactor, description, backlog)
            except BadDescription as e:
                raise StartupError(f"{descriptionKey} {clip(description)!r}: {e}") from None
            if where.tls is not None and tls is not None:
                raise StartupError(
                    f"{descriptionKey} {clip(description)!r}: an ssl: listener on a port"
                    f" that promtwist's TLS settings already cover; give tcp: here, or"
                    f" drop those settings"
                )
            tls = tls or where.tls
        elif interface:
            where = onInterface(reactor, portNumber, interface, backlog)
        else:
            where = wildcard(reactor, portNumber, backlog)
        if tls is not None:
            # The context every connection of the port shares.
            answerALPN(tls.getContext(), protocols)
        super().__init__(where.endpoint, factory if tls is None else withTLS(factory, tls))
        self.tls = tls is not None
        self._where = where
        self._reactor = reactor
        # What the port's accept loop logs, once it is bound.
        self._accepts: AcceptLog | None = None

    def privilegedStartService(self) -> None:
        """
        Bind, or raise L{StartupError} naming the address, what the port is
        for and the setting that moves it.
        """
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise self._cannotListen(e.socketError or e) from None
        except OSError as e:
            # An inherited socket that is not one, a unix path in the way.
            raise self._cannotListen(e) from None
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._bound)

    def checkAvailable(self) -> None:
        """
        Raise L{StartupError} now if the port cannot be bound: twistd binds
        only after it has daemonised, and then reports a failure cut to 100
        bytes. A port taken between this check and the bind still fails the
        start, in the log file.
        """
        try:
            probe(self._where)
        except OSError as e:
            raise self._cannotListen(e) from None

    def _cannotListen(self, error: object) -> StartupError:
        cause = str(error.strerror if isinstance(error, OSError) else error)
        code = error.errno if isinstance(error, OSError) else None
        what = f" for the {self.purpose} port" if self.purpose else ""
        fix = ""
        if code == errno.EACCES and self._where.probe is not None:
            fix = "; ports below 1024 need root (twistd --uid/--gid drop it after binding)"
        elif self.key and code == errno.EADDRINUSE:
            fix = f"; stop what holds it, or choose another port with {self.key}"
        elif self.key:
            fix = f"; check {self.key}"
        # Lower-cased as the rest of the line, but not a path in it.
        cause = cause[:1].lower() + cause[1:]
        return StartupError(f"cannot listen on {self._where.wanted}{what}: {cause}{fix}")

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self._accepts = watchAccepts(port, self._reactor)
        return port

    def stopService(self) -> Deferred[None]:
        if self._accepts is not None:
            self._accepts.flush()
        stopped: Deferred[None] = super().stopService()
        return stopped

    @property
    def address(self) -> str:
        """
        Where it listens: C{host:port} (the port it bound, when asked for
        0), C{[host]:port} for IPv6, C{unix:path} for a unix socket.
        """
        assert self.port is not None, "not listening"
        address = self.port.getHost()
        if isinstance(address, IPv4Address | IPv6Address):
            return socketHostPort(address)
        if isinstance(address, UNIXAddress):
            name = address.name
            return f"unix:{name.decode('utf-8', 'replace') if isinstance(name, bytes) else name}"
        return str(address)

    @property
    def portNumber(self) -> int:
        """
        The TCP port it bound.
        """
        assert self.port is not None, "not listening"
        address = self.port.getHost()
        assert isinstance(address, IPv4Address | IPv6Address), address
        return address.port


def settingListener(
    reactor: Any,
    section: str,
    purpose: str,
    port: int,
    description: str,
    factory: IProtocolFactory,
    interface: str = "",
    tls: IOpenSSLContextFactory | None = None,
    *,
    backlog: int = 50,
    protocols: Sequence[bytes] = (),
) -> Listener:
    """
    The listener of a port the settings choose as every promtwist port is
    chosen: C{<section>.port} on C{interface}, unless the endpoint
    description C{<section>.listen} (C{description}) replaces both.

    @param section: the settings' key prefix, e.g. C{proxy.http}.
    """
    return Listener(
        reactor,
        port,
        factory,
        interface,
        tls,
        purpose=purpose,
        key=f"{section}.port",
        description=description,
        descriptionKey=f"{section}.listen",
        backlog=backlog,
        protocols=protocols,
    )


def describeListeners(listeners: Iterable[Listener]) -> str:
    """
    The bound listeners for a startup line: C{scrape 0.0.0.0:8080 (TLS),
    agent 0.0.0.0:50051}.
    """
    return ", ".join(
        f"{listener.purpose} {listener.address}" + (" (TLS)" if listener.tls else "")
        for listener in listeners
    )


def logStarted(log: Logger, process: str, listeners: Iterable[Listener]) -> None:
    """
    The startup line every promtwist process logs: its version and where
    it listens, in the message and, for log shippers, as flat fields
    (C{promtwist_version}, C{listening_<purpose>}).
    """
    bound = list(listeners)
    log.info(
        "promtwist {promtwist_version} {process} listening: {addresses}",
        promtwist_version=__version__.public(),
        process=process,
        addresses=describeListeners(bound) or "nothing",
        **{f"listening_{listener.purpose}": listener.address for listener in bound},
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
    (a L{promtwist.webguard.HardenedSite} or the scrape port's
    L{promtwist.proxy.httpserver.ScrapePortFactory} refusing an address, the agent
    port refusing connections past its handshake cap): the connection is
    closed before a TLS handshake starts.

    Use this rather than an C{ssl:} endpoint, L{SSL4ServerEndpoint} or
    C{listenSSL}, whose TLS layer wraps the refusal and then fails on it,
    leaving the connection open.

    @param contextFactory: the TLS settings, such as a
        L{CertificateOptions<twisted.internet.ssl.CertificateOptions>}.
    """
    return _TLSFactory(contextFactory, False, factory)
