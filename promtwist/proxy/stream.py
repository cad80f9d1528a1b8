# -*- test-case-name: promtwist.test.test_stream -*-
"""
One scrape in flight on an agent link, as the proxy receives it.

The stream believes nothing the agent declares. The head is checked field by
field before anything of it reaches Prometheus (a known outcome, a status an
HTTP response can carry, header values that are latin-1 text without control
characters, a length that is a length). The body is counted: more bytes than
the agent declared, fewer by the last chunk, or more than the credit it was
granted are caught here, so no number from the agent ever frames a response
to Prometheus or sizes a buffer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from promtwist.logs import clip
from promtwist.protocol.promtwist_pb2 import (
    CancelScrape,
    Frame,
    Outcome,
    ScrapeChunk,
    ScrapeCredit,
    ScrapeResponse,
)
from promtwist.proxy.answers import FAILURES, ScrapeFailed, targetStatusType

# Body bytes an agent may have in flight for one scrape before the proxy has
# passed them on: bounds the proxy's memory per scrape whatever the body size.
SCRAPE_WINDOW_BYTES = 1024 * 1024

# Longest header value (content type or encoding) taken from an agent; a
# real one is far shorter.
MAX_HEADER_VALUE = 1024
# Longest reason passed on from an agent to Prometheus.
MAX_REASON = 1024
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class TransferMetrics(Protocol):
    """
    What the proxy's metrics count of answers sent in several frames
    (prometheus-proxy's chunked transfers).
    """

    def chunkInvalid(self, stage: str) -> None:
        """
        The answer failed validation at C{stage}: C{chunk} (a frame on the
        way) or C{summary} (the last frame's totals).
        """

    def transferAbandoned(self) -> None:
        """
        The link was lost before the answer's last frame.
        """


class StreamLink(Protocol):
    """
    What a stream needs from the link it arrived on.

    @ivar name: the agent's name, for reasons.
    @ivar MAX_LENGTH: the largest frame the link accepts from the agent.
    """

    name: str
    MAX_LENGTH: int

    @property
    def metrics(self) -> TransferMetrics:
        """
        Told of answers in several frames that failed.
        """

    def forget(self, scrapeId: int) -> None:
        """
        The scrape ended: drop it from the link's table.
        """

    def sendIfConnected(self, frame: Frame) -> None:
        """
        Send C{frame} unless the link is gone.
        """

    def violation(self, why: str) -> None:
        """
        The agent broke the protocol: close its link, failing every scrape
        on it with C{why}.
        """


class BodyConsumer(Protocol):
    """
    Where a scrape's body goes, chunk by chunk; exactly one of L{bodyDone}
    and L{bodyFailed} ends it.
    """

    def write(self, data: bytes) -> None: ...

    def bodyDone(self) -> None: ...

    def bodyFailed(self, failure: ScrapeFailed) -> None: ...


@dataclass(frozen=True)
class AnswerHead:
    """
    A target's successful answer head, checked.

    @ivar length: the body length the agent declared, or -1; never used to
        frame the response, only checked against what arrives.
    @ivar size: when the head carried the whole body, its length as counted
        here; else -1.
    """

    status: int
    contentType: str
    contentEncoding: str
    length: int
    size: int

    @property
    def last(self) -> bool:
        return self.size >= 0


class _Phase(Enum):
    AWAITING_HEAD = auto()
    BODY = auto()
    ENDED = auto()


def _headerValue(agent: str, name: str, value: str) -> str:
    """
    C{value} if it can be sent as an HTTP header value.

    @raise ScrapeFailed: naming the header and what is wrong with it.
    """
    if len(value) > MAX_HEADER_VALUE:
        raise ScrapeFailed.invalidAnswer(
            agent, f"{name} of {len(value)} characters (at most {MAX_HEADER_VALUE})"
        )
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ScrapeFailed.invalidAnswer(
            agent, f"{name} '{clip(value, 80)}' is not latin-1 text"
        ) from None
    if _CONTROL.search(value):
        raise ScrapeFailed.invalidAnswer(
            agent, f"{name} '{clip(value, 80)}' contains control characters"
        )
    return value


def _reason(response: ScrapeResponse | ScrapeChunk, fallback: str) -> str:
    return clip(response.reason, MAX_REASON) if response.reason else fallback


def checkHead(agent: str, response: ScrapeResponse) -> AnswerHead:
    """
    The head an agent sent, if it describes a successful answer to pass on.

    @raise ScrapeFailed: for a failure the agent reported, a target's
        non-2xx answer, or a head that breaks the protocol.
    """
    outcome = response.outcome
    if outcome != Outcome.SUCCESS:
        if outcome not in FAILURES:
            raise ScrapeFailed.invalidAnswer(agent, f"unknown outcome {outcome}")
        raise ScrapeFailed.ofOutcome(outcome, _reason(response, Outcome.Name(outcome)))
    status = response.status
    if not 200 <= status <= 599:
        raise ScrapeFailed.invalidAnswer(agent, f"status {status} is not a final HTTP status")
    if status >= 300:
        raise ScrapeFailed(
            status, targetStatusType(status), _reason(response, f"target answered HTTP {status}")
        )
    if response.content_length < -1:
        raise ScrapeFailed.invalidAnswer(agent, f"content length {response.content_length}")
    if response.last and response.content_length not in (-1, len(response.body)):
        raise ScrapeFailed.invalidAnswer(
            agent,
            f"declared {response.content_length} body bytes and sent {len(response.body)}",
        )
    return AnswerHead(
        status,
        _headerValue(agent, "content type", response.content_type),
        _headerValue(agent, "content encoding", response.content_encoding),
        response.content_length,
        len(response.body) if response.last else -1,
    )


@implementer(IPushProducer)
class ScrapeStream:
    """
    One scrape in flight on an agent link.

    L{head} fires with the checked L{AnswerHead}, or fails with
    L{ScrapeFailed}; cancelling it cancels the scrape at the agent. The body
    (starting with the head's own bytes) then goes to the consumer given to
    L{deliverBody}. Credit for more body bytes is returned to the agent as
    the consumer takes them, unless L{pauseProducing} was called (the HTTP
    client reads slowly), which holds the agent back.

    @ivar window: body bytes the agent may send before credit comes back.
    """

    def __init__(self, link: StreamLink, scrapeId: int, window: int = SCRAPE_WINDOW_BYTES) -> None:
        self.link = link
        self.scrapeId = scrapeId
        self.window = window
        self.head: Deferred[AnswerHead] = Deferred(lambda _: self.cancel())
        self._phase = _Phase.AWAITING_HEAD
        self._consumer: BodyConsumer | None = None
        # Body bytes that arrived before deliverBody, and how the body ended
        # if it ended before then.
        self._early: list[bytes] = []
        self._ending: ScrapeFailed | None = None
        self._cancelled = False
        self._declared = -1
        self._received = 0
        # Received and not yet returned to the agent as credit.
        self._unacknowledged = 0
        # Passed on, to be returned as credit once no longer paused.
        self._owed = 0
        # The agent sent its last frame for this scrape: no credit is owed
        # for what it sent, since nothing more will come.
        self._agentDone = False
        self._paused = False

    @property
    def ended(self) -> bool:
        return self._phase is _Phase.ENDED

    @property
    def transferring(self) -> bool:
        """
        Whether the answer's head arrived and its last frame has not.
        """
        return self._phase is _Phase.BODY

    # From the link.

    def responseReceived(self, response: ScrapeResponse) -> None:
        if self._phase is not _Phase.AWAITING_HEAD:
            failure = ScrapeFailed.invalidAnswer(self.link.name, "a second answer head")
            return self._bodyEnded(failure, agentDone=False)
        try:
            head = checkHead(self.link.name, response)
            self._declared = head.length
            self._account(response.body)
        except ScrapeFailed as failure:
            # A credit overrun may already have ended it with the link.
            if not self.ended:
                self._end()
                self.head.errback(failure)
            return
        self._phase = _Phase.BODY
        # A head that carries the whole body needs no credit back.
        self._agentDone = head.last
        if response.body:
            self._early.append(response.body)
        self.head.callback(head)
        if head.last:
            self._bodyEnded(None, agentDone=True)

    def chunkReceived(self, chunk: ScrapeChunk) -> None:
        if self._phase is _Phase.AWAITING_HEAD:
            # Chunks follow the head; a failure the agent could not report in
            # a head still ends the scrape here, not at its deadline.
            self._end()
            reason = _reason(chunk, "protocol error")
            self.head.errback(
                ScrapeFailed(502, "upstream_error", f"agent sent no answer head: {reason}")
            )
            return
        try:
            self._account(chunk.data)
        except ScrapeFailed as failure:
            self.link.metrics.chunkInvalid("chunk")
            return self._bodyEnded(failure, agentDone=False)
        self._agentDone = chunk.last
        if chunk.data:
            self._deliver(chunk.data)
        if chunk.last:
            self._bodyEnded(self._lastFailure(chunk), agentDone=True)

    def linkLost(self, why: str) -> None:
        failure = ScrapeFailed.disconnected(why)
        if self._phase is _Phase.AWAITING_HEAD:
            self._end()
            self.head.errback(failure)
        else:
            if self._phase is _Phase.BODY:
                self.link.metrics.transferAbandoned()
            self._bodyEnded(failure, agentDone=True)

    def _account(self, data: bytes) -> None:
        """
        Count body bytes from the agent.

        @raise ScrapeFailed: if they break the protocol; past the credit
            window the whole link is closed as well.
        """
        self._received += len(data)
        self._unacknowledged += len(data)
        # The agent may start a frame while it has credit left, so one frame
        # past the window is within the rules; anything more is not.
        if self._unacknowledged > self.window + self.link.MAX_LENGTH:
            why = (
                f"{self._unacknowledged} body bytes unacknowledged on scrape {self.scrapeId}, "
                f"past the credit window of {self.window}"
            )
            self.link.violation(why)
            raise ScrapeFailed.invalidAnswer(self.link.name, why)
        if 0 <= self._declared < self._received:
            raise ScrapeFailed.invalidAnswer(
                self.link.name, f"more than the {self._declared} body bytes it declared"
            )

    def _lastFailure(self, chunk: ScrapeChunk) -> ScrapeFailed | None:
        """
        How a last chunk ends the body: L{None} for a complete body.
        """
        outcome = chunk.outcome
        if outcome == Outcome.SUCCESS:
            if 0 <= self._declared != self._received:
                self.link.metrics.chunkInvalid("summary")
                return ScrapeFailed.invalidAnswer(
                    self.link.name,
                    f"declared {self._declared} body bytes and sent {self._received}",
                )
            return None
        if outcome not in FAILURES:
            self.link.metrics.chunkInvalid("summary")
            return ScrapeFailed.invalidAnswer(self.link.name, f"unknown outcome {outcome}")
        return ScrapeFailed.ofOutcome(outcome, _reason(chunk, Outcome.Name(outcome)))

    def _bodyEnded(self, failure: ScrapeFailed | None, agentDone: bool) -> None:
        """
        End the body, completely (C{failure} is L{None}) or not; unless the
        agent has finished on its own, tell it to stop.
        """
        if self._phase is _Phase.ENDED:
            return
        consumer = self._consumer
        self._end()
        if not agentDone:
            self._sendCancel()
        if consumer is None:
            self._ending = failure
        elif failure is None:
            consumer.bodyDone()
        else:
            consumer.bodyFailed(failure)

    # From the consumer side.

    def deliverBody(self, consumer: BodyConsumer) -> None:
        if self._cancelled:
            return
        early, self._early = self._early, []
        if self._phase is _Phase.ENDED:
            for data in early:
                consumer.write(data)
            if self._ending is None:
                consumer.bodyDone()
            else:
                consumer.bodyFailed(self._ending)
            return
        self._consumer = consumer
        for data in early:
            self._deliver(data)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._grant(0)

    def stopProducing(self) -> None:
        self.cancel()

    @property
    def paused(self) -> bool:
        """
        Whether the consumer's side holds the agent back (Prometheus reads
        slowly).
        """
        return self._paused

    def stop(self) -> None:
        """
        The scrape is over for whoever started it: cancel it, through the
        head while that has not fired (its errback is then a
        C{CancelledError}).
        """
        if self.head.called:
            self.cancel()
        else:
            self.head.cancel()

    def cancel(self) -> None:
        """
        Tell the agent to stop; nothing more is delivered.
        """
        self._cancelled = True
        self._early = []
        if self._phase is not _Phase.ENDED:
            self._end()
            self._sendCancel()

    def _sendCancel(self) -> None:
        self.link.sendIfConnected(Frame(cancel_scrape=CancelScrape(scrape_id=self.scrapeId)))

    def _end(self) -> None:
        self._phase = _Phase.ENDED
        self._consumer = None
        self.link.forget(self.scrapeId)

    def _deliver(self, data: bytes) -> None:
        consumer = self._consumer
        if self._cancelled:
            return
        if consumer is None:
            self._early.append(data)
            return
        consumer.write(data)
        self._grant(len(data))

    def _grant(self, nbytes: int) -> None:
        self._owed += nbytes
        if self._paused or self._agentDone or self._phase is not _Phase.BODY or not self._owed:
            return
        credit, self._owed = self._owed, 0
        self._unacknowledged -= credit
        self.link.sendIfConnected(
            Frame(scrape_credit=ScrapeCredit(scrape_id=self.scrapeId, bytes=credit))
        )
