# -*- test-case-name: promtwist.test.test_scrape -*-
"""
The HTTP resource Prometheus scrapes: find the agent serving the path, relay
the request over its link and stream the answer back as it arrives.

Status codes follow prometheus-proxy's mapping so that existing alerts keep
meaning the same thing, but every error carries a one-line text reason that
shows up in Prometheus' target page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast
from urllib.parse import unquote

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from promtwist.config import MiB, ProxySettings
from promtwist.httputil import acceptsGzip
from promtwist.logs import observer
from promtwist.protocol.promtwist_pb2 import Outcome, ScrapeResponse
from promtwist.proxy.answers import (
    GunzipError,
    ScrapeCall,
    ScrapeRecord,
    failureOf,
    gunzipper,
    header,
    scrapeDeadline,
    targetStatusType,
    textResponse,
)
from promtwist.proxy.consolidated import FanOut
from promtwist.proxy.link import AgentLink, ScrapeFailed
from promtwist.proxy.registry import Registry


class ScrapeResource(Resource):
    """
    Serves C{GET /<path>} for every registered path (paths may contain C{/}),
    and hands the discovery path to its own resource.
    """

    isLeaf = True
    _log = Logger(observer=observer)

    def __init__(
        self,
        settings: ProxySettings,
        registry: Registry,
        clock: IReactorTime,
        discovery: Resource | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.discovery = discovery
        self.observers: list[Callable[[ScrapeRecord], None]] = []
        self.stopping = False
        self.inFlight: set[Request] = set()
        self._idle: list[Deferred[None]] = []

    def record(self, record: ScrapeRecord) -> None:
        """
        Tell every observer how a scrape ended.
        """
        for notify in self.observers:
            notify(record)

    def started(self, request: Request) -> None:
        self.inFlight.add(request)

    def ended(self, request: Request) -> None:
        self.inFlight.discard(request)
        if not self.inFlight:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        Fires once no scrape is in flight (now, if none is).
        """
        d: Deferred[None] = Deferred()
        if self.inFlight:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def render_GET(self, request: Request) -> bytes | int:
        started = self.clock.seconds()
        try:
            path = unquote(request.path.decode("ascii"), errors="strict").lstrip("/")
        except UnicodeDecodeError:
            return textResponse(request, 400, "request path is not valid UTF-8")
        if self.discovery is not None and path == self.settings.sd_path:
            document: bytes = self.discovery.render(request)
            return document
        agents = self.registry.lookup(path)
        if not path:
            status, kind, reason = 404, "missing_path", "no path given: request /<path>"
        elif self.stopping:
            status, kind, reason = 503, "proxy_stopped", "the proxy is shutting down"
        elif not agents:
            status, kind, reason = 404, "invalid_path", f"no agent serves /{path}"
        else:
            call = ScrapeCall(
                path,
                request.uri.partition(b"?")[2].decode("ascii", "replace"),
                header(request, b"Accept"),
                header(request, b"Accept-Encoding"),
                header(request, b"Authorization") if self.settings.forward_authorization else "",
                scrapeDeadline(request, self.settings),
            )
            links = [cast(AgentLink, agent) for agent in agents]
            if len(links) == 1:
                _Relay(self, request, call, links[0], started).start()
            else:
                FanOut(self, request, call, links, started).start()
            return NOT_DONE_YET
        self.record(ScrapeRecord(path, "", status, kind, reason, 0.0, 0, "plain"))
        return textResponse(request, status, reason)


