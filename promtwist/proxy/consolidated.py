# -*- test-case-name: promtwist.test.test_consolidated -*-
"""
Consolidated paths: several agents serve one path, each scrape goes to all
of them in parallel, and Prometheus gets one body with every answer in it.

The path keeps serving while any of its agents answers. An agent that fails
or is not done by the deadline is left out of the body, named in the
C{X-Promtwist-Missing-Agents} response header and in the record; only when
none answers does Prometheus get an error, the first agent's, with every
agent's reason in the body.

Bodies are merged whole, so each is held (decompressed) until all are in:
up to C{proxy.internal.maxUnzippedContentSizeMBytes} per agent, and up to
C{proxy.internal.maxConsolidatedBufferMBytes} over every consolidated scrape
in the proxy, so that many concurrent scrapes of big bodies cost an error
answer rather than the proxy's memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from promtwist.config.settings import MiB
from promtwist.httputil import GZIP_ENCODINGS
from promtwist.logs import clip
from promtwist.metrics import ScrapeLeg
from promtwist.proxy.answers import ScrapeFailed, upstreamType
from promtwist.proxy.relay import (
    Inflater,
    RelayState,
    ScrapeCall,
    ScrapeRelay,
    ScrapeSource,
    linkEncoding,
    watchHead,
)
from promtwist.proxy.stream import AnswerHead

EOF_LINE = b"# EOF"
# A last line longer than this cannot be "# EOF", whatever its whitespace.
_EOF_LINE_MAX = 64


class BufferBudget:
    """
    The bytes of consolidated bodies the proxy holds at once, shared by every
    consolidated scrape.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, nbytes: int) -> bool:
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.used -= nbytes


