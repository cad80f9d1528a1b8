# -*- test-case-name: promtwist.test.test_metrics -*-
"""
The proxy's and the agent's own metrics, under prometheus-proxy's names.

Names, types and label names follow prometheus-proxy (its C{ProxyMetrics}
and C{AgentMetrics}) so that dashboards and alerts written for it keep
working; prometheus_client exposes counters as C{<name>_total}, as the JVM
client prometheus-proxy uses does. Metrics promtwist adds on top have names
prometheus-proxy does not use, and are called extras below.

Each L{ProxyMetrics} or L{AgentMetrics} owns its L{CollectorRegistry}, never
prometheus_client's global one, so that two proxies (or a proxy and an
agent) in one process, as in the tests, keep apart.

Two kinds of metric live here. Events (a scrape finished, an agent
connected) are counted by the code that sees them, through the event
methods. Sizes (agents connected, scrapes in flight) are not kept up to
date by anyone: a collector asks a state function for a snapshot when the
registry is collected, so the numbers are exactly those of the moment of
the scrape and the code that owns the state has nothing to remember to
update.
"""

from __future__ import annotations

import functools
import gzip
import math
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from twisted.internet.interfaces import IReactorTime

from promtwist.httputil import acceptsGzip

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""
prometheus-proxy's buckets for scrape latency, proxy and agent alike.
"""

RESPONSE_BYTES_BUCKETS = (1024, 10240, 102400, 512000, 1048576, 5242880, 10485760)
"""
prometheus-proxy's buckets for scrape response sizes.
"""


class Children:
    """
    The children of a labelled metric, each looked up once per label set.
    prometheus_client's C{labels()} checks its arguments and takes a lock on
    every call, which the scrape path would otherwise pay several times per
    scrape. The label sets are the metric's own, so this holds no more than
    the metric does.
    """

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        """
        The child for C{values}, in the order of the metric's label names.
        """
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child

    def forget(self, first: str) -> None:
        """
        Remove the children whose first label value is C{first}, from this
        cache and from the metric: their series end.
        """
        for values in [v for v in self._children if v[0] == first]:
            del self._children[values]
            self._metric.remove(*values)


@dataclass(frozen=True)
class ScrapeLeg:
    """
    One agent's part of a scrape, as prometheus-proxy's metrics count it:
    each agent asked for a path is a leg (a consolidated path's N agents are
    N legs), and a request that asked no agent is one untimed leg.

    @ivar type: the outcome, the C{type} of C{proxy_scrape_requests} and the
        C{outcome} of the latency histogram.
    @ivar seconds: from the request's arrival to this agent's answer (or
        its failure); L{None} for a request no agent was asked for, which
        prometheus-proxy does not time (and whose path, the requester's
        choice, must not become a label value).
    @ivar bodyBytes: a successful leg's body size, uncompressed.
    @ivar encoding: C{gzipped} when the agent's answer came over the link
        gzip-encoded, else C{plain}.
    """

    type: str
    seconds: float | None
    bodyBytes: int = 0
    encoding: str = "plain"


@dataclass(frozen=True)
class AgentSample:
    """
    One agent connection as the proxy sees it at collection time.

    @ivar name: the agent's name from its hello.
    @ivar hostName: the host name the agent reported.
    @ivar agentId: the id the proxy assigned to this connection.
    @ivar roundTripSeconds: the last heartbeat round trip, or L{None} before
        the first one.
    @ivar scrapesInFlight: scrapes sent to this agent and not yet answered.
    @ivar connectedSeconds: how long ago this connection completed its
        handshake.
    @ivar transfersInProgress: answers in several frames of which some,
        not all, arrived (prometheus-proxy's chunked contexts).
    """

    name: str
    hostName: str
    agentId: str
    roundTripSeconds: float | None
    scrapesInFlight: int
    connectedSeconds: float = 0.0
    transfersInProgress: int = 0


@dataclass(frozen=True)
class ProxyState:
    """
    A snapshot of what the proxy's sampled gauges report.

    @ivar agents: every agent connection that completed its handshake.
    @ivar pathCount: paths in the path table.
    @ivar pendingHandshakes: connections on the agent port that have not
        completed their handshake yet.
    @ivar kinds: agents in the registry by kind (L{AGENT_KINDS}' values).
    """

    agents: Sequence[AgentSample]
    pathCount: int
    pendingHandshakes: int
    kinds: Mapping[str, int] = field(default_factory=dict)

    @property
    def inFlight(self) -> int:
        """
        Scrapes in flight over all agents.
        """
        return sum(agent.scrapesInFlight for agent in self.agents)


@dataclass(frozen=True)
class AgentState:
    """
    A snapshot of what the agent's sampled gauges report.

    @ivar linkUp: whether a connection to the proxy completed its handshake
        and is still up.
    @ivar backlog: scrape requests received and waiting for a free slot
        (C{max_concurrent_clients}).
    @ivar inFlight: target fetches under way.
    @ivar roundTripSeconds: the last heartbeat round trip, or L{None} when
        there was none on the current link.
    @ivar pathCount: paths the agent serves.
    @ivar clientCacheSize: HTTP clients kept for fetching targets.
        prometheus-proxy caches one client per set of credentials; promtwist
        fetches every target through one connection pool, so this is 1
        while the pool exists and 0 otherwise.
    """

    linkUp: bool
    backlog: int
    inFlight: int
    roundTripSeconds: float | None
    pathCount: int
    clientCacheSize: int = 1


class _Sampled:
    """
    A collector whose families are computed from a state function at
    collection time.

    Until a state function is given it yields nothing, rather than zeros
    that would read as a real, idle process.

    @ivar describe: the families with no samples, so that the registry
        knows their names (and refuses a clash) without calling the state
        function at registration, before there is any state.
    """

    def __init__(
        self,
        describe: Callable[[], list[Metric]],
        families: Callable[[object], Iterable[Metric]],
    ) -> None:
        self.describe = describe
        self._families = families
        self._state: Callable[[], object] | None = None

    def track(self, state: Callable[[], object]) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        if self._state is None:
            return []
        return list(self._families(self._state()))


def javaDouble(value: float) -> str:
    """
    C{value} as prometheus-proxy's client library prints it: simpleclient's
    C{doubleToGoString}, which is C{+Inf}/C{-Inf} or Java's
    C{Double.toString} (the shortest digits that read back as C{value},
    plain from 10^-3 up to 10^7 with at least one digit after the point,
    C{1.048576E7} style outside that).

    prometheus_client prints Go's C{%g} style instead (C{1.048576e+06}),
    which as a bucket's C{le} label is another series to Prometheus.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    sign, digitTuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digitTuple)).rstrip("0")
    # The power of ten of the first digit.
    magnitude = len(digitTuple) - 1 + exponent
    prefix = "-" if sign else ""
    if -3 <= magnitude < 7:
        point = magnitude + 1
        if point <= 0:
            whole, fraction = "0", "0" * -point + digits
        else:
            digits = digits.ljust(point, "0")
            whole, fraction = digits[:point], digits[point:]
        return f"{prefix}{whole}.{fraction or '0'}"
    return f"{prefix}{digits[0]}.{digits[1:] or '0'}E{magnitude}"


def goFloat(value: float) -> str:
    """
    C{value} as Go's Prometheus client prints it (PushProx's): C{strconv}'s
    shortest C{'g'} form, C{1}, C{2.5}, C{0.005}, C{1e+06}, and C{+Inf}.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digitTuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digitTuple)).rstrip("0") or "0"
    magnitude = len(digitTuple) - 1 + exponent
    prefix = "-" if sign else ""
    if magnitude < -4 or magnitude >= 6:
        mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if magnitude < 0 else '+'}{abs(magnitude):02d}"
    if magnitude < 0:
        return f"{prefix}0.{'0' * (-magnitude - 1)}{digits}"
    whole, fraction = digits.ljust(magnitude + 1, "0")[: magnitude + 1], digits[magnitude + 1 :]
    return f"{prefix}{whole}.{fraction}" if fraction else f"{prefix}{whole}"


Spelling = Callable[[float], str]
"""
How a histogram's bucket bounds are written as its C{le} label.
"""


@functools.lru_cache(maxsize=1024)
def _spelled(spelling: Spelling, le: str) -> str:
    # A histogram has a dozen bounds; each is spelled once.
    return spelling(float(le))


class MetricsRegistry(CollectorRegistry):
    """
    A registry whose histogram buckets carry C{le} as the program whose
    series they stand for writes it: prometheus-proxy's Java client
    (L{javaDouble}: C{le="1048576.0"}, C{le="1.048576E7"}) unless the
    family says otherwise (L{spellBuckets}: PushProx's Go client,
    L{goFloat}: C{le="1"}, C{le="10"}). The C{le} text is part of a
    series' identity, so a query or recording rule that names one bucket
    finds it only in that spelling.

    prometheus_client makes the C{le} text itself when a histogram is
    collected, so it is rewritten here, at collection, in both exposition
    formats and in L{get_sample_value}; the bounds themselves are the same
    numbers.

    A counter's or histogram's C{_created} sample is kept, as
    prometheus-proxy's simpleclient writes one, unless the family is
    written as Go's client writes it (L{likeGo}), which has none.
    """

    def __init__(self) -> None:
        super().__init__()
        self._spellings: dict[str, Spelling] = {}
        self._uncreated: set[str] = set()

    def spellBuckets(self, family: str, spelling: Spelling) -> None:
        """
        Write the buckets of histogram C{family} with C{spelling}.
        """
        self._spellings[family] = spelling

    def likeGo(self, family: str) -> None:
        """
        Write C{family} as PushProx's Go client writes its families: its
        buckets' bounds spelled by L{goFloat} (C{le="1"}), and no
        C{_created} sample.
        """
        self.spellBuckets(family, goFloat)
        self._uncreated.add(family)

    def collect(self) -> Iterator[Metric]:
        for family in super().collect():
            if family.name in self._uncreated:
                created = family.name + "_created"
                family.samples = [s for s in family.samples if s.name != created]
            if family.type == "histogram":
                spelling = self._spellings.get(family.name, javaDouble)
                family.samples = [
                    sample._replace(
                        labels={**sample.labels, "le": _spelled(spelling, sample.labels["le"])}
                    )
                    if "le" in sample.labels
                    else sample
                    for sample in family.samples
                ]
            yield family


def _newRegistry() -> MetricsRegistry:
    """
    A registry of one's own, with the process metrics
    (C{process_cpu_seconds_total}, C{process_resident_memory_bytes}, ...,
    and C{python_info}) that prometheus-proxy gets from its JVM collectors.
    """
    registry = MetricsRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


# zlib's default. A proxy's text shrinks 4-fold (a few KiB) to 25-fold (300
# paths' histograms, 500 KiB) at it, in a few per cent of the time collecting
# it took; level 9, gzip.compress's default, takes about five times longer
# for 4 % less.
EXPOSITION_GZIP_LEVEL = 6


@dataclass(frozen=True)
class Exposition:
    """
    A registry's samples as one client asked for them.

    @ivar contentEncoding: C{gzip}, or C{""} for the body as it is.
    """

    body: bytes
    contentType: str
    contentEncoding: str


def exposition(registry: CollectorRegistry, accept: str, acceptEncoding: str) -> Exposition:
    """
    C{registry} in the exposition format C{accept} asks for, gzipped if
    C{acceptEncoding} admits gzip: OpenMetrics to a client that asks for
    C{application/openmetrics-text}, as Prometheus does, else the text
    format (0.0.4 unless a later version is asked for), as
    prometheus_client's own servers decide, and compressed as theirs and
    Go's C{promhttp} (which PushProx's proxy serves its metrics with) do.

    Every endpoint that serves the proxy's or the agent's metrics answers
    with this, so they cannot come to differ.
    """
    encoder, contentType = choose_encoder(accept)
    body = encoder(registry)
    if acceptsGzip(acceptEncoding):
        return Exposition(gzip.compress(body, EXPOSITION_GZIP_LEVEL), contentType, "gzip")
    return Exposition(body, contentType, "")


class ProxyMetrics:
    """
    The proxy's metrics: prometheus-proxy's C{ProxyMetrics}, plus extras.

    @ivar registry: everything the proxy's metrics endpoint serves.
    """

    def __init__(self, launchId: str, clock: IReactorTime) -> None:
        """
        @param launchId: this process's launch id, the C{launch_id} label of
            C{proxy_start_time_seconds}.
        @param clock: gives the start time.
        """
        self.registry = registry = _newRegistry()
        self._scrapeRequests = Counter(
            "proxy_scrape_requests",
            "Scrape requests by outcome: one per agent asked (a consolidated"
            " path's agents each count), one for a request no agent was asked for.",
            ["type"],
            registry=registry,
        )
        self._latency = Histogram(
            "proxy_scrape_request_latency_seconds",
            "Time from a scrape request's arrival to each agent's answer, by"
            " registered path and outcome.",
            ["path", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._responseBytes = Histogram(
            "proxy_scrape_response_bytes",
            "Uncompressed body bytes of each agent's successful answer, by path"
            " and by whether it came over the link gzipped or plain.",
            ["path", "encoding"],
            buckets=RESPONSE_BYTES_BUCKETS,
            registry=registry,
        )
        self._requestsOf = Children(self._scrapeRequests)
        self._latencyOf = Children(self._latency)
        self._responseBytesOf = Children(self._responseBytes)
        self._connects = Counter(
            "proxy_connect_count",
            "Agent connections that completed their handshake.",
            registry=registry,
        )
        self._evictions = Counter(
            "proxy_eviction_count",
            "Agents disconnected for inactivity.",
            registry=registry,
        )
        self._heartbeats = Counter(
            "proxy_heartbeat_count",
            "Heartbeats as prometheus-proxy's agents send them: one for each"
            " heartbeat interval an agent sent nothing else, counted when the"
            " proxy next hears from it (promtwist.proxy.heartbeats).",
            registry=registry,
        )
        # prometheus_client drops the "_total" these names end with and adds
        # it back when exposing, as prometheus-proxy's client library does.
        self._chunkFailures = Counter(
            "proxy_chunk_validation_failures_total",
            "Answers sent in several frames that failed validation, by stage:"
            " chunk (a frame broke the rules: more than the declared length or"
            " the credit) or summary (the last frame's totals did not match).",
            ["stage"],
            registry=registry,
        )
        self._abandoned = Counter(
            "proxy_chunked_transfers_abandoned_total",
            "Answers sent in several frames whose link was lost before their last frame.",
            registry=registry,
        )
        # prometheus_client drops a "_total" suffix from a counter's name and
        # adds it back when exposing, so this is exposed as
        # proxy_agent_displacement_total, as prometheus-proxy's is.
        self._displacements = Counter(
            "proxy_agent_displacement_total",
            "Exclusive paths taken from a connected holder by the same agent proving itself"
            " again (same identity and launch, or a per-agent identity).",
            registry=registry,
        )
        self._holderChanges = Counter(
            "proxy_path_holder_changes",
            "Exclusive paths that went from one agent to another, by why:"
            " unregistered, goodbye, lost, evicted, reload (the holder left, or its"
            " identity was revoked, and a standby took over), takeover (the same"
            " agent proved itself again) or returned (a per-agent owner took back"
            " a path another identity held while it was away).",
            ["reason"],
            registry=registry,
        )
        startTime = Gauge(
            "proxy_start_time_seconds",
            "When this proxy started, in seconds since the epoch.",
            ["launch_id"],
            registry=registry,
        )
        startTime.labels(launch_id=launchId).set(clock.seconds())
        self._relayedBytes = Counter(
            "proxy_relayed_bytes",
            "Scrape response body bytes sent to Prometheus.",
            registry=registry,
        )
        self._rejections = Counter(
            "proxy_rejections",
            "Agent connections and requests the proxy turned away, by reason.",
            ["reason"],
            registry=registry,
        )
        # Exposed at 0 from the start, so that the success ratio reads 0, not
        # nothing, while no scrape succeeds.
        self._scrapeRequests.labels(type="success")
        self._sampled = _Sampled(_proxyFamilies, _proxySamples)
        registry.register(self._sampled)

    def scrapeFinished(
        self, path: str | None, legs: Iterable[ScrapeLeg], relayedBytes: int
    ) -> None:
        """
        A scrape request was answered.

        @param path: the registry key that served it (a path without its
            leading C{/}, or a host key); a label value only for timed legs,
            whose key is a registered one. L{None} when the key has been
            forgotten since (L{forgetPath}): its legs are counted, unlabelled.
        @param legs: what prometheus-proxy counts of it (L{ScrapeLeg}).
        @param relayedBytes: body bytes sent to Prometheus.
        """
        for leg in legs:
            self._requestsOf(leg.type).inc()
            if leg.seconds is None or path is None:
                continue
            self._latencyOf(path, leg.type).observe(leg.seconds)
            # Only successes: other bodies are promtwist's own one-line
            # reasons, which would say nothing about the targets' sizes.
            if leg.type == "success":
                self._responseBytesOf(path, leg.encoding).observe(leg.bodyBytes)
        self._relayedBytes.inc(relayedBytes)

    def forgetPath(self, path: str) -> None:
        """
        The registry forgot C{path}: end its series, so that the C{path}
        labels stay as many as the claims.
        """
        self._latencyOf.forget(path)
        self._responseBytesOf.forget(path)

    def chunkInvalid(self, stage: str) -> None:
        """
        An answer in several frames failed validation.

        @param stage: C{chunk} (a frame on the way) or C{summary} (the last).
        """
        self._chunkFailures.labels(stage=stage).inc()

    def transferAbandoned(self) -> None:
        """
        An answer in several frames lost its link before the last frame.
        """
        self._abandoned.inc()

    def agentConnected(self) -> None:
        """
        An agent completed its handshake.
        """
        self._connects.inc()

    def heartbeats(self, count: int) -> None:
        """
        C{count} heartbeats, in prometheus-proxy's units, were confirmed on
        an agent's link (L{promtwist.proxy.heartbeats.UpstreamHeartbeats}).
        """
        if count:
            self._heartbeats.inc(count)

    def agentEvicted(self) -> None:
        """
        An agent was disconnected for having been silent too long.
        """
        self._evictions.inc()

    def agentDisplaced(self) -> None:
        """
        An agent took an exclusive path from its connected holder by proving
        it is the same agent (same identity and launch, or a per-agent
        identity).
        """
        self._displacements.inc()

    def holderChanged(self, reason: str) -> None:
        """
        An exclusive path changed holder.

        @param reason: a key of
            L{promtwist.proxy.registry.HOLDER_CHANGE_REASONS}.
        """
        self._holderChanges.labels(reason=reason).inc()

    def rejected(self, reason: str) -> None:
        """
        The proxy turned something away.

        @param reason: a short fixed word, such as C{bad_token} or
            C{too_many_agents}; never text from the peer, which would make a
            new series per value.
        """
        self._rejections.labels(reason=reason).inc()

    def track(self, state: Callable[[], ProxyState]) -> None:
        """
        Report the sampled gauges from C{state}, called at every collection
        (so it must be cheap and must not fail); replaces any earlier one.
        Until this is called those gauges are not exposed.
        """
        self._sampled.track(state)


_AGENT_MAP_SIZE = "proxy_agent_map_size"
_PATH_MAP_SIZE = "proxy_path_map_size"
_SCRAPE_MAP_SIZE = "proxy_scrape_map_size"
_BACKLOG_SIZE = "proxy_cumulative_agent_backlog_size"
_CHUNK_MAP_SIZE = "proxy_chunk_context_map_size"
_CONNECTED_AGENTS = "proxy_connected_agents"
_CONNECTED_SECONDS = "proxy_agent_connected_seconds"
_AGENT_RTT = "proxy_agent_heartbeat_rtt_seconds"
_AGENT_IN_FLIGHT = "proxy_scrapes_in_flight"
_PENDING_HANDSHAKES = "proxy_pending_handshakes"
_AGENTS_BY_KIND = "proxy_agents"

#: The kind label of proxy_agents, by what the registry's agents call
#: their kind (promtwist.proxy.registry.AgentHandle.kind): promtwist's own
#: agents, prometheus-proxy's over gRPC, PushProx clients. Every kind is
#: reported, 0 when none is connected, so that a migration can be watched.
AGENT_KINDS: Mapping[str, str] = {
    "agent": "promtwist",
    "gRPC agent": "grpc",
    "PushProx client": "pushprox",
}


def _proxyFamilies() -> list[Metric]:
    """
    The proxy's sampled families, empty.
    """
    return [
        GaugeMetricFamily(_AGENT_MAP_SIZE, "Agent connections that completed their handshake."),
        GaugeMetricFamily(_PATH_MAP_SIZE, "Paths in the path table."),
        GaugeMetricFamily(_SCRAPE_MAP_SIZE, "Scrape requests in flight."),
        GaugeMetricFamily(
            _BACKLOG_SIZE,
            "Scrape requests waiting on agents, summed over agents. promtwist"
            " sends each request to its agent at once rather than queueing it,"
            " so this equals proxy_scrape_map_size.",
        ),
        GaugeMetricFamily(
            _CHUNK_MAP_SIZE,
            "Answers in several frames under way: the head arrived, the last"
            " frame not yet (promtwist relays the frames as they arrive).",
        ),
        GaugeMetricFamily(
            _CONNECTED_AGENTS,
            "Agent connections by agent name and host name.",
            labels=["agent_name", "host_name"],
        ),
        GaugeMetricFamily(
            _CONNECTED_SECONDS,
            "Seconds since the newest connection of this agent name and host name"
            " completed its handshake. It grows like a counter and drops at every"
            " reconnect, so resets() over a window counts reconnects (a restarting"
            " or flapping agent).",
            labels=["agent_name", "host_name"],
        ),
        GaugeMetricFamily(
            _AGENT_RTT,
            "Last heartbeat round trip per agent connection.",
            labels=["agent_name", "agent_id"],
        ),
        GaugeMetricFamily(
            _AGENT_IN_FLIGHT,
            "Scrape requests in flight by agent name.",
            labels=["agent_name"],
        ),
        GaugeMetricFamily(
            _PENDING_HANDSHAKES,
            "Connections on the agent port that have not completed their handshake.",
        ),
        GaugeMetricFamily(
            _AGENTS_BY_KIND,
            "Agents in the registry by kind: promtwist agents, prometheus-proxy agents"
            " over gRPC, PushProx clients.",
            labels=["kind"],
        ),
    ]


def _proxySamples(snapshot: object) -> list[Metric]:
    """
    The proxy's sampled families, filled from C{snapshot}.
    """
    assert isinstance(snapshot, ProxyState)
    families = {family.name: family for family in _proxyFamilies()}

    def put(name: str, value: float, labels: Sequence[str] = ()) -> None:
        family = families[name]
        assert isinstance(family, GaugeMetricFamily)
        family.add_metric(labels, value)

    inFlight = snapshot.inFlight
    put(_AGENT_MAP_SIZE, len(snapshot.agents))
    put(_PATH_MAP_SIZE, snapshot.pathCount)
    put(_SCRAPE_MAP_SIZE, inFlight)
    put(_BACKLOG_SIZE, inFlight)
    put(_CHUNK_MAP_SIZE, sum(agent.transfersInProgress for agent in snapshot.agents))
    put(_PENDING_HANDSHAKES, snapshot.pendingHandshakes)
    for kind in AGENT_KINDS.values():
        put(_AGENTS_BY_KIND, snapshot.kinds.get(kind, 0), (kind,))
    connected = Tally((agent.name, agent.hostName) for agent in snapshot.agents)
    for (name, hostName), count in sorted(connected.items()):
        put(_CONNECTED_AGENTS, count, (name, hostName))
    newest: dict[tuple[str, str], float] = {}
    for agent in snapshot.agents:
        key = (agent.name, agent.hostName)
        newest[key] = min(newest.get(key, agent.connectedSeconds), agent.connectedSeconds)
    for (name, hostName), seconds in sorted(newest.items()):
        put(_CONNECTED_SECONDS, seconds, (name, hostName))
    byName: Tally[str] = Tally()
    for agent in snapshot.agents:
        byName[agent.name] += agent.scrapesInFlight
        if agent.roundTripSeconds is not None:
            put(_AGENT_RTT, agent.roundTripSeconds, (agent.name, agent.agentId))
    for name, count in sorted(byName.items()):
        put(_AGENT_IN_FLIGHT, count, (name,))
    return list(families.values())


class AgentMetrics:
    """
    The agent's metrics: prometheus-proxy's C{AgentMetrics}, plus extras.

    Every metric carries the agent's C{launch_id}, as prometheus-proxy's do,
    so that an agent's restart starts new series rather than resetting old
    ones.

    @ivar registry: everything the agent's metrics endpoint serves.
    """

    def __init__(self, launchId: str, agentName: str, clock: IReactorTime) -> None:
        """
        @param launchId: this process's launch id.
        @param agentName: the agent's name, the C{agent_name} label of the
            latency histogram.
        @param clock: gives the start time.
        """
        self.registry = registry = _newRegistry()
        self._launchId = launchId
        self._agentName = agentName
        self._scrapeRequests = Counter(
            "agent_scrape_request_count",
            "Scrape requests handled, by type: success, unsuccessful (non-2xx"
            " or too large) or invalid_path. Fetches that failed outright are"
            " not counted, as in prometheus-proxy.",
            ["launch_id", "type"],
            registry=registry,
        )
        self._scrapeResults = Counter(
            "agent_scrape_result_count",
            "Scrape results sent to the proxy, failures included, by type: chunked"
            " (in several frames), gzipped or non-gzipped (in one frame, by the"
            " body's encoding on the link), or dropped (a fetch under way when"
            " the link closed).",
            ["launch_id", "type"],
            registry=registry,
        )
        # promtwist's own: prometheus-proxy counts no retries.
        self._scrapeRetries = Counter(
            "agent_scrape_retry_count",
            "Target fetches retried (agent.scrapeMaxRetries), by type of the"
            " failure retried: unreachable or server_error (5xx).",
            ["launch_id", "type"],
            registry=registry,
        )
        self._requestsOf = Children(self._scrapeRequests)
        self._resultsOf = Children(self._scrapeResults)
        self._retriesOf = Children(self._scrapeRetries)
        self._connects = Counter(
            "agent_connect_count",
            "Attempts to connect to a proxy, by type: success or failure.",
            ["launch_id", "type"],
            registry=registry,
        )
        self._latency = Histogram(
            "agent_scrape_request_latency_seconds",
            "Time to fetch a target.",
            ["launch_id", "agent_name"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._latencyOf = Children(self._latency)
        self._linesDropped = Counter(
            "agent_filter_lines_dropped",
            "Exposition lines a metric filter removed, by path.",
            ["launch_id", "path"],
            registry=registry,
        )
        self._bytesSaved = Counter(
            "agent_filter_bytes_saved",
            "Bytes a metric filter removed, by path.",
            ["launch_id", "path"],
            registry=registry,
        )
        # Every type is exposed at 0 from the start, so that rates and
        # increases read 0 before the first event rather than nothing.
        for counter, types in (
            (self._scrapeRequests, ("success", "unsuccessful", "invalid_path")),
            (self._scrapeResults, ("non-gzipped", "gzipped", "chunked", "dropped")),
            (self._connects, ("success", "failure")),
            (self._scrapeRetries, ("unreachable", "server_error")),
        ):
            for kind in types:
                counter.labels(launch_id=launchId, type=kind)
        startTime = Gauge(
            "agent_start_time_seconds",
            "When this agent started, in seconds since the epoch.",
            ["launch_id"],
            registry=registry,
        )
        startTime.labels(launch_id=launchId).set(clock.seconds())
        self._sampled = _Sampled(_agentFamilies, self._agentSamples)
        registry.register(self._sampled)

    def connected(self, success: bool) -> None:
        """
        An attempt to connect to a proxy (through its handshake) ended.
        """
        self._connects.labels(
            launch_id=self._launchId, type="success" if success else "failure"
        ).inc()

    def scrapeFinished(self, kind: str, seconds: float) -> None:
        """
        A scrape of a served path ended, and is timed.

        @param kind: C{success} or C{unsuccessful}, counted under that type,
            or C{failed} (no answer from the target), which prometheus-proxy
            does not count.
        @param seconds: how long the scrape took.
        """
        if kind != "failed":
            self._requestsOf(self._launchId, kind).inc()
        self._latencyOf(self._launchId, self._agentName).observe(seconds)

    def invalidPath(self) -> None:
        """
        A scrape of a path the agent does not serve: counted, not timed.
        """
        self._requestsOf(self._launchId, "invalid_path").inc()

    def resultSent(self, type: str) -> None:
        """
        A scrape result went to the proxy, or was lost.

        @param type: C{non-gzipped}, C{gzipped}, C{chunked} or C{dropped}.
        """
        self._resultsOf(self._launchId, type).inc()

    def retried(self, type: str) -> None:
        """
        A target fetch is being retried.

        @param type: C{unreachable} or C{server_error}.
        """
        self._retriesOf(self._launchId, type).inc()

    def filtered(self, path: str, linesDropped: int, bytesSaved: int) -> None:
        """
        A metric filter ran over a response body of C{path}.
        """
        self._linesDropped.labels(launch_id=self._launchId, path=path).inc(linesDropped)
        self._bytesSaved.labels(launch_id=self._launchId, path=path).inc(bytesSaved)

    def track(self, state: Callable[[], AgentState]) -> None:
        """
        Report the sampled gauges from C{state}, called at every collection
        (so it must be cheap and must not fail); replaces any earlier one.
        Until this is called those gauges are not exposed.
        """
        self._sampled.track(state)

    def _agentSamples(self, snapshot: object) -> list[Metric]:
        """
        The agent's sampled families, filled from C{snapshot}.
        """
        assert isinstance(snapshot, AgentState)
        values: dict[str, float | None] = {
            "agent_scrape_backlog_size": snapshot.backlog,
            "agent_client_cache_size": snapshot.clientCacheSize,
            "agent_link_up": 1 if snapshot.linkUp else 0,
            "agent_scrapes_in_flight": snapshot.inFlight,
            "agent_heartbeat_rtt_seconds": snapshot.roundTripSeconds,
            "agent_paths": snapshot.pathCount,
        }
        families = _agentFamilies()
        for family in families:
            value = values[family.name]
            if value is not None:
                assert isinstance(family, GaugeMetricFamily)
                family.add_metric([self._launchId], value)
        return families


def _agentFamilies() -> list[Metric]:
    """
    The agent's sampled families, empty.
    """
    labels = ["launch_id"]
    return [
        GaugeMetricFamily(
            "agent_scrape_backlog_size",
            "Scrape requests waiting for a free fetch slot.",
            labels=labels,
        ),
        GaugeMetricFamily(
            "agent_client_cache_size",
            "HTTP clients kept for fetching targets. promtwist keeps one"
            " connection pool for all targets, so this is 1 (0 before it exists).",
            labels=labels,
        ),
        GaugeMetricFamily(
            "agent_link_up",
            "1 while connected to a proxy with the handshake done, else 0.",
            labels=labels,
        ),
        GaugeMetricFamily("agent_scrapes_in_flight", "Target fetches under way.", labels=labels),
        GaugeMetricFamily(
            "agent_heartbeat_rtt_seconds",
            "Last heartbeat round trip to the proxy; absent when there was none"
            " on the current link.",
            labels=labels,
        ),
        GaugeMetricFamily("agent_paths", "Paths this agent serves.", labels=labels),
    ]
