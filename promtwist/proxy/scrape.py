# -*- test-case-name: promtwist.test.test_relay -*-
"""
The HTTP resource Prometheus scrapes: check the request, find the agents
serving the path, and hand the scrape to a L{ScrapeRelay}.
"""

from __future__ import annotations

import re
from typing import cast
from urllib.parse import unquote

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from promtwist.config import MiB, ProxySettings
from promtwist.logs import clip, observer
from promtwist.proxy.answers import ScrapeRecord, header, textResponse
from promtwist.proxy.consolidated import BufferBudget, CollectMerge
from promtwist.proxy.registry import Registry
from promtwist.proxy.relay import (
    BodyStrategy,
    ScrapeCall,
    ScrapeRelay,
    ScrapeSource,
    ScrapeTracker,
    StreamThrough,
    scrapeDeadline,
)

# What a query string may hold on its way to an agent: printable ASCII
# without spaces (RFC 3986 query characters and percent escapes; a few more
# that clients send raw, such as [ and ], are harmless).
_QUERY_BYTE = re.compile(rb"[^\x21-\x7e]")


# What a forwarded header value may hold (RFC 9110 field-value: visible
# characters, spaces, tabs and obs-text).
_HEADER_BYTE = re.compile(rb"[^\t\x20-\x7e\x80-\xff]")
FORWARDED_HEADERS = (b"Accept", b"Accept-Encoding", b"Authorization")


def badQueryByte(query: bytes) -> str:
    """
    Why C{query} cannot be forwarded, or C{""} if it can.
    """
    bad = _QUERY_BYTE.search(query)
    if bad is None:
        return ""
    return f"query string has byte 0x{bad.group()[0]:02x} at position {bad.start()}"


def badHeaderByte(request: Request) -> str:
    """
    Why a header the agent would be sent cannot be, or C{""}; the value is
    never repeated (it may be a credential).
    """
    for name in FORWARDED_HEADERS:
        value = request.getHeader(name)
        bad = _HEADER_BYTE.search(value) if value else None
        if bad is not None:
            return (
                f"the {name.decode()} header has byte 0x{bad.group()[0]:02x}"
                f" at position {bad.start()}"
            )
    return ""


class ScrapeResource(Resource):
    """
    Serves C{GET /<path>} for every registered path (paths may contain C{/}),
    and hands the discovery path to its own resource.

    @ivar tracker: the scrapes in flight and the records of those that ended.
    @ivar stopping: set when the proxy is draining: new scrapes get 503.
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
        self.tracker = ScrapeTracker(clock)
        self.budget = BufferBudget(settings.max_consolidated_buffer_mbytes * MiB)
        self.stopping = False

    def render_GET(self, request: Request) -> bytes | int:
        started = self.clock.seconds()
        query = request.uri.partition(b"?")[2]
        try:
            path = unquote(request.path.decode("ascii"), errors="strict").lstrip("/")
        except UnicodeDecodeError:
            return self._refuse(request, "", 400, "bad_request", "request path is not valid UTF-8")
        if self.discovery is not None and path == self.settings.sd_path:
            document: bytes = self.discovery.render(request)
            return document
        agents = self.registry.lookup(path)
        badBytes = badQueryByte(query) or badHeaderByte(request)
        if badBytes:
            return self._refuse(request, path, 400, "bad_request", badBytes)
        if not path:
            return self._refuse(
                request, path, 404, "missing_path", "no path given: request /<path>"
            )
        if self.stopping:
            return self._refuse(request, path, 503, "proxy_stopped", "the proxy is shutting down")
        if not agents:
            gone = self.registry.departed(path)
            if gone is not None:
                assert gone.leftAt is not None
                reason = (
                    f"agent {clip(gone.agentNames)!r} disconnected"
                    f" {self.clock.seconds() - gone.leftAt:.0f}s ago"
                )
                return self._refuse(request, path, 503, "agent_disconnected", reason)
            return self._refuse(
                request, path, 404, "invalid_path", f"no agent serves /{clip(path)}"
            )
        call = ScrapeCall(
            path,
            query.decode("ascii"),
            header(request, b"Accept"),
            header(request, b"Accept-Encoding"),
            header(request, b"Authorization") if self.settings.forward_authorization else "",
            scrapeDeadline(request, self.settings),
        )
        sources = [cast(ScrapeSource, agent) for agent in agents]
        limit = self.settings.max_unzipped_content_size_mbytes * MiB
        strategy: BodyStrategy
        if len(sources) == 1:
            strategy = StreamThrough(sources[0], call, limit)
        else:
            strategy = CollectMerge(sources, call, limit, self.budget)
        ScrapeRelay(request, call, self.tracker, started).run(strategy)
        return NOT_DONE_YET

    def _refuse(self, request: Request, path: str, status: int, kind: str, reason: str) -> bytes:
        self.tracker.record(ScrapeRecord(path, "", status, kind, reason, 0.0, 0, "plain"))
        return textResponse(request, status, reason)
