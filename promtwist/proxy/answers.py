# -*- test-case-name: promtwist.test.test_scrape -*-
"""
What a Prometheus request asks of the agents and how the answer is judged:
the pieces the single-agent relay and the consolidated fan-out share.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

from twisted.web.server import Request

from promtwist.config import MiB, ProxySettings
from promtwist.protocol.promtwist_pb2 import Outcome
from promtwist.proxy.link import AgentLink, ScrapeStream

TIMEOUT_HEADER = b"X-Prometheus-Scrape-Timeout-Seconds"

# What Prometheus sees for each way a scrape can fail at the agent, and the
# outcome type prometheus-proxy counts it under (its metrics' "type" label).
FAILURES = {
    Outcome.PATH_NOT_FOUND: (404, "path_not_found"),
    Outcome.UNREACHABLE: (503, "upstream_error"),
    Outcome.TIMED_OUT: (408, "upstream_timed_out"),
    Outcome.TOO_LARGE: (413, "content_too_large"),
    Outcome.CANCELLED: (503, "upstream_error"),
    Outcome.AGENT_ERROR: (503, "upstream_error"),
    Outcome.DISCONNECTED: (502, "upstream_error"),
}


def failureOf(outcome: Outcome) -> tuple[int, str]:
    """
    The status and outcome type for an agent's failure C{outcome}.
    """
    return FAILURES.get(outcome, (503, "upstream_error"))


def targetStatusType(status: int) -> str:
    """
    The outcome type of a target's own answer.
    """
    if 200 <= status < 300:
        return "success"
    return {404: "path_not_found", 504: "upstream_timed_out"}.get(status, "upstream_error")


@dataclass(frozen=True)
class ScrapeRecord:
    """
    How one scrape ended, for the proxy's metrics and its debug page.

    @ivar type: prometheus-proxy's outcome type (C{success}, C{timed_out},
        C{upstream_error}, ...).
    @ivar encoding: C{gzipped} or C{plain}, as the body reached Prometheus.
    """

    path: str
    agents: str
    status: int
    type: str
    reason: str
    seconds: float
    bytes: int
    encoding: str


@dataclass(frozen=True)
class ScrapeCall:
    """
    What every agent serving a path is asked for one Prometheus request.
    """

    path: str
    query: str
    accept: str
    acceptEncoding: str
    authorization: str
    deadline: float

    def send(self, link: AgentLink) -> ScrapeStream:
        return link.scrape(
            self.path,
            self.query,
            self.accept,
            self.acceptEncoding,
            self.authorization,
            agentBudget(self.deadline),
        )


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
    """
    Make C{request} a one-line text error and return its body. Headers a
    target's answer may already have set (its length and encoding) are
    dropped: they describe a body that will not come.
    """
    request.setResponseCode(status)
    for stale in (b"Content-Length", b"Content-Encoding"):
        request.responseHeaders.removeHeader(stale)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"must-revalidate,no-store")
    return reason.encode("utf-8") + b"\n"


def header(request: Request, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value else ""


class GunzipError(Exception):
    """
    A gzip body could not be passed on decompressed.

    @ivar status: what Prometheus sees; @ivar type: the outcome type.
    """

    def __init__(self, message: str, status: int, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = kind


def gunzipper(limit: int) -> Callable[[bytes], bytes]:
    """
    A streaming gzip decoder, refusing to inflate past C{limit} bytes (a zip
    bomb costs nothing but an error); an empty input flushes it.
    """
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    total = 0

    def decode(data: bytes) -> bytes:
        nonlocal total
        try:
            out = decoder.decompress(data, limit - total + 1) if data else decoder.flush()
        except zlib.error as e:
            raise GunzipError(f"invalid gzip body from the agent: {e}", 502, "invalid_gzip") from e
        total += len(out)
        if total > limit or decoder.unconsumed_tail:
            raise GunzipError(
                f"decompressed body exceeds {limit // MiB} MiB"
                " (proxy.internal.maxUnzippedContentSizeMBytes)",
                413,
                "payload_too_large",
            )
        return out

    return decode
