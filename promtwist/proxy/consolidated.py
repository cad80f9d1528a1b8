# -*- test-case-name: promtwist.test.test_consolidated -*-
"""
Consolidated paths: several agents serve one path, each scrape goes to all
of them in parallel, and Prometheus gets one body with every answer in it.

The path keeps serving while any of its agents answers. An agent that fails
or is not done by the deadline is left out of the body, named in the
C{X-Promtwist-Missing-Agents} response header and in the log; only when none
answers does Prometheus get an error, the first agent's, with every agent's
reason in the body. Bodies are merged whole, so each is held in memory (up
to C{proxy.internal.maxUnzippedContentSizeMBytes}) until all are in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.server import Request

from promtwist.config import MiB
from promtwist.protocol.promtwist_pb2 import Outcome, ScrapeResponse
from promtwist.proxy.answers import (
    GunzipError,
    ScrapeCall,
    ScrapeRecord,
    failureOf,
    gunzipper,
    targetStatusType,
    textResponse,
)
from promtwist.proxy.link import AgentLink, ScrapeFailed, ScrapeStream

if TYPE_CHECKING:
    from promtwist.proxy.scrape import ScrapeResource

EOF_LINE = b"# EOF"


@dataclass
class Answer:
    """
    One agent's part of a consolidated scrape.
    """

    link: AgentLink
    stream: ScrapeStream
    status: int = 0
    type: str = ""
    reason: str = ""
    contentType: str = ""
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False

    @property
    def ok(self) -> bool:
        return self.complete and self.type == "success"

    def settle(self, status: int, kind: str, reason: str = "") -> Answer:
        self.status, self.type, self.reason, self.complete = status, kind, reason, True
        if kind != "success":
            self.chunks = []
        return self


def merge(bodies: list[bytes]) -> bytes:
    """
    Join exposition bodies: each ends with a newline, and an OpenMetrics
    C{# EOF} is kept once, at the very end, if any body had one.
    """
    hadEOF = False
    parts = []
    for body in bodies:
        lines = body.rstrip(b"\n").split(b"\n") if body.strip() else []
        while lines and lines[-1].strip() == EOF_LINE:
            hadEOF = True
            lines.pop()
        if lines:
            parts.append(b"\n".join(lines) + b"\n")
    return b"".join(parts) + (EOF_LINE + b"\n" if hadEOF else b"")


class _Collector:
    """
    Gathers one agent's body (decompressed, bounded) for L{FanOut}.
    """

    def __init__(self, answer: Answer, limit: int, gzipped: bool) -> None:
        self.answer = answer
        self.limit = limit
        self.decode = gunzipper(limit) if gzipped else None
        self.size = 0
        self.done: Deferred[Answer] = Deferred()

    def write(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            if self.decode is not None:
                data = self.decode(data)
        except GunzipError as e:
            return self._failed(e.status, e.type, str(e))
        self.size += len(data)
        if self.size > self.limit:
            return self._failed(
                413,
                "payload_too_large",
                f"body exceeds {self.limit // MiB} MiB"
                " (proxy.internal.maxUnzippedContentSizeMBytes)",
            )
        self.answer.chunks.append(data)

    def bodyDone(self) -> None:
        if self.decode is not None:
            self.write(b"")
        if not self.done.called:
            self.done.callback(self.answer.settle(self.answer.status, "success"))

    def bodyFailed(self, outcome: Outcome, reason: str) -> None:
        status, kind = failureOf(outcome)
        self._failed(status, kind, reason)

    def _failed(self, status: int, kind: str, reason: str) -> None:
        if self.done.called:
            return
        self.answer.stream.cancel()
        self.done.callback(self.answer.settle(status, kind, reason))


class FanOut:
    """
    One consolidated scrape: ask every agent, wait for all of them (or the
    deadline), answer with what came back.
    """

    def __init__(
        self,
        resource: ScrapeResource,
        request: Request,
        call: ScrapeCall,
        links: list[AgentLink],
        started: float,
    ) -> None:
        self.resource = resource
        self.request = request
        self.call = call
        self.started = started
        self.answers = [Answer(link, call.send(link)) for link in links]
        self._timer: IDelayedCall | None = None
        self._done = False
        self._limit = resource.settings.max_unzipped_content_size_mbytes * MiB

    def start(self) -> None:
        self.resource.started(self.request)
        self._timer = self.resource.clock.callLater(self.call.deadline, self._timedOut)
        self.request.notifyFinish().addErrback(self._clientGone)
        gatherResults([self._collect(answer) for answer in self.answers]).addCallback(
            lambda _: self._respond()
        )

    def _collect(self, answer: Answer) -> Deferred[Answer]:
        def headReceived(head: ScrapeResponse) -> Deferred[Answer] | Answer:
            if head.outcome != Outcome.SUCCESS:
                return answer.settle(*failureOf(head.outcome), head.reason)
            kind = targetStatusType(head.status)
            if kind != "success":
                return answer.settle(
                    head.status, kind, head.reason or f"target answered HTTP {head.status}"
                )
            answer.status = head.status
            answer.contentType = head.content_type
            collector = _Collector(answer, self._limit, head.content_encoding.lower() == "gzip")
            answer.stream.deliverBody(collector)
            return collector.done

        def headFailed(failure: Failure) -> Answer:
            if failure.check(CancelledError):
                return answer.settle(503, "timed_out", f"no answer within {self.call.deadline:g}s")
            if failure.check(ScrapeFailed):
                return answer.settle(502, "upstream_error", failure.getErrorMessage())
            return answer.settle(
                500, "upstream_error", f"internal error in the proxy: {failure.getErrorMessage()}"
            )

        return answer.stream.head.addCallbacks(headReceived, headFailed)

    def _timedOut(self) -> None:
        """
        Answer with whoever is done; the rest are cancelled and reported as
        timed out.
        """
        self._timer = None
        self._respond()

    def _close(self) -> bool:
        """
        End this scrape's bookkeeping, once; L{False} if it already ended.
        """
        if self._done:
            return False
        self._done = True
        self.resource.ended(self.request)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return True

    def _respond(self) -> None:
        if not self._close():
            return
        complete: list[Answer] = []
        for answer in self.answers:
            if not answer.complete:
                answer.settle(
                    503, "timed_out", f"no complete answer within {self.call.deadline:g}s"
                )
            if answer.ok:
                complete.append(answer)
            else:
                self._abandon(answer)
        request = self.request
        missing = [a for a in self.answers if not a.ok]
        if complete:
            body = merge([b"".join(a.chunks) for a in complete])
            request.setResponseCode(200)
            request.setHeader(b"Cache-Control", b"must-revalidate,no-store")
            if complete[0].contentType:
                request.setHeader(b"Content-Type", complete[0].contentType.encode("latin-1"))
            if missing:
                request.setHeader(
                    b"X-Promtwist-Missing-Agents",
                    ", ".join(f"{a.link.name}: {a.reason}" for a in missing).encode("utf-8"),
                )
            request.write(body)
            status, kind, nbytes = 200, "success", len(body)
        else:
            first = missing[0]
            status, kind, nbytes = first.status, first.type, 0
            request.write(
                textResponse(
                    request,
                    status,
                    "; ".join(f"agent {a.link.name!r}: {a.reason}" for a in missing),
                )
            )
        request.finish()
        self.resource.record(
            ScrapeRecord(
                self.call.path,
                ", ".join(a.link.name for a in self.answers),
                status,
                kind,
                "; ".join(f"{a.link.name}: {a.reason}" for a in missing),
                self.resource.clock.seconds() - self.started,
                nbytes,
                "plain",
            )
        )

    def _clientGone(self, failure: Failure) -> None:
        if not self._close():
            return
        for answer in self.answers:
            self._abandon(answer)

    def _abandon(self, answer: Answer) -> None:
        if answer.stream.head.called:
            answer.stream.cancel()
        else:
            answer.stream.head.cancel()
