# -*- test-case-name: promtwist.test.test_discovery -*-
"""
Prometheus HTTP service discovery (C{http_sd_configs}) for every registered path.

Each path becomes one target group whose address is the proxy's scrape port
and whose C{__metrics_path__} is the path, so one C{http_sd_configs} entry
replaces a static job per path. By default the groups carry the labels
prometheus-proxy's do and no C{instance}, so a migrating user's series keep
their identity; C{proxy.service.discovery.perPathInstance} adds one per path.

Host-routed targets (C{agent.targets}, scraped through C{proxy_url}) are
listed by C{?routing=host}, each group naming its own C{host:port} as
PushProx users' targets do: a separate document, because a job that uses
C{proxy_url} and one that scrapes paths cannot share one.

The document is kept as text between requests and remade only for what
changed in the registry, so a request costs about its size in memory copies,
not a JSON encoding of every path.
"""

from __future__ import annotations

from collections import OrderedDict
from json.encoder import encode_basestring as _quoted

from twisted.internet.address import IPv4Address, IPv6Address

from promtwist.addresses import socketHostPort
from promtwist.hostkeys import (
    BadTarget,
    checkHost,
    claimsPort,
    hostPort,
    isHostKey,
    keyTarget,
    parseHostPort,
)
from promtwist.logs import clip
from promtwist.proxy.answers import textAnswer
from promtwist.proxy.exchange import Exchange
from promtwist.proxy.registry import Listed, PathEntry, Registry

RESERVED_LABELS = frozenset({"__metrics_path__", "agentName", "hostName"})
# What a host-routed target's labels may not set either: its job and
# instance are Prometheus' (the job's name, the target's own address), and a
# label beginning __ would steer the scrape itself (__scheme__, __param_*,
# __address__). Paths keep prometheus-proxy's rule, which lets these
# through: its users set job and instance on paths.
_TARGET_RESERVED = frozenset({"job", "instance"})


def isReservedLabel(key: str, label: str) -> bool:
    """
    Whether C{label} on the claim C{key} is the proxy's or Prometheus' to
    set, and is left out of the discovery document: for a path,
    prometheus-proxy's three; for a host-routed target those, C{job},
    C{instance} and any label beginning C{__}.
    """
    if label in RESERVED_LABELS:
        return True
    return isHostKey(key) and (label in _TARGET_RESERVED or label.startswith("__"))


# How many targets' documents are kept rendered; Prometheus reaches the proxy
# under one or two names, and any other Host header costs one join.
RENDERED_TARGETS = 4


def groupSegments(entry: PathEntry | Listed, perPathInstance: bool) -> list[str]:
    """
    The target group for C{entry} as JSON text, cut where the target
    address goes: joining the segments with the JSON-escaped address (no
    quotes) gives the group. The text does not depend on the address, so it
    is made once per change of the entry.

    @param perPathInstance: whether a path without an C{instance} label of
        its own gets C{instance} C{<address>/<path>} (promtwist's own,
        opt-in). By default it gets none, as from prometheus-proxy, so that
        Prometheus sets C{instance} to the address and a migrating user's
        series keep their identity. A path's own C{instance} passes through
        either way, as any other label does upstream.
    """
    pairs = [
        f"{_quoted(k)}:{_quoted(v)}"
        for k, v in entry.labels.items()
        if not isReservedLabel(entry.path, k)
    ]
    hostRouted = isHostKey(entry.path)
    if not hostRouted:
        pairs.append('"__metrics_path__":' + _quoted("/" + entry.path))
    pairs.append('"agentName":' + _quoted(entry.agentNames))
    pairs.append('"hostName":' + _quoted(entry.hostNames))
    rest = ",".join(pairs) + "}}"
    if hostRouted:
        # Its own address: one segment, nothing to fill in.
        return ['{"targets":[' + _quoted(keyTarget(entry.path)) + '],"labels":{' + rest]
    head = '{"targets":["'
    if not perPathInstance or "instance" in entry.labels:
        return [head, '"],"labels":{' + rest]
    return [head, '"],"labels":{"instance":"', f"{_quoted('/' + entry.path)[1:]},{rest}"]


