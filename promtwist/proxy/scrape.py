# -*- test-case-name: promtwist.test.test_relay -*-
"""
What the scrape port does with a request Prometheus sends: check it, find
the agents serving the path, and hand the scrape to a L{ScrapeRelay}.
"""

from __future__ import annotations

import re
from typing import cast
from urllib.parse import unquote

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from promtwist.config.settings import MiB, ProxySettings
from promtwist.logs import clip, observer
from promtwist.metrics import ScrapeLeg
from promtwist.proxy.answers import ScrapeRecord, header, textAnswer, upstreamType
from promtwist.proxy.consolidated import BufferBudget, CollectMerge
from promtwist.proxy.discovery import Discovery
from promtwist.proxy.exchange import Exchange
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
FORWARDED_HEADERS = (b"accept", b"accept-encoding", b"authorization")
# Their names as a message says them.
_SPELLED = {
    b"accept": "Accept",
    b"accept-encoding": "Accept-Encoding",
    b"authorization": "Authorization",
}


def badQueryByte(query: bytes) -> str:
    """
    Why C{query} cannot be forwarded, or C{""} if it can.
    """
    bad = _QUERY_BYTE.search(query)
    if bad is None:
        return ""
    return f"query string has byte 0x{bad.group()[0]:02x} at position {bad.start()}"


def badHeaderByte(headers: dict[bytes, bytes]) -> str:
    """
    Why a header the agent would be sent cannot be, or C{""}; the value is
    never repeated (it may be a credential).
    """
    for name in FORWARDED_HEADERS:
        value = headers.get(name)
        bad = _HEADER_BYTE.search(value) if value else None
        if bad is not None:
            return (
                f"the {_SPELLED[name]} header has byte 0x{bad.group()[0]:02x}"
                f" at position {bad.start()}"
            )
    return ""


class ScrapeHandler:
    """
    Serves C{GET /<path>} for every registered path (paths may contain C{/}),
    and the discovery document at its path.

    @ivar tracker: the scrapes in flight and the records of those that ended.
    @ivar stopping: set when the proxy is draining: new scrapes get 503.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        settings: ProxySettings,
        registry: Registry,
        clock: IReactorTime,
        discovery: Discovery | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.discovery = discovery
        self.tracker = ScrapeTracker(clock)
        self.budget = BufferBudget(settings.max_consolidated_buffer_mbytes * MiB)
        self.stopping = False

    def __call__(self, exchange: Exchange) -> None:
        started = self.clock.seconds()
        query = exchange.query
        try:
            path = unquote(exchange.path.decode("ascii"), errors="strict").lstrip("/")
        except UnicodeDecodeError:
            return self._refuse(exchange, "", 400, "bad_request", "request path is not valid UTF-8")
        if self.discovery is not None and path == self.settings.sd_path:
            return self.discovery.answer(exchange)
        agents = self.registry.lookup(path)
        badBytes = badQueryByte(query) or badHeaderByte(exchange.headers)
        if badBytes:
            return self._refuse(exchange, path, 400, "bad_request", badBytes)
        if not path:
            return self._refuse(
                exchange, path, 404, "missing_path", "no path given: request /<path>"
            )
        if self.stopping:
            return self._refuse(exchange, path, 503, "proxy_stopped", "the proxy is shutting down")
        if not agents:
            gone = self.registry.departed(path)
            if gone is not None:
                assert gone.leftAt is not None
                reason = (
                    f"agent {clip(gone.agentNames)!r} disconnected"
                    f" {self.clock.seconds() - gone.leftAt:.0f}s ago"
                )
                return self._refuse(exchange, path, 503, "agent_disconnected", reason)
            return self._refuse(
                exchange, path, 404, "invalid_path", f"no agent serves /{clip(path)}"
            )
        call = ScrapeCall(
            path,
            query.decode("ascii"),
            header(exchange, b"accept"),
            header(exchange, b"accept-encoding"),
            header(exchange, b"authorization") if self.settings.forward_authorization else "",
            scrapeDeadline(exchange.headers, self.settings),
        )
        sources = [cast(ScrapeSource, agent) for agent in agents]
        limit = self.settings.max_unzipped_content_size_mbytes * MiB
        strategy: BodyStrategy
        if len(sources) == 1:
            strategy = StreamThrough(sources[0], call, limit)
        else:
            strategy = CollectMerge(sources, call, limit, self.budget)
        ScrapeRelay(exchange, call, self.tracker, started).run(strategy)

    def _refuse(self, exchange: Exchange, path: str, status: int, kind: str, reason: str) -> None:
        # Counted once, untimed: no agent was asked, and the path is the
        # requester's choice.
        leg = ScrapeLeg(upstreamType(kind), None)
        self.tracker.record(ScrapeRecord(path, "", status, kind, reason, 0.0, 0, "plain", (leg,)))
        textAnswer(exchange, status, reason)
