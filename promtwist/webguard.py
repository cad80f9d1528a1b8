# -*- test-case-name: promtwist.test.test_webguard -*-
"""
An HTTP site fit for a port that strangers can reach.

Twisted's L{Site} trusts its clients more than a port open to a network
should. Its idle timeout restarts on every byte, so a client that trickles
a request head one byte at a time (slowloris) keeps its connection, and a
few hundred such clients keep them all. An over-long line is dropped
without a status and an oversized head gets a bare 400, so a client with a
genuinely large request cannot tell what went wrong. A request body of any
size is spooled to a temporary file. And anyone may connect at all.

L{HardenedSite} closes those gaps with limits passed to its constructor
rather than read from settings, so that the admin and metrics ports can
each use it with their own values. The scrape port, where speed matters,
has its own server (L{promtwist.proxy.httpserver}) with the same defences;
the parts both share are in L{promtwist.httpguard}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, Request
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from promtwist.httpguard import (
    AllowedNetworks,
    Refusal,
    bodyRefused,
    headTimedOut,
    headTooLarge,
)

__all__ = ["HardenedChannel", "HardenedSite"]


class HardenedChannel(HTTPChannel):
    """
    An L{HTTPChannel} that bounds each request head in bytes and in time and
    turns away request bodies beyond a small size.

    A request's head (request line, headers and the blank line that ends
    them, line endings included) may be at most C{maxHeaderBytes} long: a
    request line that alone passes the limit gets 414, a head that passes
    it later gets 431. Either way the connection closes, since the rest of
    the head cannot be told apart from a next request.

    The head must also be complete C{headerTimeout} seconds after it
    started, whatever the client keeps sending, or the client gets 408 and
    the connection closes. A head starts when the connection is made, and
    on a keep-alive connection with the first byte after the previous
    response: waiting for that byte is the idle timeout's business, so
    that Prometheus can keep a connection open across scrape intervals
    longer than the header deadline.

    Bodies must declare their length and be at most C{maxBodyBytes} long,
    or they get 413 before a byte of them is read. The deadline does not
    cover a body: a permitted one is bounded by its size and the idle
    timeout.

    A client that pipelines requests and does not read the answers gets no
    further answer while the transport holds more than its buffer unsent
    (64 KiB on TCP): the next request starts only once the transport has
    flushed (L{resumeProducing}), and nothing more is read meanwhile. What
    such a client costs is that buffer, one answer and one read of
    pipelined requests; the idle timeout then closes it.

    @ivar maxHeaderBytes: the most bytes a request head may take.
    @ivar headerTimeout: seconds a request head may take to arrive.
    @ivar maxBodyBytes: the largest request body accepted.
    """

    def __init__(self, maxHeaderBytes: int, headerTimeout: float, maxBodyBytes: int) -> None:
        super().__init__()
        self.maxHeaderBytes = maxHeaderBytes
        self.headerTimeout = headerTimeout
        self.maxBodyBytes = maxBodyBytes
        # Twisted's own limits, no tighter than ours: ours count line endings
        # too and so trip first, with the right status instead of a bare 400
        # or a silent close.
        self.MAX_LENGTH = maxHeaderBytes
        self.totalHeadersSize = maxHeaderBytes
        self._headBytes = 0
        self._atRequestLine = True
        self._betweenRequests = False
        self._deadline: IDelayedCall | None = None
        self._forceClose: IDelayedCall | None = None
        # Pipelined bytes kept while the client does not read: see
        # requestDone.
        self._heldRequests = b""

    def connectionMade(self) -> None:
        super().connectionMade()
        if not IPushProducer.providedBy(self.transport):
            # TLS does not say it is a producer, so Twisted's channel would
            # neither be told that its writes back up nor stop reading: all
            # its backpressure (and ours) would be off over HTTPS.
            self._networkProducer = _ReadingSide(self.transport)
            self._networkProducer.registerProducer(self, True)
        self._startDeadline()

    def dataReceived(self, data: bytes) -> None:
        if self._forceClose is not None:
            # Refused and closing: whatever else arrives is not a request.
            return
        if self._betweenRequests and not self.paused:
            # (Bytes that arrive while requests are held start no deadline
            # until they are replayed.)
            self._betweenRequests = False
            self._startDeadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self._headBytes += len(line) + len(self.delimiter)
        if self._headBytes > self.maxHeaderBytes:
            self._headTooLarge()
            return
        if line:
            self._atRequestLine = False
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._headTooLarge()

    def allHeadersReceived(self) -> None:
        self._cancelDeadline()
        self._headBytes = 0
        self._atRequestLine = True
        if self.length is None or self.length > self.maxBodyBytes:
            self._refuse(bodyRefused(self.maxBodyBytes))
            return
        super().allHeadersReceived()

    def requestDone(self, request: Request) -> None:
        # Set before Twisted replays pipelined bytes it held back, so that
        # they start the next request's deadline as fresh bytes would.
        self._betweenRequests = bool(self.persistent)
        if not (self.persistent and self._waitingForTransport):
            super().requestDone(request)
            return
        # The client is not reading: keep what it pipelined, parsed or not,
        # until the transport has flushed. Twisted would replay it now and
        # answer every request in it, whatever the write buffer holds.
        self.paused = True
        held, self._dataBuffer = self._dataBuffer, []
        super().requestDone(request)
        self._heldRequests = b"".join(held)
        self._networkProducer.pauseProducing()

    def resumeProducing(self) -> None:
        """
        The client read what waited: take up the requests it pipelined
        meanwhile, if L{requestDone} held any.
        """
        super().resumeProducing()
        if self.paused and not self._handlingRequest and self._forceClose is None:
            self.paused = False
            held, self._heldRequests = self._heldRequests, b""
            if held or self._buffer:
                self.dataReceived(held)

    def timeoutConnection(self) -> None:
        # The idle timeout closes the connection: no 408 after that.
        self._cancelDeadline()
        super().timeoutConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelDeadline()
        if self._forceClose is not None and self._forceClose.active():
            self._forceClose.cancel()
        super().connectionLost(reason)

    def _startDeadline(self) -> None:
        self._deadline = self.callLater(self.headerTimeout, self._deadlinePassed)

    def _cancelDeadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _deadlinePassed(self) -> None:
        self._deadline = None
        self._refuse(headTimedOut(self.headerTimeout))

    def _headTooLarge(self) -> None:
        self._refuse(headTooLarge(self._atRequestLine, self.maxHeaderBytes))

    def _refuse(self, refusal: Refusal) -> None:
        """
        Answer with the refusal's status and one-line reason, then close.

        A client that stops reading could hold the close up indefinitely, so
        the connection is aborted if it has not closed after C{abortTimeout}
        seconds, as Twisted does for its idle timeout.
        """
        transport = self.transport
        assert transport is not None
        self._cancelDeadline()
        self.setTimeout(None)
        refusal.send(transport)
        self.loseConnection()
        # TCP and TLS transports can abort, though ITransport does not say so.
        abort = cast(ITCPTransport, transport).abortConnection
        self._forceClose = self.callLater(self.abortTimeout, abort)


@implementer(IPushProducer)
class _ReadingSide:
    """
    The reading side of a transport that can pause it but does not say so
    (TLS's, which passes L{pauseProducing} on to the socket beneath), as
    L{HTTPChannel} expects its network producer: it pauses and resumes
    reading, and registers the channel as the transport's producer.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self._transport.stopProducing()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()


class HardenedSite(Site):
    """
    A L{Site} whose connections are L{HardenedChannel}s, which admits only
    clients from C{allowedNetworks}, and which keeps no access log.

    A client outside the allowed networks is refused before a byte is read:
    L{buildProtocol} returns L{None} and the reactor closes the socket. The
    refusal is logged at most once a minute per address.

    Twisted's access log stays off: at one line per scrape it would drown
    everything else, and the resources log what matters themselves.

    Connections are HTTP/1.1 only: with TLS (see L{withTLS}) the context
    must not offer C{h2} by ALPN, which Twisted's contexts do only when
    asked to.

    @ivar allowed: the networks clients may connect from; empty admits
        everyone.
    """

    noisy = False

    def __init__(
        self,
        resource: IResource,
        *,
        maxHeaderBytes: int,
        headerTimeout: float,
        idleTimeout: float,
        allowedNetworks: Sequence[str] = (),
        maxBodyBytes: int = 0,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param resource: the root resource.
        @param maxHeaderBytes: the most bytes a request's line and headers may
            take, line endings included.
        @param headerTimeout: seconds from the start of a request until its
            headers must be complete.
        @param idleTimeout: seconds a connection may stay silent, between
            requests or within one.
        @param allowedNetworks: CIDR networks (C{10.0.0.0/8}, C{::1}) clients
            may connect from; empty admits everyone.
        @param maxBodyBytes: the largest request body accepted.
        @param reactor: the clock for every timeout; the global reactor by
            default.
        @raise ValueError: if a network is not valid.
        """
        super().__init__(resource, timeout=idleTimeout, reactor=reactor)
        self.maxHeaderBytes = maxHeaderBytes
        self.headerTimeout = headerTimeout
        self.maxBodyBytes = maxBodyBytes
        self.allowed = AllowedNetworks(allowedNetworks, self.reactor)

    # Twisted types its factories for the wrapper that switches to HTTP/2
    # after ALPN; these channels are HTTP/1.1 and stand alone on purpose.
    def protocol(self) -> HardenedChannel:  # type: ignore[override]
        return HardenedChannel(self.maxHeaderBytes, self.headerTimeout, self.maxBodyBytes)

    def buildProtocol(self, addr: IAddress | None) -> HardenedChannel | None:  # type: ignore[override]
        if not self.allowed.admits(addr):
            return None
        channel: HardenedChannel = super().buildProtocol(addr)
        return channel

    def log(self, request: Request) -> None:
        pass