class Document:
    """
    The http_sd document of a registry, rebuilt only when the registry's
    generation moved, and then only for the entries that changed.

    @ivar perPathInstance: see L{groupSegments}. All groups name the same
        address, so without it (and without relabelling) two paths
        exporting the same metric names in one job write the same series.
    @ivar hostRouted: whether this document lists the host-routed targets
        rather than the paths.
    """

    def __init__(self, registry: Registry, perPathInstance: bool, hostRouted: bool = False) -> None:
        self.registry = registry
        self.perPathInstance = perPathInstance
        self.hostRouted = hostRouted
        self._generation = -1
        # Each path's group as encoded segments, and when its entry changed.
        self._groups: dict[str, tuple[int, list[bytes]]] = {}
        # The groups in document order (shared with _groups, not copied).
        self._order: list[list[bytes]] = []
        self._rendered: OrderedDict[str, bytes] = OrderedDict()

    def render(self, target: str) -> bytes:
        """
        The document for Prometheus scraping C{target} (C{host:port}),
        encoded.
        """
        self.refresh()
        body = self._rendered.get(target)
        if body is None:
            hole = _quoted(target)[1:-1].encode("utf-8")
            body = b"[" + b",".join([hole.join(group) for group in self._order]) + b"]\n"
            self._rendered[target] = body
            if len(self._rendered) > RENDERED_TARGETS:
                self._rendered.popitem(last=False)
        else:
            self._rendered.move_to_end(target)
        return body

    def refresh(self) -> None:
        """
        Encode what changed in the registry since the last refresh.

        Called on a timer as well as per request, so that the groups of a
        herd of agents registering are encoded a second's worth at a time as
        they come, rather than all of them by the first request after it.
        """
        self.registry.expireDeparted()
        if self.registry.generation != self._generation:
            self._rebuild()

    def _rebuild(self) -> None:
        """
        Bring the groups in line with the registry: only entries whose
        C{changed} moved are copied out of it and encoded again.
        """
        self._generation = self.registry.generation
        self._rendered.clear()
        known, self._groups = self._groups, {}
        order: list[list[bytes]] = []
        for path, changed in self.registry.discoverableVersions():
            if isHostKey(path) != self.hostRouted or (self.hostRouted and not claimsPort(path)):
                # A host claimed on any port (a PushProx client) has no
                # address Prometheus could scrape.
                continue
            cached = known.get(path)
            if cached is None or cached[0] != changed:
                entry = self.registry.discoverableEntry(path)
                # One encoding for the whole group: NUL is escaped in JSON
                # text, so it can only be a cut between segments.
                text = "\0".join(groupSegments(entry, self.perPathInstance))
                cached = (changed, text.encode("utf-8").split(b"\0"))
            self._groups[path] = cached
            order.append(cached[1])
        self._order = order


class Discovery:
    """
    Serves the http_sd document on the scrape port.

    @ivar targetPrefix: the C{host:port} Prometheus should scrape, or C{""} to
        use the address Prometheus used to reach this document, which is the
        scrape port itself.
    """

    def __init__(self, registry: Registry, targetPrefix: str, perPathInstance: bool) -> None:
        self.registry = registry
        self.targetPrefix = targetPrefix
        self.document = Document(registry, perPathInstance)
        self.targets = Document(registry, perPathInstance, hostRouted=True)

    def refresh(self) -> None:
        self.document.refresh()
        self.targets.refresh()

    def answer(self, exchange: Exchange) -> None:
        routing = _routing(exchange.query)
        if routing == "host":
            return self._send(exchange, self.targets.render(""))
        if routing != "path":
            textAnswer(
                exchange,
                400,
                f"unknown routing {clip(routing)!r}: ?routing=path (the default) lists paths,"
                " ?routing=host the targets scraped through proxy_url",
            )
            return
        target = self.targetPrefix or _reachedAs(exchange)
        if not target:
            textAnswer(
                exchange,
                500,
                "this scrape port has no host:port to put in the targets (it is not a"
                " TCP socket) and the request's Host header names none:"
                " set proxy.service.discovery.targetPrefix",
            )
            return
        self._send(exchange, self.document.render(target))

    def _send(self, exchange: Exchange, document: bytes) -> None:
        exchange.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        exchange.setHeader(b"Cache-Control", b"must-revalidate,no-store")
        exchange.finishWith(document)


def _routing(query: bytes) -> str:
    """
    Which document a discovery request asks for: its last C{routing}
    parameter, C{"path"} without one.
    """
    routing = "path"
    for param in query.split(b"&"):
        name, _, value = param.partition(b"=")
        if name == b"routing":
            routing = value.decode("latin-1")
    return routing


def _reachedAs(exchange: Exchange) -> str:
    """
    The C{host:port} the request reached: its Host header's (with the
    port it came in on when the header names none), else the address it
    came in on; C{""} when neither says (a UNIX socket and no Host header
    with a port). Either way in a form Prometheus can scrape: an IPv6
    address bracketed, an IPv4-mapped one as IPv4.
    """
    address = exchange.host
    local = address if isinstance(address, IPv4Address | IPv6Address) else None
    header = exchange.headers.get(b"host")
    if header:
        text = header.decode("latin-1").strip()
        # Keep only a well-formed host[:port]; anything else is a client's noise.
        try:
            return hostPort(*parseHostPort(text))
        except BadTarget:
            pass
        if local is not None:
            try:
                return hostPort(checkHost(text), local.port)
            except BadTarget:
                pass
    return "" if local is None else socketHostPort(local)
