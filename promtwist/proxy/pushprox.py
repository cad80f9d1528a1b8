# -*- test-case-name: promtwist.test.test_pushprox -*-
"""
Unmodified PushProx 0.2 clients as scrape sources: C{POST /poll},
C{POST /push} and C{GET /clients} on the scrape port.

A PushProx client holds one long poll open (C{POST /poll}, its FQDN as the
body); the proxy answers it with the next scrape for that FQDN, written as
an HTTP request (L{promtwist.proxy.pushwire}); the client fetches it and
pushes the target's answer back (C{POST /push}), matched to the scrape by
its C{Id} header. Here each client is an agent of the registry
(L{PushProxClient}): it claims its FQDN as promtwist agents claim targets,
so the registry's ownership rules (one holder, standbys promoted when it
leaves) decide who serves an FQDN two clients claim, and the scrape handler
sends it scrapes through the relay like any agent.

Where PushProx fails, this does not:

  - a poll whose connection closed is forgotten at once (L{Poll} notices
    the close), so it never takes a scrape; a scrape with no live poll
    waits for the next one, within its deadline, and fails with a reason
    if none comes (a client that stops without closing still has its held
    poll take one scrape, which fails at its deadline saying so: nothing
    tells a frozen client from a slow one);
  - a poll is held at most C{pollHoldSecs}, then answered with PushProx's
    own expiry (408, which the client answers with a new poll), so an idle
    client keeps polling, and stays listed, however rarely it is scraped;
    a client is forgotten only C{clientGraceSecs} after its last poll
    ended without another;
  - the deadline always reaches the client (PushProx's refuses a scrape
    without one), internal and hop-by-hop headers are stripped both ways,
    and a push is read within the proxy's content-size limit;
  - a push is accepted only from the identity the scrape was sent to.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, auto
from itertools import count

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.addresses import peerAddress
from promtwist.config.settings import Identity
from promtwist.hostkeys import (
    BadTarget,
    claimsPort,
    hostKey,
    isHostKey,
    keyTarget,
    parseHostKey,
)
from promtwist.httpguard import AllowedNetworks
from promtwist.logs import RepeatedWarnings, clip, observer
from promtwist.metrics import MetricsRegistry
from promtwist.protocol.promtwist_pb2 import Frame, Outcome, ScrapeResponse
from promtwist.proxy.admission import hostOf
from promtwist.proxy.answers import ScrapeFailed, textAnswer
from promtwist.proxy.auth import ANONYMOUS, AuthenticationFailed, Authenticator
from promtwist.proxy.exchange import Exchange, RequestBody
from promtwist.proxy.httpserver import Guard, Handler, RefusedRequest
from promtwist.proxy.proxyurl import SCHEME_PARAM, Written
from promtwist.proxy.pushmetrics import PushProxMetrics
from promtwist.proxy.pushwire import (
    MAX_PUSH_HEAD_BYTES,
    BadPush,
    ScrapeInstruction,
    parsePush,
    pushedId,
)
from promtwist.proxy.registry import AgentHandle, Overlap, RegistrationRefused, Registry
from promtwist.proxy.relay import ScrapeCall
from promtwist.proxy.stream import AnswerHead, ScrapeStream, TransferMetrics

# PushProx's answer to a poll it gives up on; its client polls again.
POLL_EXPIRED = "Error WaitForScrapeInstruction: request is expired"
# The longest FQDN a client may register (RFC 1035's limit on a name).
MAX_FQDN = 253
# The scrape port's paths for PushProx clients, by method.
POLL_PATH = b"/poll"
PUSH_PATH = b"/push"
CLIENTS_PATH = b"/clients"
RESERVED_PATHS = ("poll", "push", "clients")

_log = Logger(observer=observer)

Answered = Callable[[int], None]
"""
Told the status a PushProx request was answered with, for the metrics.
"""


def refuse(exchange: Exchange, answered: Answered, status: int, reason: str) -> None:
    """
    Answer with C{status} and a one-line reason, counted.
    """
    textAnswer(exchange, status, reason)
    answered(status)


class PollState(Enum):
    """
    Where a held poll is: C{WAITING} for a scrape, or over because it
    C{CARRIED} one, C{EXPIRED}, or is C{GONE} (its client closed it).
    """

    WAITING = auto()
    CARRIED = auto()
    EXPIRED = auto()
    GONE = auto()


class Poll:
    """
    One C{POST /poll}, held until it carries a scrape, expires, or its
    client goes.
    """

    def __init__(
        self,
        exchange: Exchange,
        ended: Callable[[Poll, str], None],
        clock: IReactorTime,
        hold: float,
        answered: Answered,
    ) -> None:
        """
        @param ended: called with the poll and why it ended, once, unless
            it ended by carrying a scrape.
        @param answered: called with the status the poll was answered with.
        """
        self.exchange = exchange
        self.state = PollState.WAITING
        self._ended = ended
        self._answered = answered
        self._timer: IDelayedCall | None = clock.callLater(hold, self.expire)
        exchange.notifyGone(self._gone)

    def carry(self, request: bytes) -> None:
        """
        Answer the waiting poll with a scrape, C{request}.
        """
        assert self.state is PollState.WAITING, f"a poll {self.state.name} cannot carry"
        self._over(PollState.CARRIED)
        exchange = self.exchange
        exchange.setStatus(200)
        exchange.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        exchange.setHeader(b"Cache-Control", b"no-store")
        exchange.finishWith(request)
        self._answered(200)

    def expire(self, why: str = "held for its longest") -> None:
        """
        Answer the poll with PushProx's expiry, if it still waits.
        """
        if self.state is not PollState.WAITING:
            return
        self._over(PollState.EXPIRED)
        textAnswer(self.exchange, 408, POLL_EXPIRED)
        self._answered(408)
        self._ended(self, f"expired ({why})")

    def _gone(self) -> None:
        if self.state is not PollState.WAITING:
            return
        self._over(PollState.GONE)
        self._ended(self, "was closed by the client")

    def _over(self, state: PollState) -> None:
        self.state = state
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class ScrapeState(Enum):
    """
    A scrape for a PushProx client: C{QUEUED} until a poll carries it,
    then C{SENT} until its push or deadline, then C{DONE}.
    """

    QUEUED = auto()
    SENT = auto()
    DONE = auto()


class PendingScrape:
    """
    One scrape sent, or to be sent, to a PushProx client: the
    L{promtwist.proxy.stream.StreamLink} of its L{ScrapeStream}, so the
    relay treats it as any agent's. The client's push becomes the stream's
    one answer head, checked as an agent's is.
    """

    def __init__(
        self,
        client: PushProxClient,
        number: int,
        instruction: ScrapeInstruction,
        clock: IReactorTime,
        timeout: float,
        maxLength: int,
    ) -> None:
        """
        @raise ValueError: if the scrape cannot be written for a poll (see
            L{ScrapeInstruction.serialize}); nothing is started then.
        """
        self.client = client
        self.name = client.name
        self.MAX_LENGTH = maxLength
        self.scrapeId = instruction.scrapeId
        self.request = instruction.serialize()
        self.state = ScrapeState.QUEUED
        self.stream = ScrapeStream(self, number)
        self._timeout = timeout
        # When it times out, on the clock: what its push may take until.
        self.deadline = clock.seconds() + timeout
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._timedOut)

    def sent(self) -> None:
        """
        A poll carried the scrape: its push is awaited now.
        """
        self.state = ScrapeState.SENT

    def answered(self, status: int, contentType: str, contentEncoding: str, body: bytes) -> None:
        """
        The client pushed the target's answer.
        """
        if status >= 300:
            text = body.decode("utf-8", "replace").strip().splitlines()
            reason = f"PushProx client {self.name!r}: HTTP {status}" + (
                f": {clip(text[0], 200)}" if text else ""
            )
            response = ScrapeResponse(status=status, reason=reason, last=True)
        else:
            response = ScrapeResponse(
                status=status,
                content_type=contentType,
                content_encoding=contentEncoding,
                content_length=len(body),
                body=body,
                last=True,
            )
        self.stream.responseReceived(response)

    def refused(self, status: int, why: str) -> None:
        """
        The client's push for this scrape was refused (C{status}, 413 or
        400, for C{why}): the scrape ends now with the reason, as an
        agent's answer over the content limit or breaking the protocol
        would end it (413, 502), not at its deadline.
        """
        reason = f"PushProx client {self.name!r} pushed {why}"
        if status == 413:
            response = ScrapeResponse(outcome=Outcome.TOO_LARGE, reason=reason, last=True)
        else:
            response = ScrapeResponse(status=502, reason=reason, last=True)
        self.client.hub.news.warn("PushProx push refusal", "{reason}", reason=reason)
        self.stream.responseReceived(response)

    def _timedOut(self) -> None:
        self._timer = None
        if self.state is ScrapeState.QUEUED:
            outcome = Outcome.UNREACHABLE
            reason = (
                f"no poll from PushProx client {self.name!r} within {self._timeout:g}s"
                f" ({self.client.absence()})"
            )
        else:
            outcome = Outcome.TIMED_OUT
            reason = (
                f"PushProx client {self.name!r} took the scrape and pushed no answer"
                f" within {self._timeout:g}s"
            )
        self.stream.responseReceived(ScrapeResponse(outcome=outcome, reason=reason, last=True))

    # StreamLink.

    @property
    def metrics(self) -> TransferMetrics:
        return self.client.hub.transfers

    def forget(self, scrapeId: int) -> None:
        if self.state is ScrapeState.DONE:
            return
        self.state = ScrapeState.DONE
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.client.forget(self)

    def sendIfConnected(self, frame: Frame) -> None:
        # Cancelling (the only frame a finished answer draws) is forget's
        # business: a PushProx client cannot be told to stop.
        pass

    def violation(self, why: str) -> None:
        self.client.hub.news.warn(
            "PushProx protocol violation",
            "PushProx client {client}: {why}",
            client=self.name,
            why=why,
        )


@dataclass(frozen=True)
class ClientKey:
    """
    What tells one PushProx client from another: PushProx's clients say
    only their FQDN, so two that share one are told apart by the identity
    they proved and the host they poll from.

    @ivar fqdn: the FQDN as the client spells it, which its own check
        compares the scrapes it is sent with, byte for byte; two spellings
        of one name (C{node1}, C{NODE1.}) are two clients of one host, and
        the registry's ownership rule decides between them.
    @ivar host: an IPv4 address, or the /64 of an IPv6 one
        (L{promtwist.proxy.admission.hostOf}): an IPv6 host takes new
        addresses in its /64 as it goes (temporary addresses, RFC 8981),
        and would otherwise be a new client, a standby, at each.
    """

    fqdn: str
    identity: str
    host: str


class PushProxClient:
    """
    One PushProx client: an agent of the registry (L{AgentHandle}) that
    serves every port of its FQDN, and a scrape source.

    @ivar role: C{"holder"} while its scrapes come to it, C{"standby"}
        while another client holds its FQDN.
    @ivar poll: its held poll, if one waits.
    """

    consolidated = False
    launchId = ""
    kind = "PushProx client"

    def __init__(
        self, hub: PushProxHub, key: ClientKey, address: str, agentId: str, identity: Identity
    ) -> None:
        """
        @param address: the address it polled from.
        """
        self.hub = hub
        self.agentId = agentId
        self.identity = identity
        self.fqdn = key.fqdn
        self.name = key.fqdn
        self.key = key
        self.hostName = address
        self.role = "holder"
        self.poll: Poll | None = None
        self._queue: deque[PendingScrape] = deque()
        # Scrapes a poll carried whose answers have not ended.
        self._sent: set[PendingScrape] = set()
        self._lastPollEnded = hub.clock.seconds()
        self._lastEnding = "it has not polled yet"
        self._grace: IDelayedCall | None = None

    @property
    def described(self) -> str:
        """
        The client as the log names it: all that tells it from another.
        """
        return f"{self.fqdn} (identity {self.identity.name!r}, from {self.hostName})"

    def polled(self, exchange: Exchange, answered: Answered, address: str) -> None:
        """
        A new poll came, from C{address}: hold it, unless a scrape waits
        for it. An older poll still held is answered with PushProx's
        expiry, as PushProx does: its client no longer waits on it.
        """
        self.hostName = address
        old = self.poll
        self.poll = Poll(exchange, self._pollEnded, self.hub.clock, self.hub.pollHold, answered)
        if old is not None:
            old.expire("a newer poll came")
        self._sendNext()

    def moved(self, key: ClientKey, address: str) -> None:
        """
        The client polls from another host now (C{key}'s, at C{address}):
        a NAT that changed, another front end, the other address family.
        """
        self.hub.news.info(
            "PushProx client move",
            "PushProx client {client} polls from {address} now",
            client=self.described,
            address=address,
        )
        self.key = key
        self.hostName = address

    @property
    def polling(self) -> bool:
        """
        Whether the client is in its round of polls: it holds a poll, or a
        scrape its last poll carried awaits its push. Between rounds (its
        poll expired or was closed, or it pushed and has not polled again)
        it is not.
        """
        return self.poll is not None or bool(self._sent)

    def _sendNext(self) -> None:
        """
        Send the oldest queued scrape with the held poll, if there are both
        (a held poll waits: one that ended is no longer held).
        """
        poll = self.poll
        if poll is None or not self._queue:
            return
        scrape = self._queue.popleft()
        self.poll = None
        poll.carry(scrape.request)
        scrape.sent()
        self._sent.add(scrape)
        self._lastPollEnded = self.hub.clock.seconds()
        self._lastEnding = "its last poll carried a scrape"
        self._startGrace()

    def _pollEnded(self, poll: Poll, why: str) -> None:
        if poll is not self.poll:
            return
        self.poll = None
        self._lastPollEnded = self.hub.clock.seconds()
        self._lastEnding = f"its last poll {why}"
        self._startGrace()

    def _startGrace(self, seconds: float | None = None) -> None:
        """
        Forget the client C{clientGrace} after its last poll ended, unless
        another is held by then. A client that keeps polling ends a poll
        with every scrape and holds the next at once: rather than a timer
        started and cancelled for each, one timer runs until the grace
        could first be over and looks then (L{_graceOver}).
        """
        if self._grace is None:
            self._grace = self.hub.clock.callLater(
                self.hub.clientGrace if seconds is None else seconds, self._graceOver
            )

    def _graceOver(self) -> None:
        self._grace = None
        if self.poll is not None:
            # Its grace starts again when this poll ends.
            return
        left = self._lastPollEnded + self.hub.clientGrace - self.hub.clock.seconds()
        if left > 0:
            self._startGrace(left)
        else:
            self.hub.forgetClient(self, f"no poll for {self.hub.clientGrace:g}s")

    def absence(self) -> str:
        """
        Why no poll waits, for a scrape's reason.
        """
        ago = self.hub.clock.seconds() - self._lastPollEnded
        return f"{self._lastEnding} {ago:.1f}s ago"

    def scrape(self, call: ScrapeCall) -> ScrapeStream:
        """
        Send C{call} with the next poll: now if one waits.
        """
        scrape = self.hub.newScrape(self, call)
        self._queue.append(scrape)
        self._sendNext()
        return scrape.stream

    def forget(self, scrape: PendingScrape) -> None:
        if scrape in self._queue:
            self._queue.remove(scrape)
        self._sent.discard(scrape)
        self.hub.scrapeEnded(scrape)

    def stop(self, why: str) -> None:
        """
        The client is forgotten: its poll expires, its queued scrapes fail.
        """
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        poll, self.poll = self.poll, None
        if poll is not None:
            poll.expire(why)
        for scrape in list(self._queue):
            scrape.stream.linkLost(f"PushProx client {self.name!r} forgotten: {why}")

    # AgentHandle.

    def pathRoleChanged(
        self,
        path: str,
        role: str,
        reason: str,
        holder: AgentHandle,
        since: float,
        position: int = 0,
    ) -> None:
        self.role = role
        self.hub.news.info(
            "PushProx client role",
            "PushProx client {client} is now {role} ({reason})",
            client=self.described,
            role=role,
            reason=reason,
        )


class PushProxHub:
    """
    The PushProx clients the scrape port knows, and its three paths for
    them.

    @ivar clients: every client, by L{ClientKey}.
    @ivar pollHold: seconds a poll is held before it expires.
    @ivar clientGrace: seconds a client without a poll is kept.
    @ivar maxContent: the most bytes a pushed answer's body may have, as
        for an agent's answer (C{proxy.internal.maxUnzippedContentSizeMBytes}).
    @ivar pushLimit: the most bytes a push may have: that and its head.
    """

    def __init__(
        self,
        registry: Registry,
        authenticator: Authenticator,
        clock: IReactorTime,
        *,
        pollHold: float,
        clientGrace: float,
        maxContentBytes: int,
        metricsRegistry: MetricsRegistry,
        transfers: TransferMetrics,
        allowedNetworks: Sequence[str] = (),
    ) -> None:
        """
        @param authenticator: the agents' authenticator (a reload
            reconfigures it): PushProx clients prove identities as agents
            do.
        @param metricsRegistry: where PushProx's metric series are kept.
        @param transfers: the proxy's counts of answers that failed on the
            way, which its scrape streams report to (a pushed answer comes
            whole, so only as the streams' rules say).
        @param allowedNetworks: the networks polls and pushes may come
            from; empty admits every client the scrape port admits.
        """
        self.registry = registry
        self.authenticator = authenticator
        self.allowed = AllowedNetworks(allowedNetworks, clock)
        self.transfers = transfers
        self.clock = clock
        self.pollHold = pollHold
        self.clientGrace = clientGrace
        self.maxContent = maxContentBytes
        self.pushLimit = maxContentBytes + MAX_PUSH_HEAD_BYTES
        self.clients: dict[ClientKey, PushProxClient] = {}
        self._scrapes: dict[str, PendingScrape] = {}
        self._ids = count(1)
        self._numbers = count(1)
        self.metrics = PushProxMetrics(metricsRegistry, lambda: len(self.clients))
        # What clients make happen at will (registering from ever new
        # addresses, say) is logged at a bounded rate.
        self.news = RepeatedWarnings(_log, clock)
        registry.overlapObservers.append(self._overlapped)

    def _overlapped(self, overlap: Overlap) -> None:
        """
        An agent's target on one port of a client's FQDN takes that port's
        scrapes from the client, as an exact claim comes first: say so,
        whichever came first, since nothing else would tell the operator
        why a client that polls gets none of that port's scrapes.
        """
        client, agent = overlap.anyPortHolder, overlap.portHolder
        if not isinstance(client, PushProxClient):
            return
        self.news.warn(
            "PushProx client port taken by an agent",
            "{agent} serves target {target}, so its scrapes go to it, not to PushProx client"
            " {client}, which serves {host} on every other port: a claim on a port comes"
            " before a claim on every port of its host",
            agent=f"{agent.kind} {clip(agent.name)!r} on {clip(agent.hostName)}",
            target=keyTarget(overlap.port),
            client=client.described,
            host=keyTarget(overlap.anyPort),
        )

    # The scrape port's body policy.

    def bodyLimit(self, method: bytes, path: bytes) -> int | None:
        """
        The body sizes C{POST /poll} and C{POST /push} take; nothing else
        takes one.
        """
        if method != b"POST":
            return None
        if path == POLL_PATH:
            return MAX_FQDN + 64
        if path == PUSH_PATH:
            return self.pushLimit
        return None

    def front(self, handler: Handler) -> Handler:
        """
        The scrape port's handler: PushProx's requests answered here, every
        other one by C{handler}.
        """

        def answer(exchange: Exchange) -> None:
            if not self.route(exchange):
                handler(exchange)

        return answer

    def guard(self, scrapeSide: Guard | None) -> Guard:
        """
        The scrape port's guard: for C{POST /poll} and C{POST /push}, the
        PushProx clients' own check (their network, and the identity their
        C{Authorization} proves: L{_identity}), which the server applies
        before it reads their bodies; for every other request the scrape
        side's credentials check, C{scrapeSide}, if any. C{/clients} stays
        behind C{scrapeSide}, as discovery does.
        """

        def guarded(exchange: Exchange) -> bool:
            if exchange.method == b"POST" and exchange.path in (POLL_PATH, PUSH_PATH):
                return self._identity(exchange, self._measure(exchange.path)) is not None
            return scrapeSide is None or scrapeSide(exchange)

        return guarded

    def bodySource(self, exchange: Exchange) -> str | None:
        """
        What a push's body counts against in the scrape port's budget of
        bodies in flight, asked once the guard has let it through: the host
        it comes from (an IPv6 one by its /64), and the identity its token
        proves, if any. By host, so that one client cannot hold the budget;
        by host for token clients too, since one identity may be a whole
        fleet's (C{proxy.agentToken}, a front end's one token), which would
        otherwise share one source's share.

        A poll's body is not counted (L{None}): it is an FQDN, bounded by
        L{bodyLimit}, and it is held for as long as the poll is, so a
        client's own held poll would make its push count as a second body
        of its source and lose the room kept for sources reading none.
        """
        if exchange.path != PUSH_PATH:
            return None
        host = hostOf(exchange.client)
        identity = self._prove(exchange.headers)
        if identity.name == ANONYMOUS.name:
            return host
        return f"identity {identity.name!r} on {host}"

    def pushDeadline(self, exchange: Exchange, start: bytes) -> float | None:
        """
        The port's L{BodyDeadline}: a push still arriving at the head's
        deadline may take as long as the scrape that C{start}, the part of
        it come, names has left, if that scrape waits for this identity's
        push. PushProx's proxy reads a push for as long as it takes; here
        it is bounded by the scrape's deadline, itself bounded by
        C{proxy.internal.scrapeRequestTimeoutSecs}.
        """
        if exchange.path != PUSH_PATH:
            return None
        try:
            identity = self._prove(exchange.headers)
        except AuthenticationFailed:
            # Its token was revoked by a reload while it came.
            return None
        scrape = self._waiting(start, identity)
        return scrape.deadline if scrape is not None else None

    def refused(self, request: RefusedRequest) -> None:
        """
        A poll or push the server refused before it reached the hub (its
        body undeclared, too large, over the budget, or too slow) is
        counted; a push whose start names a scrape ends that scrape with
        the reason.
        """
        path = request.path
        if request.method != b"POST" or path not in (POLL_PATH, PUSH_PATH):
            return
        status = request.refusal.status
        self.metrics.answered(path.decode("ascii"), status, request.seconds)
        if path != PUSH_PATH or not request.start:
            return
        try:
            identity = self._prove(request.headers)
        except AuthenticationFailed:
            return
        if status == 413:
            declared = request.headers.get(b"content-length", b"?").strip().decode("latin-1")
            why = (
                f"{declared} bytes, over the push limit of {self.pushLimit}: the content"
                f" limit of {self.maxContent} bytes"
                " (proxy.internal.maxUnzippedContentSizeMBytes) and 64 KiB for its head"
            )
        else:
            why = f"no whole answer: {request.refusal.reason}"
        self._pushRefused(request.start, identity, status, why)

    def _measure(self, path: bytes) -> Answered:
        """
        What counts a request for C{path}, begun now, once it is answered.
        """
        started = self.clock.seconds()
        name = path.decode("ascii")

        def answered(code: int) -> None:
            self.metrics.answered(name, code, self.clock.seconds() - started)

        return answered

    def route(self, exchange: Exchange) -> bool:
        """
        Answer C{exchange} if it is PushProx's (C{True}); else leave it.
        """
        method, path = exchange.method, exchange.path
        if method == b"POST" and path == POLL_PATH:
            handler = self.poll
        elif method == b"POST" and path == PUSH_PATH:
            handler = self.push
        elif path == CLIENTS_PATH and method in (b"GET", b"HEAD"):
            handler = self.listClients
        else:
            return False
        handler(exchange, self._measure(path))
        return True

    # The three paths.

    def poll(self, exchange: Exchange, answered: Answered) -> None:
        identity = self._identity(exchange, answered)
        if identity is None:
            return
        try:
            fqdn = bytes(exchange.body).decode("ascii").strip()
        except UnicodeDecodeError:
            why = "the poll's body must be the client's FQDN in ASCII"
            return refuse(exchange, answered, 400, why)
        ip = peerAddress(exchange.client)
        address = str(ip) if ip is not None else "local"
        key = ClientKey(fqdn, identity.name, hostOf(exchange.client) or address)
        # A known client's FQDN was checked when it registered.
        client = self.clients.get(key) or self._moved(key, address)
        if client is None:
            try:
                claim = hostKey(fqdn, None)
            except BadTarget as e:
                return refuse(
                    exchange, answered, 400, f"the poll's body must be the client's FQDN: {e}"
                )
            # Every client is an agent of the registry, so clients count
            # against the agents' cap; a link's handshake counts links
            # only, so a flood of polls cannot keep agents out.
            maxAgents = self.registry.limits.max_agents
            if self.registry.agentCount() >= maxAgents:
                why = (
                    f"PushProx client {fqdn!r} refused: this proxy already serves {maxAgents}"
                    " agents and PushProx clients (proxy.internal.maxAgents)"
                )
                return refuse(exchange, answered, 503, why)
            client = PushProxClient(self, key, address, f"pushprox-{next(self._ids)}", identity)
            self.registry.addAgent(client)
            try:
                placement = self.registry.registerPath(client, claim, fqdn, {})
            except RegistrationRefused as e:
                self.registry.removeAgent(client, "unregistered")
                return refuse(exchange, answered, 403, f"PushProx client {fqdn!r} refused: {e}")
            self.clients[key] = client
            if placement.position:
                client.role = "standby"
            self.news.info(
                "PushProx client registration",
                "PushProx client {client} registered as {role}",
                client=client.described,
                role=client.role,
            )
        client.polled(exchange, answered, address)

    def _moved(self, key: ClientKey, address: str) -> PushProxClient | None:
        """
        The known client that a poll under a new C{key} (from C{address})
        comes from, moved to another host, if any; it is known under
        C{key} from now on.

        An anonymous client has only its host to be known by, so a poll
        from a new host is another client: it waits as a standby until the
        holder is forgotten, C{clientGraceSecs} after its last poll.
        Taking it for the holder moved whenever the holder held no poll
        would let any host take the FQDN of a client that polls, since
        every client is without a held poll for a moment after each scrape
        and each expiry.

        A client that proved an identity is known by it too. An identity
        declared to be one agent's (C{perAgent}) proves the same client
        wherever it polls from, so it moves at once, as in PushProx, and as
        the registry lets such an agent take its paths over. A shared
        identity proves nothing between its clients: a poll from a new
        host is the holder moved only while the holder is between rounds
        of polls (L{PushProxClient.polling}), which is when a client that
        moved polls from its new host; while the holder polls, the new
        host's client waits as a standby, as an anonymous one does.
        """
        if key.identity == ANONYMOUS.name:
            return None
        for client in self.clients.values():
            old = client.key
            if (old.fqdn, old.identity) != (key.fqdn, key.identity):
                continue
            if client.identity.perAgent or not client.polling:
                del self.clients[old]
                self.clients[key] = client
                client.moved(key, address)
                return client
        return None

    def push(self, exchange: Exchange, answered: Answered) -> None:
        identity = self._identity(exchange, answered)
        if identity is None:
            return
        try:
            answer = parsePush(exchange.body)
        except BadPush as e:
            self._pushRefused(exchange.body, identity, 400, f"an answer that is not one: {e}")
            return refuse(exchange, answered, 400, f"bad push: {e}")
        scrape = self._scrapes.get(answer.scrapeId)
        if scrape is None or scrape.state is not ScrapeState.SENT:
            return refuse(
                exchange,
                answered,
                404,
                f"no scrape {answer.scrapeId} waits for an answer"
                " (it ended: answered, timed out, or Prometheus gave up)",
            )
        if scrape.client.identity != identity:
            return refuse(
                exchange,
                answered,
                403,
                f"scrape {answer.scrapeId} was not sent to this client's identity",
            )
        if len(answer.body) > self.maxContent:
            why = self._tooLarge(f"a body of {len(answer.body)} bytes")
            scrape.refused(413, why)
            return refuse(exchange, answered, 413, f"push refused: {why}")
        scrape.answered(
            answer.status,
            answer.header(b"content-type"),
            answer.header(b"content-encoding"),
            answer.body,
        )
        exchange.setStatus(200)
        exchange.finishWith(b"")
        answered(200)

    def _tooLarge(self, what: str) -> str:
        return (
            f"{what}, over the content limit of {self.maxContent} bytes"
            " (proxy.internal.maxUnzippedContentSizeMBytes)"
        )

    def _pushRefused(self, data: RequestBody, identity: Identity, status: int, why: str) -> None:
        """
        A push that could not be taken, C{data} being it or the start of
        it, was refused with C{status}: the scrape its head names, if one
        waits for this identity's push, ends with C{why}.
        """
        scrape = self._waiting(data, identity)
        if scrape is not None:
            scrape.refused(status, why)

    def _waiting(self, data: RequestBody, identity: Identity) -> PendingScrape | None:
        """
        The scrape that a push, C{data} being it or the start of it, names,
        if that scrape waits for C{identity}'s push.
        """
        scrapeId = pushedId(data)
        scrape = self._scrapes.get(scrapeId) if scrapeId is not None else None
        if (
            scrape is not None
            and scrape.state is ScrapeState.SENT
            and scrape.client.identity == identity
        ):
            return scrape
        return None

    def listClients(self, exchange: Exchange, answered: Answered) -> None:
        """
        PushProx's C{/clients}: a target group per host served, for
        C{file_sd} or C{http_sd}.
        """
        groups = [{"targets": [host], "labels": None} for host in self.listedHosts()]
        exchange.setStatus(200)
        exchange.setHeader(b"Content-Type", b"application/json")
        exchange.setHeader(b"Cache-Control", b"no-store")
        # Ended by a newline, as by Go's json.Encoder, which PushProx uses.
        exchange.finishWith(json.dumps(groups, separators=(",", ":")).encode("ascii") + b"\n")
        answered(200)

    def servedFQDNs(self) -> list[str]:
        """
        The FQDNs a client holds, sorted.
        """
        return sorted({c.fqdn for c in self.clients.values() if c.role == "holder"})

    def listedHosts(self) -> list[str]:
        """
        What C{/clients} lists, sorted: the FQDNs clients hold, as they
        spell them, and the host of every C{host:port} an agent holds,
        each host once. A job that discovers its targets here keeps a host
        whose client is replaced by an agent declaring its targets, so
        clients can be replaced host by host.
        """
        hosts = {hostKey(fqdn, None): fqdn for fqdn in self.servedFQDNs()}
        for entry in self.registry.snapshot():
            if entry.agents and isHostKey(entry.path) and claimsPort(entry.path):
                host, _ = parseHostKey(entry.path)
                hosts.setdefault(hostKey(host, None), host)
        return sorted(hosts.values())

    def _identity(self, exchange: Exchange, answered: Answered) -> Identity | None:
        """
        The identity the client proves with C{Authorization: Bearer}, as an
        agent proves one with its token; or L{None}, having answered 401.
        """
        if not self.allowed.admits(exchange.client):
            refuse(
                exchange,
                answered,
                403,
                "PushProx clients are not allowed from this address"
                " (proxy.pushprox.allowedNetworks)",
            )
            return None
        try:
            return self._prove(exchange.headers)
        except AuthenticationFailed as e:
            exchange.addHeader(b"WWW-Authenticate", b'Bearer realm="promtwist"')
            refuse(exchange, answered, 401, f"PushProx client not authenticated: {e}")
            return None

    def _prove(self, headers: dict[bytes, bytes]) -> Identity:
        """
        The identity C{headers}' C{Authorization: Bearer} proves.

        Another scheme is no token: a front end's Basic credentials, or
        those Go sends for a C{--proxy-url} with user info, are the front
        end's business, so they are no refusal where clients need no
        token, and where one is required the refusal says which header
        the proxy wants.

        @raise AuthenticationFailed: if they prove none.
        """
        value = headers.get(b"authorization", b"")
        scheme, _, token = value.strip().partition(b" ")
        if scheme.lower() == b"bearer":
            return self.authenticator.authenticate(token.strip().decode("latin-1"), None)
        try:
            return self.authenticator.authenticate("", None)
        except AuthenticationFailed:
            sent = (
                f"this one sent Authorization: {clip(scheme.decode('latin-1'), 20)} ..., which"
                " the proxy does not check"
                if value
                else "this one sent none"
            )
            raise AuthenticationFailed(
                "this proxy requires PushProx clients to send Authorization: Bearer <token>"
                f" with an agent token (a front end adds it), and {sent}"
            ) from None

    # Scrapes.

    def newScrape(self, client: PushProxClient, call: ScrapeCall) -> PendingScrape:
        url, hostPort = targetOf(call, client.fqdn)
        headers = (
            (b"Accept", call.accept),
            (b"Accept-Encoding", call.acceptEncoding),
            (b"Authorization", call.authorization),
        )
        instruction = ScrapeInstruction(
            str(uuid.uuid4()),
            url,
            hostPort,
            tuple((name, value.encode("latin-1")) for name, value in headers if value),
            call.agentTimeout,
        )
        scrape = PendingScrape(
            client, next(self._numbers), instruction, self.clock, call.agentTimeout, self.pushLimit
        )
        self._scrapes[scrape.scrapeId] = scrape
        scrape.stream.head.addCallbacks(self._proxied, self._proxiedFailure)
        return scrape

    def _proxied(self, head: AnswerHead) -> AnswerHead:
        self.metrics.proxied(head.status)
        return head

    def _proxiedFailure(self, failure: Failure) -> Failure:
        # A scrape Prometheus gave up on was answered nothing.
        if isinstance(failure.value, ScrapeFailed):
            self.metrics.proxied(failure.value.status)
        return failure

    def scrapeEnded(self, scrape: PendingScrape) -> None:
        self._scrapes.pop(scrape.scrapeId, None)

    def forgetClient(self, client: PushProxClient, why: str, reason: str = "lost") -> None:
        """
        Forget C{client}: its FQDN goes to a standby, if one waits.

        @param reason: for the registry, a key of
            L{promtwist.proxy.registry.HOLDER_CHANGE_REASONS}.
        """
        if self.clients.get(client.key) is not client:
            return
        del self.clients[client.key]
        self.news.info(
            "PushProx client departure",
            "PushProx client {client} forgotten: {why}",
            client=client.described,
            why=why,
        )
        client.stop(why)
        self.registry.removeAgent(client, reason)

    def revoked(self, stillHolds: Callable[[Identity], bool]) -> None:
        """
        The identities were reloaded: forget the clients whose identity no
        longer holds; they prove a new one with their next poll.
        """
        for client in list(self.clients.values()):
            if not stillHolds(client.identity):
                self.forgetClient(client, "its identity changed on reload", "reload")

    def stop(self) -> None:
        """
        The proxy stops: every poll expires, every client is forgotten.
        """
        for client in list(self.clients.values()):
            self.forgetClient(client, "the proxy is stopping")


def targetOf(call: ScrapeCall, fqdn: str) -> tuple[str, str]:
    """
    The absolute URL a host-routed scrape asks for, and its authority, as
    PushProx's proxy sends them: the port and query as Prometheus wrote
    them (no default port added, C{_scheme} where it was), the host spelled
    as the client spells its C{fqdn} (routing ignores case and a final dot,
    the client's check does not). An https target is asked for with
    C{_scheme=https}, as PushProx's users write it: the client switches the
    scheme and drops it.
    """
    target = call.target
    assert target is not None, "PushProx clients serve host-routed scrapes only"
    written = call.written or Written(str(target.port), call.query)
    host = fqdn[1:-1] if fqdn.startswith("[") else fqdn
    address = f"[{host}]" if ":" in host else host
    if written.port:
        address += f":{written.port}"
    query = written.query
    if target.scheme == "https" and not any(
        param.startswith(f"{SCHEME_PARAM}=") for param in query.split("&")
    ):
        query = f"{query}&{SCHEME_PARAM}=https" if query else f"{SCHEME_PARAM}=https"
    url = f"http://{address}{call.path}"
    return (f"{url}?{query}" if query else url), address