class _Relay:
    """
    Moves one scrape's answer from its L{ScrapeStream} to the HTTP request,
    enforcing the deadline and following Prometheus if it hangs up.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        resource: ScrapeResource,
        request: Request,
        call: ScrapeCall,
        link: AgentLink,
        started: float,
    ) -> None:
        self.resource = resource
        self.request = request
        self.call = call
        self.link = link
        self.started = started
        self.stream = call.send(link)
        self._done = False
        self._timer: IDelayedCall | None = None
        self._decode: Callable[[bytes], bytes] | None = None
        self._sent = 0

    def start(self) -> None:
        self.resource.started(self.request)
        self._timer = self.resource.clock.callLater(self.call.deadline, self._timedOut)
        self.request.notifyFinish().addErrback(self._clientGone)
        self.stream.head.addCallbacks(self._headReceived, self._headFailed)

    # The head.

    def _headReceived(self, head: ScrapeResponse) -> None:
        if self._done:
            return
        request = self.request
        if head.outcome != Outcome.SUCCESS:
            status, kind = failureOf(head.outcome)
            return self._fail(status, kind, head.reason or Outcome.Name(head.outcome).lower())
        if not 200 <= head.status < 300:
            return self._fail(
                head.status,
                targetStatusType(head.status),
                head.reason or f"target answered HTTP {head.status}",
            )
        request.setResponseCode(head.status)
        request.setHeader(b"Cache-Control", b"must-revalidate,no-store")
        if head.content_type:
            request.setHeader(b"Content-Type", head.content_type.encode("latin-1"))
        encoding = head.content_encoding
        if encoding.lower() == "gzip" and not acceptsGzip(header(request, b"Accept-Encoding")):
            self._decode = gunzipper(self.resource.settings.max_unzipped_content_size_mbytes * MiB)
        else:
            if encoding:
                request.setHeader(b"Content-Encoding", encoding.encode("latin-1"))
            if head.content_length >= 0:
                request.setHeader(b"Content-Length", b"%d" % head.content_length)
        request.registerProducer(self.stream, True)
        self.stream.deliverBody(self)

    def _headFailed(self, failure: Failure) -> None:
        if self._done or failure.check(CancelledError):
            return
        if failure.check(ScrapeFailed):
            return self._fail(502, "upstream_error", failure.getErrorMessage())
        self._log.failure("scrape of /{path} failed", failure, path=self.call.path)
        self._fail(500, "upstream_error", "internal error in the proxy")

    # The body (BodyConsumer).

    def write(self, data: bytes) -> None:
        if self._decode is not None:
            try:
                data = self._decode(data)
            except GunzipError as e:
                return self._bodyBroken(e.status, e.type, str(e))
        self._sent += len(data)
        self.request.write(data)

    def bodyDone(self) -> None:
        if self._done:
            return
        if self._decode is not None:
            self.write(b"")
            if self._done:
                return
        self._finish(self.request.code, "success", "")
        self.request.unregisterProducer()
        self.request.finish()

    def bodyFailed(self, outcome: Outcome, reason: str) -> None:
        status, kind = failureOf(outcome)
        self._bodyBroken(status, kind, reason)

    def _bodyBroken(self, status: int, kind: str, reason: str) -> None:
        if self._done:
            return
        self.request.unregisterProducer()
        if not self.request.startedWriting:
            return self._fail(status, kind, reason)
        # Part of the body is already on its way: the only honest signal left
        # is a broken response, which Prometheus records as a failed scrape.
        self._finish(self.request.code, kind, f"aborted mid-body: {reason}")
        self.stream.cancel()
        self.request.channel.forceAbortClient()

    # Endings.

    def _timedOut(self) -> None:
        self._timer = None
        reason = f"no complete answer from agent {self.link.name!r} within {self.call.deadline:g}s"
        if not self.stream.head.called:
            self._fail(503, "timed_out", reason)
        else:
            self._bodyBroken(503, "timed_out", reason)

    def _clientGone(self, failure: Failure) -> None:
        if not self._done:
            self._finish(499, "client_gone", "Prometheus hung up")
        self._abandon()

    def _abandon(self) -> None:
        if self.stream.head.called:
            self.stream.cancel()
        else:
            # Its canceller tells the agent; _headFailed ignores the error.
            self.stream.head.cancel()

    def _fail(self, status: int, kind: str, reason: str) -> None:
        self._finish(status, kind, reason)
        self._abandon()
        self.request.write(textResponse(self.request, status, reason))
        self.request.finish()

    def _finish(self, status: int, kind: str, reason: str) -> None:
        self._done = True
        self.resource.ended(self.request)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        gzipped = self.request.responseHeaders.hasHeader(b"Content-Encoding")
        self.resource.record(
            ScrapeRecord(
                self.call.path,
                self.link.name,
                status,
                kind,
                reason,
                self.resource.clock.seconds() - self.started,
                self._sent,
                "gzipped" if gzipped else "plain",
            )
        )
