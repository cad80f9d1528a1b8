# -*- test-case-name: promtwist.test.test_selfscrape -*-
"""
The proxy's own metrics at C{GET /metrics} on the scrape port, where
PushProx's proxy serves its own, so that a PushProx user's job scraping
C{pushprox:8080} keeps working against promtwist unchanged.

The scrape port's paths are agents' first: prometheus-proxy users may
serve a path C{metrics} there. So the proxy answers C{/metrics} itself only
while no agent serves it, and once a scrape of it has gone to an agent,
never again until it restarts: the job scraping that path is the agent's,
and while the agent is away its scrapes must fail (503, then 404), not
find the proxy's metrics and count the agent up.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from promtwist.httputil import UNCACHEABLE
from promtwist.logs import clip, observer
from promtwist.metrics import exposition
from promtwist.proxy.answers import header
from promtwist.proxy.exchange import Exchange
from promtwist.proxy.pushmetrics import PushProxMetrics
from promtwist.proxy.registry import AgentHandle

# The path as the scrape handler keys it (decoded, without its C{/}), and
# as PushProx's metrics label it.
SELF_SCRAPE_PATH = "metrics"
_LABEL = "/" + SELF_SCRAPE_PATH
# What a scrape of /metrics that no agent serves adds to its 404 once the
# path is shadowed.
SHADOWED_NOTE = (
    ", which an agent served earlier: the proxy no longer answers it with its own"
    " metrics (see the proxy's log)"
)


class SelfScrape:
    """
    Answers C{GET /metrics} with the registry the metrics port serves, in
    the same exposition (L{exposition}), and counts it as PushProx's proxy
    counts its own (C{pushprox_http_requests_total{path="/metrics"}},
    C{pushprox_http_duration_seconds{path="/metrics"}}).

    @ivar shadowed: a scrape of C{/metrics} has gone to an agent: the proxy
        no longer answers it itself.
    """

    _log = Logger(observer=observer)

    def __init__(
        self, registry: CollectorRegistry, counts: PushProxMetrics, clock: IReactorTime
    ) -> None:
        """
        @param registry: everything the metrics port serves.
        @param counts: PushProx's series, which count the answers.
        @param clock: times them.
        """
        self.registry = registry
        self.counts = counts
        self.clock = clock
        self.shadowed = False
        counts.expect(_LABEL)

    def answer(self, exchange: Exchange) -> None:
        """
        Answer C{exchange} with the proxy's metrics, in the format and
        encoding it accepts.
        """
        started = self.clock.seconds()
        exposed = exposition(
            self.registry, header(exchange, b"accept"), header(exchange, b"accept-encoding")
        )
        exchange.setStatus(200)
        exchange.setHeader(b"Content-Type", exposed.contentType.encode("ascii"))
        if exposed.contentEncoding:
            exchange.setHeader(b"Content-Encoding", exposed.contentEncoding.encode("ascii"))
        exchange.setHeader(b"Cache-Control", UNCACHEABLE)
        exchange.finishWith(exposed.body)
        self.counts.answered(_LABEL, 200, self.clock.seconds() - started)

    def shadowedBy(self, agents: Sequence[AgentHandle]) -> None:
        """
        C{agents} serve C{/metrics}, and are sent a scrape of it: from now
        on the path is theirs alone. Said once.
        """
        if self.shadowed:
            return
        self.shadowed = True
        self._log.warn(
            "GET /metrics on the scrape port is answered by path 'metrics' of {agents},"
            " not with the proxy's own metrics as PushProx's proxy answers it; until it"
            " restarts, the proxy will not answer /metrics itself, so that the path's"
            " scrapes fail while its agent is away. The proxy's metrics are on its metrics"
            " port with --metrics; set proxy.pushprox.selfScrapeEnabled = false to keep"
            " /metrics the agent's after a restart too",
            agents=", ".join(
                f"{agent.kind} {clip(agent.name)!r} on {clip(agent.hostName)}" for agent in agents
            ),
        )