def _trimmed(chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """
    One body as pieces ending in a newline, without trailing blank lines and
    OpenMetrics C{# EOF} lines; and whether it had an C{# EOF}. Only the
    tail is looked at, so a body of any size costs no copy.
    """
    pieces = [chunk for chunk in chunks if chunk]
    hadEOF = False
    while pieces:
        last = pieces[-1].rstrip(b"\n")
        if not last:
            pieces.pop()
            continue
        start = last.rfind(b"\n") + 1
        if start == 0 and len(pieces) > 1 and len(last) <= _EOF_LINE_MAX:
            # The last line began in the chunk before: look at it whole.
            pieces[-2:] = [pieces[-2] + last]
            continue
        line = last[start:].strip()
        if line == EOF_LINE or not line:
            hadEOF = hadEOF or bool(line)
            pieces[-1] = last[:start]
            continue
        pieces[-1] = last + b"\n"
        break
    return pieces, hadEOF


def mergedPieces(bodies: Sequence[list[bytes]]) -> Iterator[bytes]:
    """
    Join exposition bodies: each ends with a newline, and an OpenMetrics
    C{# EOF} is kept once, at the very end, if any body had one.
    """
    anyEOF = False
    for chunks in bodies:
        pieces, hadEOF = _trimmed(chunks)
        anyEOF = anyEOF or hadEOF
        yield from pieces
    if anyEOF:
        yield EOF_LINE + b"\n"


def merge(bodies: list[bytes]) -> bytes:
    """
    L{mergedPieces} of whole bodies, as one.
    """
    return b"".join(mergedPieces([[body] for body in bodies]))


class _Part:
    """
    One agent's part of a consolidated scrape, collected (decompressed and
    bounded) until its body is complete.

    @ivar leg: how it ended, for the metrics, once it settled on its own.
    """

    def __init__(self, merge: CollectMerge, source: ScrapeSource, call: ScrapeCall) -> None:
        self.merge = merge
        self.name = source.name
        self.stream = source.scrape(call)
        self.failure: ScrapeFailed | None = None
        self.settled = False
        self.leg: ScrapeLeg | None = None
        self.contentType = ""
        self.chunks: list[bytes] = []
        self.size = 0
        self._inflater: Inflater | None = None
        self._encoding = "plain"
        self._relay: ScrapeRelay | None = None

    def start(self, relay: ScrapeRelay) -> None:
        self._relay = relay
        watchHead(relay, self.stream, self._headReceived, self.settle)

    def _headReceived(self, head: AnswerHead) -> None:
        self.contentType = head.contentType
        self._encoding = linkEncoding(head.contentEncoding)
        encoding = head.contentEncoding.lower()
        if encoding in GZIP_ENCODINGS:
            self._inflater = Inflater(self.merge.partLimit)
        elif encoding not in ("", "identity"):
            # Bodies are merged as text: one encoded otherwise cannot be.
            return self.settle(
                ScrapeFailed(502, "invalid_answer", f"cannot merge a body encoded {encoding}")
            )
        self.stream.deliverBody(self)

    # The body (BodyConsumer).

    def write(self, data: bytes) -> None:
        if self.settled:
            return
        try:
            if self._inflater is not None:
                data = self._inflater.feed(data)
        except ScrapeFailed as failure:
            return self.settle(failure)
        self._keep(data)

    def bodyDone(self) -> None:
        try:
            if self._inflater is not None:
                self._keep(self._inflater.finish())
        except ScrapeFailed as failure:
            return self.settle(failure)
        self.settle(None)

    def bodyFailed(self, failure: ScrapeFailed) -> None:
        self.settle(failure)

    def _keep(self, data: bytes) -> None:
        if self.settled or not data:
            return
        limit = self.merge.partLimit
        if self.size + len(data) > limit:
            return self.settle(
                ScrapeFailed(
                    413,
                    "payload_too_large",
                    f"body exceeds {limit // MiB} MiB"
                    " (proxy.internal.maxUnzippedContentSizeMBytes)",
                )
            )
        budget = self.merge.budget
        if not budget.reserve(len(data)):
            return self.settle(
                ScrapeFailed(
                    503,
                    "proxy_busy",
                    f"the proxy already holds {budget.used // MiB} MiB of consolidated bodies, "
                    f"its limit (proxy.internal.maxConsolidatedBufferMBytes = "
                    f"{budget.limit // MiB})",
                )
            )
        self.size += len(data)
        self.chunks.append(data)

    # Endings.

    def settle(self, failure: ScrapeFailed | None) -> None:
        """
        This part is over: complete (C{failure} is L{None}) or left out.
        """
        if self.settled:
            return
        self.settled = True
        self.failure = failure
        assert self._relay is not None
        self.leg = ScrapeLeg(
            "success" if failure is None else upstreamType(failure.kind),
            self._relay.elapsed(),
            self.size,
            self._encoding,
        )
        if failure is not None:
            self.release()
            self.stream.stop()
        self.merge.partSettled()

    def release(self) -> None:
        """
        Give the collected bytes back to the budget.
        """
        self.merge.budget.release(self.size)
        self.size = 0
        self.chunks = []

    def abandon(self) -> None:
        self.settled = True
        self.stream.stop()
        self.release()


@implementer(IPushProducer)
class _MergedBody:
    """
    Writes the merged body as fast as Prometheus takes it, and no faster:
    the parts stay reserved in the budget until the last piece is handed to
    the connection, so a Prometheus that does not read cannot make the
    proxy hold more than the budget says.
    """

    def __init__(self, relay: ScrapeRelay, pieces: Iterator[bytes], reason: str) -> None:
        self.relay = relay
        self.pieces = pieces
        self.reason = reason
        self._paused = False

    def start(self) -> None:
        self.relay.registerProducer(self)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        relay = self.relay
        while not self._paused and relay.state is not RelayState.DONE:
            piece = next(self.pieces, None)
            if piece is None:
                return relay.complete(self.reason)
            relay.write(piece)

    def stopProducing(self) -> None:
        # Prometheus went away; the relay hears of it and ends the scrape.
        self._paused = True


class CollectMerge:
    """
    A consolidated path: ask every agent, wait for all of them (or the
    deadline), answer once with what came back.
    """

    def __init__(
        self,
        sources: Sequence[ScrapeSource],
        call: ScrapeCall,
        partLimit: int,
        budget: BufferBudget,
    ) -> None:
        self.partLimit = partLimit
        self.budget = budget
        self.parts = [_Part(self, source, call) for source in sources]
        self.agents = ", ".join(part.name for part in self.parts)
        self._relay: ScrapeRelay | None = None
        self._starting = True
        self._answering = False

    def start(self, relay: ScrapeRelay) -> None:
        self._relay = relay
        for part in self.parts:
            part.start(relay)
        self._starting = False
        self.partSettled()

    def partSettled(self) -> None:
        if not self._starting and all(part.settled for part in self.parts):
            self._respond()

    def deadlinePassed(self) -> None:
        assert self._relay is not None
        if self._answering:
            # Every part is in; the body is on its way to a slow reader.
            return self._relay.fail(
                ScrapeFailed(503, "client_slow", "Prometheus read the merged answer too slowly")
            )
        deadline = self._relay.call.deadline
        for part in self.parts:
            part.settle(ScrapeFailed(503, "timed_out", f"no complete answer within {deadline:g}s"))

    def _respond(self) -> None:
        relay = self._relay
        assert relay is not None
        if relay.state is not RelayState.REQUESTED or self._answering:
            return
        complete = [part for part in self.parts if part.failure is None]
        missing = [(part.name, part.failure) for part in self.parts if part.failure is not None]
        if not complete:
            first = missing[0][1]
            relay.fail(
                ScrapeFailed(
                    first.status,
                    first.kind,
                    "; ".join(f"agent {name!r}: {failure.reason}" for name, failure in missing),
                )
            )
            return
        self._answering = True
        relay.answerHead(200, complete[0].contentType)
        if missing:
            relay.exchange.setHeader(
                b"X-Promtwist-Missing-Agents",
                ", ".join(f"{clip(name)}: {failure.reason}" for name, failure in missing).encode(
                    "utf-8"
                ),
            )
        reason = "; ".join(f"{name}: {failure.reason}" for name, failure in missing)
        _MergedBody(relay, mergedPieces([part.chunks for part in complete]), reason).start()

    def abandon(self) -> None:
        for part in self.parts:
            part.abandon()

    def legs(self, kind: str) -> tuple[ScrapeLeg, ...]:
        """
        Each agent's own outcome; one still at work when the scrape ended
        (a bug in the proxy ended it) ended as the scrape did.
        """
        relay = self._relay
        assert relay is not None
        return tuple(
            part.leg or ScrapeLeg(upstreamType(kind), relay.elapsed()) for part in self.parts
        )
