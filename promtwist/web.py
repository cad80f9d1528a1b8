# -*- test-case-name: promtwist.test.test_web -*-
"""
The operations ports: metrics for Prometheus, and the admin endpoints
(ping, version, health check, thread dump, debug) of prometheus-proxy's
admin servlets.

Everything here renders on the reactor thread: collecting a per-process
registry takes microseconds, and a thread pool would only add the locking
prometheus_client's own Twisted resource needs. Nothing here imports the
global reactor; the caller passes one.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

import promtwist
from promtwist.config.settings import AgentSettings, ProxySettings
from promtwist.health import Checks, HealthResource
from promtwist.httputil import UNCACHEABLE
from promtwist.listen import HTTP_1_1, Listener, settingListener
from promtwist.metrics import exposition
from promtwist.webguard import HardenedSite

# The operations ports take only short GETs from a few clients.
MAX_HEADER_BYTES = 16384
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 45.0

_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json; charset=utf-8"

# What prometheus-proxy's /version says of a build that records no date.
UNKNOWN = "Unknown"


def _respond(request: Request, body: bytes, contentType: bytes, code: int = 200) -> bytes:
    """
    Set the status and the headers every operations response carries, and
    return C{body} for C{render} to return.

    Nothing here may be cached (L{UNCACHEABLE}).
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", contentType)
    request.setHeader(b"Cache-Control", UNCACHEABLE)
    return body


