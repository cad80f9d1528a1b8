# -*- test-case-name: promtwist.test.test_discovery -*-
"""
Prometheus HTTP service discovery (C{http_sd_configs}) for every registered path.

Each path becomes one target group whose address is the proxy's scrape port
and whose C{__metrics_path__} is the path, so one C{http_sd_configs} entry
replaces a static job per path.

All groups share one address, so each also gets an C{instance} label of
C{<address>/<path>} (unless the path's own labels set one): without it, two
paths exporting the same metric names in one job would write the same series.
"""

from __future__ import annotations

import json

from twisted.web.resource import Resource
from twisted.web.server import Request

from promtwist.proxy.registry import PathEntry, Registry

RESERVED_LABELS = frozenset({"__metrics_path__", "agentName", "hostName"})


def targetGroups(entries: list[PathEntry], target: str) -> list[dict[str, object]]:
    """
    The http_sd document for C{entries}, every label value a string.
    """
    groups: list[dict[str, object]] = []
    for entry in entries:
        labels = {
            key: str(value) for key, value in entry.labels.items() if key not in RESERVED_LABELS
        }
        labels.setdefault("instance", f"{target}/{entry.path}")
        labels["__metrics_path__"] = "/" + entry.path
        labels["agentName"] = ", ".join(agent.name for agent in entry.agents)
        labels["hostName"] = ", ".join(agent.hostName for agent in entry.agents)
        groups.append({"targets": [target], "labels": labels})
    return groups


class DiscoveryResource(Resource):
    """
    Serves the http_sd document.

    @ivar targetPrefix: the C{host:port} Prometheus should scrape, or C{""} to
        use the address Prometheus used to reach this document, which is the
        scrape port itself.
    """

    isLeaf = True

    def __init__(self, registry: Registry, targetPrefix: str) -> None:
        super().__init__()
        self.registry = registry
        self.targetPrefix = targetPrefix

    def render_GET(self, request: Request) -> bytes:
        groups = targetGroups(self.registry.snapshot(), self.targetPrefix or _reachedAs(request))
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"must-revalidate,no-store")
        return json.dumps(groups, indent=2).encode("utf-8") + b"\n"


def _reachedAs(request: Request) -> str:
    host = request.getHeader(b"Host")
    if host:
        text = host.decode("latin-1").strip()
        # Keep only a well-formed host[:port]; anything else is a client's noise.
        if text and all(c.isalnum() or c in "-.:[]_" for c in text):
            return text if _hasPort(text) else f"{text}:{request.getHost().port}"
    address = request.getHost()
    return f"{address.host}:{address.port}"


def _hasPort(hostport: str) -> bool:
    if hostport.startswith("["):
        return "]:" in hostport
    return hostport.count(":") == 1
