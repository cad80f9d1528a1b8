"""
Tests for L{promtwist.agent.dialling} and the agent's connection errors:
why it cannot reach the proxy, said once per change and then summarised,
and the misdirected links both ends recognise by their first bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from promtwist.agent.build import buildAgent
from promtwist.agent.connection import ProxyConnectionFactory, Rejected
from promtwist.agent.dialling import SUMMARY_INTERVAL, DialReport, describeDialFailure
from promtwist.agent.scraper import Scraper
from promtwist.config.settings import AgentSettings, ProxySettings
from promtwist.grpc.client import CallFailed
from promtwist.grpc.tunnel import CallTransport
from promtwist.protocol.framing import spokenProtocol
from promtwist.protocol.session import SessionLost
from promtwist.proxy.link import AgentLink
from promtwist.test.helpers import agentLinkFactory
from promtwist.test.memorytarget import MemoryTargets
from promtwist.test.test_agent_service import SETTINGS, downEndpoints
from promtwist.test.test_framing import logText
from promtwist.test.test_grpc_tunnel import FakeCall
from promtwist.test.test_link import Target, TCPStringTransport
from promtwist.test.test_link_state import lose


class DescribeTests(SynchronousTestCase):
    """
    Each way of not reaching a proxy, in words that say what to check.
    """

    def describe(self, exception: BaseException) -> str:
        return describeDialFailure(Failure(exception), "proxy.test:50051")

    def test_refused(self) -> None:
        self.assertIn("connection refused", self.describe(error.ConnectionRefusedError()))

    def test_dns(self) -> None:
        """
        A name that does not resolve is named, with the option to fix.
        """
        cause = self.describe(error.DNSLookupError("Couldn't find the hostname 'proxy.test'"))
        self.assertIn("cannot resolve the host name 'proxy.test'", cause)
        self.assertIn("agent.proxy.hostname", cause)

    def test_timedOut(self) -> None:
        self.assertIn("timed out", self.describe(error.TimeoutError()))
        self.assertIn("timed out", self.describe(error.TCPTimedOutError()))

    def test_rejected(self) -> None:
        self.assertEqual(
            self.describe(Rejected("unauthenticated: bad token")),
            "the proxy rejected this agent (unauthenticated: bad token)",
        )

    def test_tlsAlert(self) -> None:
        """
        A TLS alert is translated by L{promtwist.tls.describeTLSFailure}.
        """
        alert = SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")])
        self.assertIn("agent.tls.certChainFilePath", self.describe(alert))

    def test_other(self) -> None:
        self.assertEqual(self.describe(SessionLost("link lost: x")), "link lost: x")


class DialReportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.report = DialReport(Logger(), self.clock)

    def attempt(self, cause: str, proxy: str = "p:1", delay: float = 3.0) -> list[str]:
        with capturedLogs() as events:
            self.report.failed(proxy, cause)
            self.report.retrying(delay)
            self.clock.advance(delay)
        return [formatEvent(e) for e in events]

    def test_oncePerCause(self) -> None:
        """
        The first failure is logged with the address, the cause and the
        delay; the same cause again is not.
        """
        self.assertEqual(
            self.attempt("connection refused"),
            ["no link to proxy p:1: connection refused; next attempt in 3.0s"],
        )
        self.assertEqual(self.attempt("connection refused"), [])
        self.assertEqual(
            self.attempt("timed out"), ["no link to proxy p:1: timed out; next attempt in 3.0s"]
        )

    def test_summary(self) -> None:
        """
        While the same cause goes on, one line per interval says how many
        attempts failed and when the next is.
        """
        lines = []
        for _ in range(int(SUMMARY_INTERVAL / 3) * 2 + 1):
            lines += self.attempt("connection refused")
        self.assertEqual(len(lines), 3, lines)
        self.assertEqual(
            lines[1],
            "still no link to proxy p:1 after 21 attempts (connection refused); next in 3.0s",
        )

    def test_severalProxies(self) -> None:
        """
        Alternating proxies with unchanging causes log each cause once.
        """
        lines = []
        for _ in range(3):
            lines += self.attempt("refused", "p:1") + self.attempt("refused", "p:2")
        self.assertEqual(
            lines,
            [
                "no link to proxy p:1: refused; next attempt in 3.0s",
                "no link to proxy p:2: refused; next attempt in 3.0s",
            ],
        )

    def test_connected(self) -> None:
        """
        A working link says how many attempts failed before it, and the
        next failure is news again.
        """
        self.attempt("refused")
        self.attempt("refused")
        with capturedLogs() as events:
            self.report.connected("p:1")
        self.assertEqual(logText(events), "link to proxy p:1 is up after 2 failed attempt(s)")
        self.assertEqual(len(self.attempt("refused")), 1)

    def test_linkDropped(self) -> None:
        """
        A retry after a working link dropped, with no failure since, logs
        nothing.
        """
        with capturedLogs() as events:
            self.report.retrying(1.0)
        self.assertEqual(list(events), [])


class ServiceTests(SynchronousTestCase):
    """
    The agent service's ClientService, with a clock and a proxy that
    refuses.
    """

    def test_refusedOnceAndCounted(self) -> None:
        """
        A refused proxy is one warning naming it, not a line per retry (and
        never ClientService's C{<_ReadyLinks object at 0x...>}); every
        attempt counts in C{agent_connect_count{type="failure"}}.
        """
        clock = Clock()
        dialled: list[str] = []
        service = buildAgent(SETTINGS, clock, endpoints=downEndpoints(dialled, "p1:50051"))
        with capturedLogs() as events:
            service.startService()
            for _ in range(20):
                clock.advance(SETTINGS.reconnect_pause_secs)
            service.stopService()
        text = logText(events)
        self.assertNotIn("Scheduling retry", text)
        self.assertNotIn("_ReadyLinks", text)
        self.assertEqual(text.count("no link to proxy p1:50051: connection refused"), 1, text)
        failures = service.metrics.registry.get_sample_value(
            "agent_connect_count_total",
            {"launch_id": service.factory.launchId, "type": "failure"},
        )
        self.assertGreater(len(dialled), 10)
        self.assertEqual(failures, len(dialled))


class SpokenProtocolTests(SynchronousTestCase):
    def test_http(self) -> None:
        self.assertEqual(spokenProtocol(1213486160), "HTTP")
        self.assertEqual(spokenProtocol(int.from_bytes(b"GET ", "big")), "HTTP")

    def test_tls(self) -> None:
        self.assertEqual(spokenProtocol(0x16030102), "TLS")
        self.assertEqual(spokenProtocol(0x15030300), "TLS")

    def test_neither(self) -> None:
        self.assertIsNone(spokenProtocol(50_000_000))


class MisdirectedTests(SynchronousTestCase):
    """
    Another protocol's first bytes on the link: one line saying what is
    probably misconfigured and which option fixes it.
    """

    def proxyGets(self, data: bytes) -> str:
        link = agentLinkFactory(ProxySettings(), Clock()).buildProtocol(None)
        assert isinstance(link, AgentLink)
        transport = TCPStringTransport()
        link.makeConnection(transport)
        with capturedLogs() as events:
            link.dataReceived(data)
        self.assertTrue(transport.disconnecting)
        lose(link)
        return logText(events)

    def test_httpOnAgentPort(self) -> None:
        """
        Prometheus or a browser on the agent port.
        """
        text = self.proxyGets(b"GET /metrics HTTP/1.1\r\nHost: proxy\r\n\r\n")
        self.assertIn("speaks HTTP, not the agent protocol", text)
        self.assertIn("proxy.http.port", text)
        self.assertNotIn("1195725856", text)

    def test_tlsOnPlainAgentPort(self) -> None:
        """
        A TLS agent's ClientHello on a plain agent port.
        """
        text = self.proxyGets(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertIn("speaks TLS", text)
        self.assertIn("proxy.tls.certChainFilePath", text)

    def agentGets(self, data: bytes, settings: AgentSettings) -> tuple[str, str]:
        """
        Feed C{data} to a new agent connection; return what it logged and
        why its link did not become ready.
        """
        clock = Clock()
        factory = ProxyConnectionFactory(
            settings, Scraper(settings, MemoryTargets(Target()).pool, clock), clock
        )
        connection = factory.buildProtocol(None)
        transport = TCPStringTransport()
        connection.makeConnection(transport)
        ready = connection.whenReady()
        with capturedLogs() as events:
            connection.dataReceived(data)
            lose(connection)
        return logText(events), str(self.failureResultOf(ready, SessionLost).value)

    def test_agentDialsHTTPPort(self) -> None:
        """
        The agent pointed at the proxy's scrape port reads "HTTP": its dial
        report says so (the connection itself logs nothing, so retries do
        not repeat it).
        """
        logged, why = self.agentGets(b"HTTP/1.1 400 Bad Request\r\n\r\n", SETTINGS)
        self.assertEqual(logged, "")
        self.assertIn("speaks HTTP, not the agent protocol", why)
        self.assertIn("agent.proxy.port", why)

    def test_agentPlainOnTLSPort(self) -> None:
        """
        A TLS port's alert in answer to a plain Hello.
        """
        _, why = self.agentGets(b"\x15\x03\x03\x00\x02\x02\x46", SETTINGS)
        self.assertIn("agent.tls.enabled = true", why)

    def test_silentClose(self) -> None:
        """
        A proxy that closes without sending a byte: the hint depends on
        whether this agent dials with TLS.
        """
        _, plain = self.agentGets(b"", SETTINGS)
        self.assertIn("if its agent port uses TLS, set agent.tls.enabled = true", plain)
        tls = AgentSettings(name="a1", tls_enabled=True)
        _, encrypted = self.agentGets(b"", tls)
        self.assertIn("if its agent port is plain TCP", encrypted)

    def gRPCAgentGets(self, end: Callable[[FakeCall], None]) -> str:
        """
        Start an agent connection over a gRPC call that C{end} ends before
        any Welcome; why its link did not become ready.
        """
        clock = Clock()
        factory = ProxyConnectionFactory(
            SETTINGS, Scraper(SETTINGS, MemoryTargets(Target()).pool, clock), clock
        )
        connection = factory.buildProtocol(None)
        call = FakeCall()
        transport = CallTransport(
            call,
            TCPStringTransport(),  # type: ignore[arg-type]
            lambda: None,
            call.resets.append,
            clock,
        )
        transport.start(connection)
        ready = connection.whenReady()
        end(call)
        clock.advance(0)
        return str(self.failureResultOf(ready, SessionLost).value)

    def test_gRPCCallEndedOK(self) -> None:
        """
        With agent.transport = grpc, a proxy that ends the link's call with
        OK before its Welcome is said to have done so: HTTP/2 was up, so
        the TLS hint for a silent close would be wrong (the reviewer's
        C{hostile_h2.py liar}).
        """
        why = self.gRPCAgentGets(lambda call: call.deliver(None))
        self.assertIn("the proxy ended the link's gRPC call with OK before its Welcome", why)
        self.assertNotIn("TLS", why)

    def test_gRPCCallEndedWithStatus(self) -> None:
        """
        One that ends it with another status: the status and its message,
        and no TLS hint.
        """

        def refuse(call: FakeCall) -> None:
            assert call.receiving is not None
            call.receiving.errback(
                CallFailed("the server ended the call with UNAVAILABLE: going away")
            )

        why = self.gRPCAgentGets(refuse)
        self.assertIn("the server ended the call with UNAVAILABLE: going away", why)
        self.assertNotIn("TLS", why)