class MetricsResource(Resource):
    """
    Serves a registry in the exposition format and encoding the client asks
    for (L{exposition}).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        def header(name: bytes) -> str:
            value = request.getHeader(name)
            return value.decode("latin-1") if value is not None else ""

        exposed = exposition(self.registry, header(b"accept"), header(b"accept-encoding"))
        if exposed.contentEncoding:
            request.setHeader(b"Content-Encoding", exposed.contentEncoding.encode("ascii"))
        return _respond(request, exposed.body, exposed.contentType.encode("ascii"))


class _Router(Resource):
    """
    Dispatches on the whole request path, so that a configured path may
    contain C{/} (C{admin/ping}), which L{Resource.putChild} cannot express.

    A leaf: the site hands it the request with every segment in C{postpath}.
    """

    isLeaf = True

    def __init__(self, routes: Mapping[str, IResource]) -> None:
        super().__init__()
        self.routes = dict(routes)

    def render(self, request: Request) -> bytes | int:
        segments = request.postpath or []
        path = "/".join(segment.decode("utf-8", "replace") for segment in segments)
        resource = self.routes.get(path)
        if resource is None:
            known = " ".join(f"/{route}" for route in sorted(self.routes))
            body = f"no such endpoint; this port serves: {known}\n".encode()
            return _respond(request, body, _TEXT, 404)
        result: bytes | int = resource.render(request)
        return result


class _Text(Resource):
    """
    Answers C{GET} with the text a function returns at that moment.
    """

    isLeaf = True

    def __init__(self, text: Callable[[], str]) -> None:
        super().__init__()
        self.text = text

    def render_GET(self, request: Request) -> bytes:
        return _respond(request, self.text().encode("utf-8"), _TEXT)


class _JSONResource(Resource):
    """
    Answers C{GET} with a JSON document.
    """

    isLeaf = True

    def __init__(self, document: Callable[[], Any]) -> None:
        super().__init__()
        self.document = document

    def render_GET(self, request: Request) -> bytes:
        body = json.dumps(self.document(), indent=2) + "\n"
        return _respond(request, body.encode("utf-8"), _JSON)


def threadDump() -> str:
    """
    The stack of every Python thread, like a JVM thread dump: the reactor
    thread and any the process started (DNS resolution, a thread pool).
    """
    frames = sys._current_frames()
    names = {thread.ident: thread for thread in threading.enumerate()}
    sections = []
    for ident, frame in sorted(frames.items()):
        thread = names.get(ident)
        if thread is None:
            title = f'"<unknown>" ident={ident}'
        else:
            kind = " daemon" if thread.daemon else ""
            title = f'"{thread.name}" ident={ident}{kind}'
        sections.append(title + "\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(sections)


def version() -> dict[str, str]:
    """
    C{/version}: prometheus-proxy's fields (C{version}, C{release_date},
    C{build_time}) and promtwist's C{name}. promtwist's version records no
    release date or build time; C{Unknown} is what prometheus-proxy itself
    reports for a build that records none.
    """
    return {
        "version": promtwist.__version__.public(),
        "release_date": UNKNOWN,
        "build_time": UNKNOWN,
        "name": "promtwist",
    }


def adminRoot(
    settings: ProxySettings | AgentSettings,
    health: Checks,
    debug: Callable[[], str] | None,
    clock: IReactorTime,
    timer: Callable[[], float] = time.monotonic,
) -> Resource:
    """
    The admin port's resource: each endpoint at its configured path, and
    none whose path is empty.

    @param health: the health checks (see L{promtwist.health.proxyHealth},
        L{promtwist.health.agentHealth}).
    @param debug: text for the C{debug} endpoint, served only when
        C{admin_debug_enabled} is set and this is given.
    @param clock: gives the health checks' timestamps.
    @param timer: a monotonic clock, for their durations.
    """
    routes: dict[str, IResource] = {}

    def add(path: str, resource: IResource) -> None:
        # The first endpoint keeps a path two settings share.
        if path and path not in routes:
            routes[path] = resource

    add(settings.admin_ping_path, _Text(lambda: "pong\n"))
    add(settings.admin_version_path, _JSONResource(version))
    add(settings.admin_health_check_path, HealthResource(health, clock, _respond, timer))
    add(settings.admin_thread_dump_path, _Text(threadDump))
    if settings.admin_debug_enabled and debug is not None:
        add("debug", _Text(debug))
    return _Router(routes)


def _section(settings: ProxySettings | AgentSettings) -> str:
    return "proxy" if isinstance(settings, ProxySettings) else "agent"


def operationsListeners(
    settings: ProxySettings | AgentSettings,
    registry: CollectorRegistry,
    health: Checks,
    debug: Callable[[], str] | None,
    reactor: Any,
    interface: str = "",
) -> list[Listener]:
    """
    The admin and metrics listeners the settings enable, for the caller to
    add to its service tree; an empty list when neither is.

    Both ports use L{HardenedSite}, since they too may face a network. Only
    the admin port applies C{admin_allowed_networks}: the metrics port is
    for Prometheus, wherever it runs, and has nothing to hide that the
    scrape port does not already show. An empty C{metrics_path} turns the
    metrics port off, as an empty admin path turns its endpoint off.

    @param reactor: provides C{IReactorTCP} and C{IReactorTime}; the
        listeners and the sites' timeouts use it.
    @param interface: the address to bind; all of both families by default.
        C{*.admin.listen} and C{*.metrics.listen} replace it and the port.
    """
    section = _section(settings)

    def listener(purpose: str, port: int, description: str, site: HardenedSite) -> Listener:
        return settingListener(
            reactor,
            f"{section}.{purpose}",
            purpose,
            port,
            description,
            site,
            interface,
            protocols=HTTP_1_1,
        )

    listeners = []
    if settings.admin_enabled:
        site = HardenedSite(
            adminRoot(settings, health, debug, reactor),
            maxHeaderBytes=MAX_HEADER_BYTES,
            headerTimeout=HEADER_TIMEOUT,
            idleTimeout=IDLE_TIMEOUT,
            allowedNetworks=settings.admin_allowed_networks,
            reactor=reactor,
        )
        listeners.append(listener("admin", settings.admin_port, settings.admin_listen, site))
    if settings.metrics_enabled and settings.metrics_path:
        site = HardenedSite(
            _Router({settings.metrics_path: MetricsResource(registry)}),
            maxHeaderBytes=MAX_HEADER_BYTES,
            headerTimeout=HEADER_TIMEOUT,
            idleTimeout=IDLE_TIMEOUT,
            reactor=reactor,
        )
        listeners.append(listener("metrics", settings.metrics_port, settings.metrics_listen, site))
    return listeners
