"""
Tests for L{promtwist.proxy.scrape} and L{promtwist.httputil}: the proxy's HTTP-facing decisions.
"""

from __future__ import annotations

from typing import cast

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from promtwist.config import ProxySettings
from promtwist.httputil import acceptsGzip
from promtwist.proxy.answers import textResponse
from promtwist.proxy.relay import ScrapeCall, scrapeDeadline


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
