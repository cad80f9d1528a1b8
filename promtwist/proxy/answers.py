# -*- test-case-name: promtwist.test.test_relay -*-
"""
How the proxy answers Prometheus: the status and outcome type for every way a
scrape can end, the one-line text errors, and the record each scrape leaves.

Status codes follow prometheus-proxy's mapping so that existing alerts keep
meaning the same thing; the outcome types are its metrics' C{type} label.
"""

from __future__ import annotations

from dataclasses import dataclass

from promtwist.metrics import ScrapeLeg
from promtwist.protocol.promtwist_pb2 import Outcome
from promtwist.proxy.exchange import Exchange

# What Prometheus sees for each way a scrape can fail at the agent.
FAILURES = {
    Outcome.PATH_NOT_FOUND: (404, "path_not_found"),
    Outcome.UNREACHABLE: (503, "upstream_error"),
    Outcome.TIMED_OUT: (408, "upstream_timed_out"),
    Outcome.TOO_LARGE: (413, "content_too_large"),
    Outcome.CANCELLED: (503, "upstream_error"),
    Outcome.AGENT_ERROR: (503, "upstream_error"),
}


class ScrapeFailed(Exception):
    """
    A scrape, or one agent's part of it, cannot give Prometheus the target's
    answer. The message is the one-line reason Prometheus and the log see.

    @ivar status: the HTTP status for Prometheus.
    @ivar kind: the outcome type it is counted under.
    """

    def __init__(self, status: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.kind = kind

    @property
    def reason(self) -> str:
        return str(self)

    @classmethod
    def ofOutcome(cls, outcome: int, reason: str) -> ScrapeFailed:
        """
        The failure an agent reported with C{outcome}.
        """
        status, kind = FAILURES[outcome]  # type: ignore[index]
        return cls(status, kind, reason)

    @classmethod
    def disconnected(cls, why: str) -> ScrapeFailed:
        """
        The agent's link went away before the answer was complete.
        """
        return cls(502, "upstream_error", f"agent disconnected: {why}")

    @classmethod
    def invalidAnswer(cls, agent: str, what: str) -> ScrapeFailed:
        """
        The agent's answer broke the protocol: Prometheus gets a 502 naming
        what was wrong, instead of whatever the agent declared.
        """
        return cls(502, "invalid_answer", f"invalid answer from agent {agent!r}: {what}")


def targetStatusType(status: int) -> str:
    """
    The outcome type of a target's own answer, as prometheus-proxy names
    it: a 404 is the target's path not found, a 408 or 504 its timeout, a
    413 its body too large.
    """
    if 200 <= status < 300:
        return "success"
    return {
        404: "path_not_found",
        408: "upstream_timed_out",
        504: "upstream_timed_out",
        413: "content_too_large",
    }.get(status, "upstream_error")


# Outcomes promtwist names more finely than prometheus-proxy, which counts
# the same event under the name here: an answer that breaks the protocol is
# its 502 "upstream_error". Outcomes prometheus-proxy cannot have (a slow
# Prometheus, a full consolidation budget, a request it would not route)
# keep promtwist's names.
_UPSTREAM_TYPES = {"invalid_answer": "upstream_error"}


def upstreamType(kind: str) -> str:
    """
    The C{type} prometheus-proxy's metrics count outcome C{kind} under.
    """
    return _UPSTREAM_TYPES.get(kind, kind)


@dataclass(frozen=True)
class ScrapeRecord:
    """
    How one scrape ended, for the proxy's metrics and its debug page.

    @ivar type: how the scrape ended for Prometheus, by promtwist's outcome
        names (prometheus-proxy's C{success}, C{timed_out},
        C{upstream_error}, ..., and a few finer ones).
    @ivar bytes: body bytes sent to Prometheus.
    @ivar encoding: C{gzipped} or C{plain}, as the body reached Prometheus.
    @ivar legs: what prometheus-proxy's metrics count of it: one per agent
        asked, or one untimed for a request that asked none; none when
        Prometheus hung up first (prometheus-proxy's handler is cancelled
        then and counts nothing).
    """

    path: str
    agents: str
    status: int
    type: str
    reason: str
    seconds: float
    bytes: int
    encoding: str
    legs: tuple[ScrapeLeg, ...] = ()


# Longest reason phrase put in a status line.
MAX_PHRASE = 200


def reasonPhrase(reason: str) -> bytes:
    """
    C{reason} as an HTTP reason phrase: printable ASCII only (anything else
    becomes C{?}), at most L{MAX_PHRASE} characters. Prometheus reads no
    error body, but shows the status line on its targets page.
    """
    phrase = "".join(c if " " <= c <= "~" else "?" for c in reason[: MAX_PHRASE + 1])
    if len(phrase) > MAX_PHRASE:
        phrase = phrase[: MAX_PHRASE - 3] + "..."
    return phrase.encode("ascii")


def textAnswer(exchange: Exchange, status: int, reason: str) -> None:
    """
    Answer C{exchange} with a one-line text error; the reason is in the
    status line too. Headers a target's answer may already have set (its
    length and encoding) are dropped: they describe a body that will not
    come.
    """
    exchange.setStatus(status, reasonPhrase(reason))
    for stale in (b"Content-Length", b"Content-Encoding"):
        exchange.removeHeader(stale)
    exchange.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    exchange.setHeader(b"Cache-Control", b"must-revalidate,no-store")
    exchange.finishWith(reason.encode("utf-8") + b"\n")


def header(exchange: Exchange, name: bytes) -> str:
    """
    A request header (by lower-case name) as text, or C{""}.
    """
    value = exchange.headers.get(name)
    return value.decode("latin-1") if value else ""
