"""
Tests for L{promtwist.proxy.scrape} and L{promtwist.httputil}: the proxy's HTTP-facing decisions.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import ProxySettings
from promtwist.httputil import acceptsGzip
from promtwist.proxy.answers import textAnswer
from promtwist.proxy.relay import ScrapeCall, scrapeDeadline
from promtwist.test.scrapeport import exchangeFor, parseResponse


def request(**headers: str) -> dict[bytes, bytes]:
    """
    Request headers as the server keeps them: lower-case names (underscores
    in C{headers}' names become dashes).
    """
    return {
        name.replace("_", "-").lower().encode(): value.encode() for name, value in headers.items()
    }


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
        exchange, transport = exchangeFor(b"GET /p HTTP/1.1\r\n\r\n")
        exchange.setHeader(b"Content-Length", b"1000")
        exchange.setHeader(b"Content-Encoding", b"gzip")
        textAnswer(exchange, 503, "no answer")
        r = parseResponse(transport.value())
        self.assertEqual((r.status, r.body, r.complete), (503, b"no answer\n", True))
        self.assertEqual(r.headers[b"content-length"], b"10")
        self.assertNotIn(b"content-encoding", r.headers)
        self.assertEqual(r.headers[b"content-type"], b"text/plain; charset=utf-8")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 no answer\r\n"))


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
