# -*- test-case-name: promtwist.test.test_relay -*-
"""
What the scrape port does with a request Prometheus sends: check it, find
the agents serving the path (or, for a C{proxy_url} request, the target;
see L{promtwist.proxy.proxyurl}), and hand the scrape to a L{ScrapeRelay};
or, for a C{/metrics} no agent serves, answer with the proxy's own metrics
(L{promtwist.proxy.selfscrape}).
"""

from __future__ import annotations

import re
from typing import cast
from urllib.parse import unquote

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from promtwist.config.settings import MiB, ProxySettings
from promtwist.hostkeys import HostTarget
from promtwist.logs import clip, observer
from promtwist.metrics import ScrapeLeg
from promtwist.proxy.answers import ScrapeRecord, header, textAnswer, upstreamType
from promtwist.proxy.consolidated import BufferBudget, CollectMerge
from promtwist.proxy.discovery import Discovery
from promtwist.proxy.exchange import Exchange
from promtwist.proxy.proxyurl import (
    BadProxyRequest,
    ProxyRoute,
    Written,
    badQueryByte,
    proxyRoute,
)
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
from promtwist.proxy.selfscrape import SELF_SCRAPE_PATH, SHADOWED_NOTE, SelfScrape

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
    @ivar selfScrape: answers C{/metrics} with the proxy's own metrics when
        no agent serves it (PushProx's proxy serves them there), or
        L{None}.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        settings: ProxySettings,
        registry: Registry,
        clock: IReactorTime,
        discovery: Discovery | None = None,
        selfScrape: SelfScrape | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.discovery = discovery
        self.selfScrape = selfScrape
        self.tracker = ScrapeTracker(clock)
        self.budget = BufferBudget(settings.max_consolidated_buffer_mbytes * MiB)
        self.stopping = False

    def __call__(self, exchange: Exchange) -> None:
        started = self.clock.seconds()
        try:
            route = proxyRoute(exchange.path, exchange.query)
        except BadProxyRequest as e:
            return self._refuse(exchange, "", e.status, e.kind, e.reason)
        if route is not None:
            return self._hostRouted(exchange, route, started)
        query = exchange.query
        try:
            path = unquote(exchange.path.decode("ascii"), errors="strict").lstrip("/")
        except UnicodeDecodeError:
            return self._refuse(exchange, "", 400, "bad_request", "request path is not valid UTF-8")
        if self.discovery is not None and path == self.settings.sd_path:
            return self.discovery.answer(exchange)
        badBytes = badQueryByte(query) or badHeaderByte(exchange.headers)
        if badBytes:
            return self._refuse(exchange, path, 400, "bad_request", badBytes)
        if not path:
            return self._refuse(
                exchange, path, 404, "missing_path", "no path given: request /<path>"
            )
        self._relay(exchange, started, path, query.decode("ascii"))

    def _hostRouted(self, exchange: Exchange, route: ProxyRoute, started: float) -> None:
        """
        Relay a C{proxy_url} scrape to whoever serves its target: the agent
        that declared that host and port, else a source serving the host on
        any port.
        """
        badBytes = badHeaderByte(exchange.headers)
        if badBytes:
            return self._refuse(exchange, route.shown, 400, "bad_request", badBytes)
        target = route.target
        if self.registry.own.isOwn(target.host, target.port):
            # Whoever fetched it would ask this proxy again: a loop.
            return self._refuse(
                exchange,
                route.shown,
                400,
                "bad_request",
                f"target {clip(target.address)} is this proxy's own address:"
                " scrape its paths without proxy_url",
            )
        self._relay(exchange, started, route.path, route.query, route.target, route.written)

    def _relay(
        self,
        exchange: Exchange,
        started: float,
        path: str,
        query: str,
        target: HostTarget | None = None,
        written: Written | None = None,
    ) -> None:
        """
        Hand a checked request to the agents serving its path, or its
        C{target} when it names one; else answer C{/metrics} with the
        proxy's own metrics if L{selfScrape} may, or say why no agent
        serves it.
        """
        key = path if target is None else self.registry.hostClaim(target.host, target.port)
        agents = self.registry.lookup(key)
        if self.stopping:
            return self._refuse(exchange, key, 503, "proxy_stopped", "the proxy is shutting down")
        own = self.selfScrape if target is None and key == SELF_SCRAPE_PATH else None
        if not agents:
            gone = self.registry.departed(key)
            if gone is not None:
                assert gone.leftAt is not None
                reason = (
                    f"{gone.departedAs} disconnected {self.clock.seconds() - gone.leftAt:.0f}s ago"
                )
                return self._refuse(exchange, key, 503, "agent_disconnected", reason)
            if own is not None and not own.shadowed:
                return own.answer(exchange)
            named = "/" + clip(path) if target is None else f"target {clip(target.address)}"
            if own is not None:
                named += SHADOWED_NOTE
            return self._refuse(exchange, key, 404, "invalid_path", f"no agent serves {named}")
        if own is not None:
            own.shadowedBy(agents)
        call = ScrapeCall(
            path,
            query,
            header(exchange, b"accept"),
            header(exchange, b"accept-encoding"),
            header(exchange, b"authorization") if self.settings.forward_authorization else "",
            scrapeDeadline(exchange.headers, self.settings),
            target,
            key,
            written,
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
