# -*- test-case-name: promtwist.test.test_session -*-
"""
What both ends of an agent link share: the link's state and the frames each
state allows, heartbeats with abort on silence, backpressure on the peer,
bounded closes, and request-id to Deferred correlation.

Nothing here knows about HTTP or Prometheus; L{promtwist.proxy.link} and
L{promtwist.agent.connection} add the two roles on top.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, ClassVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from promtwist.addresses import peerName
from promtwist.logs import RepeatedWarnings, clip, observer
from promtwist.protocol.framing import FrameReceiver, ProtocolError, spokenProtocol
from promtwist.protocol.liveness import DeadlineSweep
from promtwist.protocol.promtwist_pb2 import Frame, Goodbye, Ping, Pong
from promtwist.sendnow import sendsOnReturn

PROTOCOL_VERSION = 1

# Before the handshake completes the peer is unauthenticated: it gets a small
# frame limit so that it cannot make us buffer much. It is also the least a
# peer may announce for after the handshake: a scrape request (path, query,
# headers) or a head must always fit in one frame.
HANDSHAKE_MAX_FRAME_BYTES = 64 * 1024

# A peer that has sent nothing for this many heartbeat periods is dead.
SILENT_PERIODS_BEFORE_ABORT = 3

# The end that drives liveness pings a link idle for this many heartbeat
# periods: the other end, which aborts after SILENT_PERIODS_BEFORE_ABORT,
# then hears from it with one period of margin, for the ping's round trip
# and the sweep's resolution (at most a twentieth of a period). Two periods
# rather than the one and a half of earlier versions: a quarter fewer idle pings.
IDLE_PERIODS_BEFORE_PING = 2

# A busy link needs no ping for liveness, but the round trip is only measured
# by one: the end that drives liveness pings at least this often (in
# heartbeat periods), however busy the link is; its first ping goes out half
# a period after the handshake. The answering end learns the round trip from
# those pings, and pings this often itself only if the peer's pings do not
# carry it (an older peer).
ROUND_TRIP_EVERY_PERIODS = 6


class SessionLost(Exception):
    """
    The link to the peer went away before an answer arrived.
    """


class LinkState(Enum):
    """
    Where a link is in its life. Each role lists, per state, the frame kinds
    it accepts (L{Session.allowedFrames}); the transitions are L{Session}'s
    methods and nothing else assigns the state.
    """

    # The proxy awaits the agent's Hello; the agent awaits Welcome or Reject.
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    # One end said Goodbye: no new work, what is in flight may finish.
    DRAINING = "draining"
    # This end closed the link, or it was lost: every frame is ignored.
    CLOSED = "closed"


# How a frame refused in a state is described: "hello frame on an
# established link".
_WHERE = {
    LinkState.HANDSHAKE: "before the handshake completed",
    LinkState.ESTABLISHED: "on an established link",
    LinkState.DRAINING: "on a draining link",
}


@implementer(IPushProducer)
class Session(FrameReceiver):
    """
    One end of an agent link.

    The link is its transport's streaming producer, so that a peer that
    does not read what we write cannot make us write without end: once the
    transport holds more than its buffer unsent (64 KiB on TCP), the
    transport calls L{pauseProducing} and this end stops parsing what the
    peer sends, and reading its socket as soon as it sends more, until
    L{resumeProducing}. What the peer sends cannot then make us write
    anything more: what waits to be parsed is at most two reads, and what
    waits unsent is the transport's buffer, the replies to the one frame being
    handled (a frame of at most C{peerMaxFrameBytes}) and the few frames
    this end sends by itself (pings, scrape requests, cancels) until the
    heartbeat gives up: a few frames' worth. A peer that stays unread counts
    as silent, and the heartbeat aborts it after
    L{SILENT_PERIODS_BEFORE_ABORT} periods.

    Only one end of a link may do this (L{stopsReadingUnreadPeer}): if both
    stopped reading while both had writes waiting, as a busy link on a slow
    path does (the agent's bodies one way, a burst of scrape requests the
    other), each would wait for the other for ever. The proxy is that end:
    it faces whoever reaches its agent port. The agent always reads its
    proxy; what it writes is bounded by the credit the proxy grants.

    Liveness is driven by one end (L{handshakeDone}'s C{drives}): it pings a
    link that was idle, either way, for L{IDLE_PERIODS_BEFORE_PING}
    heartbeat periods, and at least every L{ROUND_TRIP_EVERY_PERIODS}
    periods to measure the round trip, which its pings carry to the peer.
    The other end only answers. Both abort a peer heard nothing from for
    L{SILENT_PERIODS_BEFORE_ABORT} periods. No end keeps a timer of its own
    for this: a L{DeadlineSweep} shared by many links looks at each only
    when its next ping or abort is due, and traffic costs two timestamps.

    Closing is bounded as well: a graceful close that the peer does not
    let finish (it does not read what is left to flush) is aborted after
    C{closeTimeout} seconds.

    Subclasses name the frames they accept by defining C{frame_<kind>} methods
    (C{frame_scrape_request}, ...) and list in L{allowedFrames} the kinds
    each state accepts. Any other frame is a protocol error that closes this
    link with a one-line reason.

    @cvar allowedFrames: frame kinds accepted, by state; a state that is not
        a key accepts nothing.
    @ivar clock: where all timers of this connection live.
    @ivar lateReplies: answers that arrived for nothing still waiting; normal
        after timeouts, so counted rather than treated as errors.
    @ivar roundTripSeconds: the latest heartbeat round-trip time, or L{None}.
    @ivar establishedAt: when the handshake completed (the clock's time), or
        L{None} before.
    @ivar bytesReceived: how much the peer sent (a peer that closes having
        sent nothing may be speaking another protocol).
    @ivar closeReason: why this end closed the link, once it did; what is
        still in flight fails with it.
    @ivar warnings: where warnings the peer could repeat go: this link's
        own, summarised beyond a few per minute and flushed when it goes.
    @cvar misdirected: what an operator should change when the peer's first
        bytes are another protocol, by that protocol (see
        L{spokenProtocol}): one line, with C{{peer}} for the peer's address.
    @ivar closeTimeout: seconds a graceful close may take before the
        connection is aborted.
    """

    _log = Logger(observer=observer)
    allowedFrames: ClassVar[Mapping[LinkState, frozenset[str]]] = {}
    # Whether this end stops reading a peer that does not read (see above).
    stopsReadingUnreadPeer: ClassVar[bool] = True
    misdirected: ClassVar[Mapping[str, str]] = {}
    MAX_LENGTH = HANDSHAKE_MAX_FRAME_BYTES
    peerMaxFrameBytes = HANDSHAKE_MAX_FRAME_BYTES

    roundTripSeconds: float | None = None
    establishedAt: float | None = None
    closeReason = ""

    def __init__(
        self, clock: IReactorTime, closeTimeout: float, sweep: DeadlineSweep | None = None
    ) -> None:
        """
        @param sweep: the liveness sweep this link shares with its
            factory's other links; one of its own by default.
        """
        self.clock = clock
        self.closeTimeout = closeTimeout
        self._sweep = DeadlineSweep(clock) if sweep is None else sweep
        # The transport paused us: the peer does not read what we write.
        self._unread = False
        # And we stopped reading its socket for it.
        self._socketPaused = False
        self.lateReplies = 0
        self.bytesReceived = 0
        self._state = LinkState.HANDSHAKE
        self._linkWarnings: RepeatedWarnings | None = None
        self._lastReceived = self._lastSent = clock.seconds()
        self._heartbeatPeriod = 0.0
        self._drives = False
        self._lastPing = 0.0
        # The latest ping this end sent that awaits its pong: nonce, when.
        self._pingOut: tuple[int, float] | None = None
        self._nextPing = 1
        self._roundTripDue = 0.0
        self._waiting: dict[int, Deferred[Any]] = {}
        self._nextRequestId = 1
        self._lost: Failure | None = None
        self._timers: list[IDelayedCall] = []
        self._lostObservers: list[Deferred[None]] = []

    # State.

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def warnings(self) -> RepeatedWarnings:
        # Made on first use: most links never warn.
        if self._linkWarnings is None:
            self._linkWarnings = RepeatedWarnings(self._log, self.clock)
        return self._linkWarnings

    @property
    def established(self) -> bool:
        """
        Whether the handshake completed and the link is still open (perhaps
        draining).
        """
        return self._state in (LinkState.ESTABLISHED, LinkState.DRAINING)

    def isOpen(self) -> bool:
        """
        Whether this end still reads the peer: not CLOSED.
        """
        return self._state is not LinkState.CLOSED

    def drain(self) -> None:
        """
        ESTABLISHED to DRAINING: one end said Goodbye. Anything else stays.
        """
        if self._state is LinkState.ESTABLISHED:
            self._state = LinkState.DRAINING

    def close(self, reason: str, abort: bool = False) -> None:
        """
        Any state to CLOSED: stop reading the peer and close the connection,
        flushing what was written unless C{abort}. What is in flight fails
        with C{reason}.

        A flush the peer does not take within C{closeTimeout} seconds is
        aborted, and so is one still under way when C{close} is called
        again with C{abort}: no close waits on the peer for ever.
        """
        if self._state is LinkState.CLOSED:
            if abort and self._lost is None:
                self.transport.abortConnection()
            return
        self._state = LinkState.CLOSED
        self.closeReason = reason
        # Stop parsing whatever else is already buffered from this peer.
        self.paused = True
        # Nothing is pinged or aborted for silence any more: the close is
        # bounded by itself.
        self._stopHeartbeat()
        # A transport with a producer waits for it before closing (TLS does
        # not close at all); nothing is produced any more.
        cast(IConsumer, self.transport).unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()
            self.callLater(self.closeTimeout, self._closeTimedOut)

    def _closeTimedOut(self) -> None:
        self.warnings.warn(
            "close timeout",
            "{peer} did not take what was left to send within {secs:g}s; aborting the link",
            peer=peerName(self.transport),
            secs=self.closeTimeout,
        )
        self.transport.abortConnection()

    def connectionMade(self) -> None:
        # Frames are written whole; Nagle would hold the tail of a body behind
        # the peer's delayed ACK (tens of milliseconds per multi-frame scrape).
        self.transport.setTcpNoDelay(True)
        # Stream transports (TCP, TLS) consume and produce, though
        # ITCPTransport does not say so.
        cast(IConsumer, self.transport).registerProducer(self, True)

    # Backpressure (IPushProducer, called by the transport).

    def pauseProducing(self) -> None:
        """
        The transport holds more than its buffer unsent: the peer is not
        reading. Stop parsing what it sends, so that it cannot make us
        write more, and stop reading its socket once it sends more (see
        L{dataReceived}); it is silent meanwhile, as far as the heartbeat
        goes. (Only if L{stopsReadingUnreadPeer}.)
        """
        if not self.stopsReadingUnreadPeer:
            return
        self._unread = True
        if self.isOpen():
            self.paused = True

    def resumeProducing(self) -> None:
        """
        The peer took what was waiting: read it again, starting with the
        frames it sent while we were not reading.
        """
        self._unread = False
        if self.isOpen():
            self.paused = False
            self._parse(b"")
            # Read the socket again only once what waited is parsed, or what
            # waits would grow by a read each time the peer reads a little.
            if self._socketPaused and not self._unread and self.isOpen():
                self._socketPaused = False
                cast(IPushProducer, self.transport).resumeProducing()

    def stopProducing(self) -> None:
        """
        The connection is going; L{connectionLost} does what there is to do.
        """

    # Receiving.

    @sendsOnReturn
    def dataReceived(self, data: bytes) -> None:
        if self._state is LinkState.CLOSED:
            # Closing already: neither parsed nor buffered.
            return
        if self._unread:
            # A peer that does not read stays silent, whatever it sends:
            # the heartbeat is what aborts it. What it sends waits, and its
            # socket is no longer read, so at most one read more waits.
            # (Not at once in pauseProducing: TLS pauses its producer for
            # what is written before its handshake completes, and must
            # read the socket to complete it.)
            if not self._socketPaused:
                self._socketPaused = True
                cast(IPushProducer, self.transport).pauseProducing()
        else:
            self._lastReceived = self.clock.seconds()
        self.bytesReceived += len(data)
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        """
        Parse C{data} after what is left of earlier reads (nothing while
        paused).
        """
        super().dataReceived(data)
        if not self.isOpen():
            # Closed while parsing this read: drop what it left unparsed.
            self._unprocessed = b""

    def frameReceived(self, frame: Frame) -> None:
        kind = frame.WhichOneof("kind")
        assert kind is not None
        if self._state is LinkState.CLOSED:
            return
        if kind not in self.allowedFrames.get(self._state, ()):
            raise ProtocolError(f"{kind} frame {_WHERE[self._state]}")
        handler: Callable[[Any], None] = getattr(self, "frame_" + kind)
        handler(getattr(frame, kind))

    def lengthLimitExceeded(self, length: int) -> None:
        """
        A first frame whose length spells another protocol is a
        misconfiguration, not an attack: name the likely mistake and the
        option that fixes it instead of the number.
        """
        spoken = spokenProtocol(length) if self._state is LinkState.HANDSHAKE else None
        if spoken is None:
            super().lengthLimitExceeded(length)
            return
        hint = self.misdirected.get(spoken, "")
        why = f"{peerName(self.transport)} speaks {spoken}, not the agent protocol" + (
            f": {hint.format(peer=peerName(self.transport))}" if hint else ""
        )
        self.close(why, abort=True)
        self.misdirectedPeer(why)

    def misdirectedPeer(self, why: str) -> None:
        """
        The peer's first bytes were another protocol (C{why} says which and
        what to change), and the link is closed: log it, in one line, within
        L{warnings}' budget.
        """
        self.warnings.warn("misdirected", "protocol error: {why}; connection closed", why=why)

    def protocolError(self, why: str) -> None:
        """
        The peer broke the protocol: say what it did (in one short line, at
        a bounded rate), then abort the link without waiting to flush
        anything to a peer we no longer trust.
        """
        if self._state is LinkState.CLOSED:
            return
        why = clip(why)
        self.warnings.warn(
            "protocol error",
            "protocol error from {peer}: {why}; closing the connection",
            peer=peerName(self.transport),
            why=why,
        )
        self.close(f"protocol error: {why}", abort=True)

    def frame_ping(self, ping: Ping) -> None:
        self.sendFrame(Frame(pong=Pong(nonce=ping.nonce)))
        if ping.round_trip_micros and not self._drives:
            # The driving end measured it: no need to ping for it.
            self.roundTripSeconds = ping.round_trip_micros / 1e6
            self._roundTripDue = self.clock.seconds() + self._roundTripEvery()

    def frame_pong(self, pong: Pong) -> None:
        # Only the latest outstanding ping matters for the round trip.
        if self._pingOut is not None and self._pingOut[0] == pong.nonce:
            self.roundTripSeconds = self.clock.seconds() - self._pingOut[1]
            self._pingOut = None

    def frame_goodbye(self, goodbye: Goodbye) -> None:
        reason = clip(goodbye.reason)
        self._log.info(
            "{peer} is going away: {reason}", peer=peerName(self.transport), reason=reason
        )
        self.goodbyeReceived(reason)

    def goodbyeReceived(self, reason: str) -> None:
        """
        The peer announced it is leaving (C{reason} already clipped); by
        default, let it close the link.
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
        """
        Tell the peer this end is leaving, and drain: no new work.
        """
        if self.established:
            self.sendFrame(Frame(goodbye=Goodbye(reason=reason)))
            self.drain()

    # Handshake and heartbeats.

    def handshakeDone(
        self,
        heartbeatPeriod: float,
        maxFrameBytes: int,
        peerMaxFrameBytes: int,
        drives: bool = True,
    ) -> None:
        """
        HANDSHAKE to ESTABLISHED: open the link for ordinary traffic, raise
        the frame limits to the negotiated ones and start liveness checks
        (a period of 0 disables them).

        @param drives: whether this end pings an idle link (see the class
            docstring); the other only answers, and aborts a peer silent
            for L{SILENT_PERIODS_BEFORE_ABORT} periods all the same.
        """
        assert self._state is LinkState.HANDSHAKE, self._state
        self._state = LinkState.ESTABLISHED
        now = self.establishedAt = self.clock.seconds()
        self.MAX_LENGTH = maxFrameBytes
        self.peerMaxFrameBytes = peerMaxFrameBytes
        if heartbeatPeriod > 0:
            self._heartbeatPeriod = heartbeatPeriod
            self._drives = drives
            # The driver measures the round trip half a period in; the
            # answering end waits for the driver's pings to tell it, and
            # its own measurement comes due only after the driver's second.
            self._roundTripDue = now + (heartbeatPeriod / 2 if drives else self._roundTripEvery())
            self._sweep.serve(heartbeatPeriod)
            self._sweep.schedule(self, self._nextDeadline(now))

    def _roundTripEvery(self) -> float:
        """
        How long after its last measurement the round trip is measured
        again: the driver's interval, and one period more at the answering
        end, which only measures it itself when the driver's pings do not
        tell it in time (the driver's first ping has nothing to tell).
        """
        periods = ROUND_TRIP_EVERY_PERIODS + (0 if self._drives else 1)
        return periods * self._heartbeatPeriod

    def _nextDeadline(self, now: float) -> float:
        """
        When this link next needs looking at: its abort for silence, its
        next ping if idle, or its next round trip, whichever comes first.
        """
        period = self._heartbeatPeriod
        due = min(self._lastReceived + SILENT_PERIODS_BEFORE_ABORT * period, self._roundTripDue)
        if self._drives:
            idleSince = max(self._lastPing, min(self._lastSent, self._lastReceived))
            due = min(due, idleSince + IDLE_PERIODS_BEFORE_PING * period)
        return due

    def deadlinePassed(self, now: float) -> float | None:
        """
        The sweep's call when a deadline passed: abort a silent link; ping
        one that was idle either way for L{IDLE_PERIODS_BEFORE_PING} periods
        (when this end drives), and one whose round trip is due to be
        measured again. Only timestamps are compared: sending and receiving
        frames cost nothing more.
        """
        if not self.isOpen():
            return None
        period = self._heartbeatPeriod
        silence = now - self._lastReceived
        if silence > SILENT_PERIODS_BEFORE_ABORT * period:
            self._log.warn(
                "nothing heard from {peer} for {silence:.1f}s; aborting the link",
                peer=peerName(self.transport),
                silence=silence,
            )
            self.peerSilent()
            self.close(f"nothing heard for {silence:.1f}s", abort=True)
            return None
        idle = now - max(self._lastPing, min(self._lastSent, self._lastReceived))
        if (self._drives and idle >= IDLE_PERIODS_BEFORE_PING * period) or (
            now >= self._roundTripDue
        ):
            self._roundTripDue = now + self._roundTripEvery()
            self._ping(now)
        return self._nextDeadline(now)

    def peerSilent(self) -> None:
        """
        The peer sent nothing for L{SILENT_PERIODS_BEFORE_ABORT} periods,
        and the link is about to be aborted for it.
        """

    def _ping(self, now: float) -> None:
        nonce = self._nextPing
        self._nextPing += 1
        self._pingOut = (nonce, now)
        self._lastPing = now
        micros = 0
        if self.roundTripSeconds is not None:
            micros = max(1, min(int(self.roundTripSeconds * 1e6), 0xFFFFFFFF))
        self.sendFrame(Frame(ping=Ping(nonce=nonce, round_trip_micros=micros)))

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
        why = self.closeReason or self._lost.getErrorMessage()
        return SessionLost(f"link to {peerName(self.transport)} lost: {why}")

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

    def _stopHeartbeat(self) -> None:
        self._sweep.cancel(self)

    def connectionLost(self, reason: Failure = Failure(Exception("connection lost"))) -> None:
        self._state = LinkState.CLOSED
        self._lost = reason
        if self._linkWarnings is not None:
            self._linkWarnings.flush()
        self._stopHeartbeat()
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
