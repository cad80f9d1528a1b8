"""
Tests for L{promtwist.proxy.scrape}, L{promtwist.proxy.discovery} and
L{promtwist.httputil}: the proxy's HTTP-facing decisions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from promtwist.config import Identity, ProxySettings
from promtwist.httputil import acceptsGzip
from promtwist.proxy.answers import textResponse
from promtwist.proxy.auth import ANONYMOUS
from promtwist.proxy.discovery import DiscoveryResource, targetGroups
from promtwist.proxy.registry import PathEntry, Registry
from promtwist.proxy.relay import ScrapeCall, scrapeDeadline


@dataclass(eq=False)
class FakeAgent:
    agentId: str
    name: str
    hostName: str
    launchId: str = ""
    consolidated: bool = False
    identity: Identity = ANONYMOUS


def request(**headers: str) -> Request:
    """
    A request with C{headers} (underscores in names become dashes): a
    L{DummyRequest}, which has every part of a L{Request} the code under
    test reads.
    """
    r = DummyRequest([b""])
    for name, value in headers.items():
        r.requestHeaders.setRawHeaders(name.replace("_", "-"), [value])
    return cast(Request, r)


class DeadlineTests(SynchronousTestCase):
    def test_prometheusHeader(self) -> None:
        settings = ProxySettings(scrape_request_timeout_secs=90)
        self.assertEqual(
            scrapeDeadline(request(X_Prometheus_Scrape_Timeout_Seconds="9.5"), settings), 9.5
        )

    def test_cappedByConfig(self) -> None:
        settings = ProxySettings(scrape_request_timeout_secs=5)
        self.assertEqual(
            scrapeDeadline(request(X_Prometheus_Scrape_Timeout_Seconds="30"), settings), 5
        )

    def test_missingOrInvalid(self) -> None:
        settings = ProxySettings(scrape_request_timeout_secs=90)
        self.assertEqual(scrapeDeadline(request(), settings), 90)
        for bad in ("soon", "-1", "0", "nan"):
            self.assertEqual(
                scrapeDeadline(request(X_Prometheus_Scrape_Timeout_Seconds=bad), settings), 90, bad
            )

    def test_agentAnswersFirst(self) -> None:
        """
        The agent's share ends before the proxy's deadline, by at most half a
        second.
        """
        self.assertEqual(ScrapeCall("p", "", "", "", "", 10).agentTimeout, 9.5)
        self.assertAlmostEqual(ScrapeCall("p", "", "", "", "", 1).agentTimeout, 0.9)


class TextResponseTests(SynchronousTestCase):
    def test_targetHeadersDropped(self) -> None:
        """
        An error replacing a target's answer does not keep the length and
        encoding the target announced for its own body.
        """
        r = request()
        r.setHeader(b"Content-Length", b"1000")
        r.setHeader(b"Content-Encoding", b"gzip")
        body = textResponse(r, 503, "no answer")
        self.assertEqual((cast(DummyRequest, r).responseCode, body), (503, b"no answer\n"))
        self.assertFalse(r.responseHeaders.hasHeader(b"Content-Length"))
        self.assertFalse(r.responseHeaders.hasHeader(b"Content-Encoding"))
        self.assertEqual(
            r.responseHeaders.getRawHeaders(b"Content-Type"), [b"text/plain; charset=utf-8"]
        )


class AcceptGzipTests(SynchronousTestCase):
    def test_values(self) -> None:
        for value, expected in [
            ("gzip", True),
            ("identity, gzip;q=0.5", True),
            ("GZIP", True),
            ("*", True),
            ("gzip;q=0", False),
            ("deflate", False),
            ("", False),
            ("gzip;q=x", False),
        ]:
            self.assertEqual(acceptsGzip(value), expected, value)


class DiscoveryTests(SynchronousTestCase):
    def test_targetGroups(self) -> None:
        """
        Labels are strings, reserved keys cannot be overridden, and a
        consolidated path names all its agents.
        """
        a, b = FakeAgent("1", "a", "h1"), FakeAgent("2", "b", "h2")
        entry = PathEntry(
            "app", "App", {"n": "2", "agentName": "forged", "__metrics_path__": "/x"}, True, (a, b)
        )
        (group,) = targetGroups([entry], "proxy:8080")
        self.assertEqual(
            group,
            {
                "targets": ["proxy:8080"],
                "labels": {
                    "n": "2",
                    "instance": "proxy:8080/app",
                    "__metrics_path__": "/app",
                    "agentName": "a, b",
                    "hostName": "h1, h2",
                },
            },
        )

    def test_ownInstanceLabelKept(self) -> None:
        entry = PathEntry("app", "", {"instance": "db1"}, False, (FakeAgent("1", "a", "h"),))
        (group,) = targetGroups([entry], "proxy:8080")
        self.assertEqual(group["labels"]["instance"], "db1")  # type: ignore[index]

    def test_targetFromHostHeader(self) -> None:
        """
        Without a configured prefix the target is the address Prometheus used
        to reach the proxy, with the scrape port when the Host header has none.
        """
        resource = DiscoveryResource(Registry(), "")
        registry = resource.registry
        agent = FakeAgent("1", "a", "h")
        registry.addAgent(agent)
        registry.registerPath(agent, "app", "", {})
        for host, expected in [
            ("proxy.example:8080", "proxy.example:8080"),
            ("proxy.example", "proxy.example:80"),
            ("[::1]:9000", "[::1]:9000"),
            ("bad host<>", "127.0.0.1:80"),
        ]:
            r = request(Host=host)
            (group,) = json.loads(resource.render_GET(r))
            self.assertEqual(group["targets"], [expected], host)

    def test_configuredPrefix(self) -> None:
        resource = DiscoveryResource(Registry(), "proxy.example:8080")
        self.assertEqual(json.loads(resource.render_GET(request(Host="other:1"))), [])
