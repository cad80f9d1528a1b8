# -*- test-case-name: promtwist.test.test_scrape -*-
"""
The HTTP resource Prometheus scrapes: find the agent serving the path, relay
the request over its link and stream the answer back as it arrives.

Status codes follow prometheus-proxy's mapping so that existing alerts keep
meaning the same thing, but every error carries a one-line text reason that
shows up in Prometheus' target page.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from urllib.parse import unquote

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from promtwist.config import MiB, ProxySettings
from promtwist.httputil import acceptsGzip
from promtwist.logs import observer
from promtwist.protocol.promtwist_pb2 import Outcome, ScrapeResponse
from promtwist.proxy.link import AgentLink, ScrapeFailed, ScrapeStream
from promtwist.proxy.registry import Registry

TIMEOUT_HEADER = b"X-Prometheus-Scrape-Timeout-Seconds"

# What Prometheus sees for each way a scrape can fail at the agent.
STATUS_FOR_OUTCOME = {
    Outcome.PATH_NOT_FOUND: 404,
    Outcome.UNREACHABLE: 503,
    Outcome.TIMED_OUT: 408,
    Outcome.TOO_LARGE: 413,
    Outcome.CANCELLED: 503,
    Outcome.AGENT_ERROR: 503,
}


def scrapeDeadline(request: Request, settings: ProxySettings) -> float:
    """
    How long this scrape may take: Prometheus' own timeout when it says,
    capped by C{proxy.internal.scrapeRequestTimeoutSecs}.
    """
    limit = settings.scrape_request_timeout_secs
    header = request.getHeader(TIMEOUT_HEADER)
    if header:
        try:
            seconds = float(header)
        except ValueError:
            return limit
        if 0 < seconds < limit:
            return seconds
    return limit


def agentBudget(deadline: float) -> float:
    """
    The share of the deadline the agent gets, so that its 408 for a slow
    target reaches Prometheus before Prometheus gives up itself.
    """
    return deadline - min(0.5, deadline * 0.1)


def textResponse(request: Request, status: int, reason: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"must-revalidate,no-store")
    return reason.encode("utf-8") + b"\n"


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

    def render_GET(self, request: Request) -> bytes | int:
        try:
            path = unquote(request.path.decode("ascii"), errors="strict").lstrip("/")
        except UnicodeDecodeError:
            return textResponse(request, 400, "request path is not valid UTF-8")
        if not path:
            return textResponse(
                request, 404, "no path given: request /<path> of a registered agent path"
            )
        if self.discovery is not None and path == self.settings.sd_path:
            document: bytes = self.discovery.render(request)
            return document
        agents = self.registry.lookup(path)
        if not agents:
            return textResponse(request, 404, f"no agent serves /{path}")
        link = agents[0]
        assert isinstance(link, AgentLink)
        deadline = scrapeDeadline(request, self.settings)
        query = request.uri.partition(b"?")[2].decode("ascii", "replace")
        stream = link.scrape(
            path,
            query,
            _header(request, b"Accept"),
            _header(request, b"Accept-Encoding"),
            _header(request, b"Authorization") if self.settings.forward_authorization else "",
            agentBudget(deadline),
        )
        _Relay(self, request, stream, path, link, deadline).start()
        return NOT_DONE_YET


def _header(request: Request, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value else ""


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
        stream: ScrapeStream,
        path: str,
        link: AgentLink,
        deadline: float,
    ) -> None:
        self.resource = resource
        self.request = request
        self.stream = stream
        self.path = path
        self.link = link
        self.deadline = deadline
        self.started = resource.clock.seconds()
        self._done = False
        self._timer: IDelayedCall | None = None
        self._decode: Callable[[bytes], bytes] | None = None

    def start(self) -> None:
        self._timer = self.resource.clock.callLater(self.deadline, self._timedOut)
        self.request.notifyFinish().addErrback(self._clientGone)
        self.stream.head.addCallbacks(self._headReceived, self._headFailed)

    # The head.

    def _headReceived(self, head: ScrapeResponse) -> None:
        if self._done:
            return
        request = self.request
        if head.outcome != Outcome.SUCCESS:
            status = STATUS_FOR_OUTCOME.get(head.outcome, 503)
            return self._fail(status, head.reason or Outcome.Name(head.outcome).lower())
        if not 200 <= head.status < 300:
            return self._fail(head.status, head.reason or f"target answered HTTP {head.status}")
        request.setResponseCode(head.status)
        request.setHeader(b"Cache-Control", b"must-revalidate,no-store")
        if head.content_type:
            request.setHeader(b"Content-Type", head.content_type.encode("latin-1"))
        encoding = head.content_encoding
        if encoding.lower() == "gzip" and not acceptsGzip(_header(request, b"Accept-Encoding")):
            self._decode = _gunzipper(self.resource.settings.max_unzipped_content_size_mbytes * MiB)
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
            return self._fail(502, failure.getErrorMessage())
        self._log.failure("scrape of /{path} failed", failure, path=self.path)
        self._fail(500, "internal error in the proxy")

    # The body (BodyConsumer).

    def write(self, data: bytes) -> None:
        if self._decode is not None:
            try:
                data = self._decode(data)
            except _GunzipError as e:
                return self.bodyFailed(Outcome.AGENT_ERROR, str(e))
        self.request.write(data)

    def bodyDone(self) -> None:
        if self._decode is not None:
            try:
                self.request.write(self._decode(b""))
            except _GunzipError as e:
                return self.bodyFailed(Outcome.AGENT_ERROR, str(e))
        self._finish(self.request.code, "success")
        self.request.unregisterProducer()
        self.request.finish()

    def bodyFailed(self, outcome: Outcome, reason: str) -> None:
        if self._done:
            return
        if not self.request.startedWriting:
            self.request.unregisterProducer()
            return self._fail(STATUS_FOR_OUTCOME.get(outcome, 502), reason)
        # Part of the body is already on its way: the only honest signal left
        # is a broken response, which Prometheus records as a failed scrape.
        self._finish(self.request.code, f"aborted mid-body: {reason}")
        self.stream.cancel()
        self.request.unregisterProducer()
        self.request.channel.forceAbortClient()

    # Endings.

    def _timedOut(self) -> None:
        self._timer = None
        reason = f"no complete answer from agent {self.link.name!r} within {self.deadline:g}s"
        if not self.stream.head.called:
            self._fail(503, reason)
        else:
            self.bodyFailed(Outcome.TIMED_OUT, reason)

    def _clientGone(self, failure: Failure) -> None:
        if not self._done:
            self._finish(499, "client went away")
        self._abandon()

    def _abandon(self) -> None:
        if self.stream.head.called:
            self.stream.cancel()
        else:
            # Its canceller tells the agent; _headFailed ignores the error.
            self.stream.head.cancel()

    def _fail(self, status: int, reason: str) -> None:
        self._finish(status, reason)
        self._abandon()
        self.request.write(textResponse(self.request, status, reason))
        self.request.finish()

    def _finish(self, status: int, outcome: str) -> None:
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.resource.settings.request_logging_enabled:
            self._log.debug(
                "scrape /{path} via {agent} -> {status} ({outcome}), {bytes} bytes in {ms:.1f} ms",
                path=self.path,
                agent=self.link.name,
                status=status,
                outcome=outcome,
                bytes=self.stream.bytesReceived,
                ms=(self.resource.clock.seconds() - self.started) * 1000,
            )


class _GunzipError(Exception):
    pass


def _gunzipper(limit: int) -> Callable[[bytes], bytes]:
    """
    A streaming gzip decoder for clients that do not accept gzip, refusing
    to inflate past C{limit} bytes (a zip bomb costs nothing but an error).
    """
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    total = 0

    def decode(data: bytes) -> bytes:
        nonlocal total
        try:
            out = decoder.decompress(data, limit - total + 1) if data else decoder.flush()
        except zlib.error as e:
            raise _GunzipError(f"invalid gzip body from the agent: {e}") from e
        total += len(out)
        if total > limit or decoder.unconsumed_tail:
            raise _GunzipError(f"decompressed body exceeds {limit // MiB} MiB")
        return out

    return decode
