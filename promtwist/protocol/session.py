# -*- test-case-name: promtwist.test.test_session -*-
"""
What both ends of an agent link share: frame dispatch gated by the handshake,
heartbeats with abort on silence, and request-id to Deferred correlation.

Nothing here knows about HTTP or Prometheus; L{promtwist.proxy.link} and
L{promtwist.agent.connection} add the two roles on top.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.logs import observer
from promtwist.protocol.framing import FrameReceiver, ProtocolError, _peerName
from promtwist.protocol.promtwist_pb2 import Frame, Goodbye, Ping, Pong

PROTOCOL_VERSION = 1

# Before the handshake completes the peer is unauthenticated: it gets a small
# frame limit so that it cannot make us buffer much.
HANDSHAKE_MAX_FRAME_BYTES = 64 * 1024

# A peer that has sent nothing for this many heartbeat periods is dead.
SILENT_PERIODS_BEFORE_ABORT = 3


class SessionLost(Exception):
    """
    The link to the peer went away before an answer arrived.
    """


class Session(FrameReceiver):
    """
    One end of an agent link.

    Subclasses name the frames they accept by defining C{frame_<kind>} methods
    (C{frame_scrape_request}, ...) and list in C{_beforeHandshake} the kinds
    allowed before L{handshakeDone}. Any other frame is a protocol error.

    @ivar clock: where all timers of this connection live.
    @ivar lateReplies: answers that arrived for nothing still waiting; normal
        after timeouts, so counted rather than treated as errors.
    @ivar roundTripSeconds: the latest heartbeat round-trip time, or L{None}.
    """

    _log = Logger(observer=observer)
    _beforeHandshake: ClassVar[frozenset[str]] = frozenset()
    MAX_LENGTH = HANDSHAKE_MAX_FRAME_BYTES
    peerMaxFrameBytes = HANDSHAKE_MAX_FRAME_BYTES

    established = False
    roundTripSeconds: float | None = None

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.lateReplies = 0
        self._lastReceived = self._lastSent = clock.seconds()
        self._heartbeat: LoopingCall | None = None
        self._heartbeatPeriod = 0.0
        self._pings: dict[int, float] = {}
        self._nextPing = 1
        self._waiting: dict[int, Deferred[Any]] = {}
        self._nextRequestId = 1
        self._lost: Failure | None = None
        self._timers: list[IDelayedCall] = []
        self._lostObservers: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        # Frames are written whole; Nagle would hold the tail of a body behind
        # the peer's delayed ACK (tens of milliseconds per multi-frame scrape).
        self.transport.setTcpNoDelay(True)

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        self._lastReceived = self.clock.seconds()
        super().dataReceived(data)

    def frameReceived(self, frame: Frame) -> None:
        kind = frame.WhichOneof("kind")
        assert kind is not None
        if not self.established and kind not in self._beforeHandshake:
            raise ProtocolError(f"{kind} frame before the handshake completed")
        handler: Callable[[Any], None] | None = getattr(self, "frame_" + kind, None)
        if handler is None:
            raise ProtocolError(f"unexpected {kind} frame")
        handler(getattr(frame, kind))

    def frame_ping(self, ping: Ping) -> None:
        self.sendFrame(Frame(pong=Pong(nonce=ping.nonce)))

    def frame_pong(self, pong: Pong) -> None:
        sentAt = self._pings.pop(pong.nonce, None)
        if sentAt is not None:
            self.roundTripSeconds = self.clock.seconds() - sentAt

    def frame_goodbye(self, goodbye: Goodbye) -> None:
        self._log.info(
            "{peer} is going away: {reason}", peer=_peerName(self.transport), reason=goodbye.reason
        )
        self.goodbyeReceived(goodbye.reason)

    def goodbyeReceived(self, reason: str) -> None:
        """
        The peer announced it is leaving; by default, let it close the link.
        """

    def silentFor(self) -> float:
        """
        Seconds since anything arrived from the peer.
        """
        return self.clock.seconds() - self._lastReceived

    # Sending.

    def sendFrame(self, frame: Frame) -> None:
        super().sendFrame(frame)
        self._lastSent = self.clock.seconds()

    def sendGoodbye(self, reason: str) -> None:
        if self.transport is not None and self._lost is None:
            self.sendFrame(Frame(goodbye=Goodbye(reason=reason)))

    # Handshake and heartbeats.

    def handshakeDone(
        self, heartbeatPeriod: float, maxFrameBytes: int, peerMaxFrameBytes: int
    ) -> None:
        """
        Open the link for ordinary traffic: raise the frame limits to the
        negotiated ones and start heartbeats (a period of 0 disables them).
        """
        self.established = True
        self.MAX_LENGTH = maxFrameBytes
        self.peerMaxFrameBytes = peerMaxFrameBytes
        if heartbeatPeriod > 0:
            self._heartbeatPeriod = heartbeatPeriod
            self._heartbeat = LoopingCall(self._heartbeatTick)
            self._heartbeat.clock = self.clock
            # Ticking at half the period keeps the idle gap below one period.
            self._heartbeat.start(heartbeatPeriod / 2, now=False).addErrback(
                lambda f: self._log.failure("heartbeat loop failed", f)
            )

    def _heartbeatTick(self) -> None:
        now = self.clock.seconds()
        silence = now - self._lastReceived
        if silence > SILENT_PERIODS_BEFORE_ABORT * self._heartbeatPeriod:
            self._log.warn(
                "nothing heard from {peer} for {silence:.1f}s; aborting the link",
                peer=_peerName(self.transport),
                silence=silence,
            )
            self.transport.abortConnection()
        elif now - self._lastSent >= self._heartbeatPeriod:
            nonce = self._nextPing
            self._nextPing += 1
            # Only the latest outstanding ping matters for the round trip.
            self._pings = {nonce: now}
            self.sendFrame(Frame(ping=Ping(nonce=nonce)))

    def callLater(self, delay: float, f: Callable[..., object], *args: object) -> IDelayedCall:
        """
        A timer owned by this connection: cancelled when the connection is lost.
        """
        self._timers = [t for t in self._timers if t.active()]
        call = self.clock.callLater(delay, f, *args)
        self._timers.append(call)
        return call

    # Correlation.

    def expectReply(self) -> tuple[int, Deferred[Any]]:
        """
        Reserve a request id and the Deferred its reply will fire.

        Cancelling the Deferred forgets the id, so a late reply is dropped.
        If the link is already gone the Deferred has already failed.
        """
        requestId = self._nextRequestId
        self._nextRequestId += 1
        d: Deferred[Any] = Deferred(lambda _: self._forget(requestId))
        if self._lost is not None:
            d.errback(self._lostError())
        else:
            self._waiting[requestId] = d
        return requestId, d

    def _forget(self, requestId: int) -> None:
        self._waiting.pop(requestId, None)

    def replyReceived(self, requestId: int, reply: object) -> None:
        d = self._waiting.pop(requestId, None)
        if d is None:
            self.lateReplies += 1
            self._log.debug("dropping a reply for request {id}: nothing waits for it", id=requestId)
            return
        d.callback(reply)

    def _lostError(self) -> SessionLost:
        assert self._lost is not None
        return SessionLost(
            f"link to {_peerName(self.transport)} lost: {self._lost.getErrorMessage()}"
        )

    def whenLost(self) -> Deferred[None]:
        """
        A new Deferred that fires (with L{None}) once the connection is gone.
        """
        d: Deferred[None] = Deferred()
        if self._lost is not None:
            d.callback(None)
        else:
            self._lostObservers.append(d)
        return d

    def connectionLost(self, reason: Failure = Failure(Exception("connection lost"))) -> None:
        self._lost = reason
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        waiting, self._waiting = self._waiting, {}
        error = self._lostError()
        for d in waiting.values():
            d.errback(error)
        observers, self._lostObservers = self._lostObservers, []
        for waiter in observers:
            waiter.callback(None)
