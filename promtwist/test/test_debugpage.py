"""
Tests for L{promtwist.debugpage}: the C{/debug} page's parts laid out as
prometheus-proxy's.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.protocol import ServerFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

import promtwist
from promtwist.config.settings import AgentSettings, ProxySettings
from promtwist.debugpage import head, recentLine, table, uptime
from promtwist.listen import Listener

VERSION = promtwist.__version__.public()


class UptimeTests(SynchronousTestCase):
    def test_format(self) -> None:
        """
        C{d:HH:MM:SS.mmm}, as prometheus-proxy's C{Duration.format(true)}.
        """
        self.assertEqual(uptime(0), "0:00:00:00.000")
        self.assertEqual(uptime(93784.5), "1:02:03:04.500")
        self.assertEqual(uptime(-1), "0:00:00:00.000")


class HeadTests(SynchronousTestCase):
    def test_proxy(self) -> None:
        """
        The version line, the aligned rows, and the admin and metrics
        services, each C{Disabled} when off.
        """
        text = head("Proxy", ProxySettings(), [("Uptime", "0:00:00:01.000"), ("Proxy port", "80")])
        self.assertEqual(
            text.splitlines(),
            [
                f"Prometheus Proxy Info [Version: {VERSION} Release Date: Unknown"
                " Build Date: Unknown]",
                "",
                "Uptime:     0:00:00:01.000",
                "Proxy port: 80",
                "",
                "Admin Service:",
                "Disabled",
                "",
                "Metrics Service:",
                "Disabled",
            ],
        )

    def test_services(self) -> None:
        """
        Enabled services show their port and paths, as prometheus-proxy's
        C{ServletService} and C{MetricsService} describe themselves; an
        empty admin path is not served and not listed.
        """
        settings = AgentSettings(
            admin_enabled=True,
            admin_port=8093,
            admin_thread_dump_path="",
            admin_debug_enabled=True,
            metrics_enabled=True,
            metrics_port=8083,
        )
        lines = head("Agent", settings, [("Uptime", "u"), ("AgentName", "n")]).splitlines()
        self.assertEqual(lines[2:4], ["Uptime:    u", "AgentName: n"])
        self.assertEqual(
            lines[5:],
            [
                "Admin Service:",
                "ServletService{port=8093, paths=[/ping, /version, /healthcheck, /debug]}",
                "",
                "Metrics Service:",
                "MetricsService{port=8083, path=/metrics}",
            ],
        )


class ListeningTests(TestCase):
    """
    The admin and metrics services show where their listeners listen, as
    the scrape and agent ports do, not the ports configured.
    """

    def listening(self, purpose: str, interface: str = "") -> Listener:
        listener = Listener(reactor, 0, ServerFactory(), interface, purpose=purpose)
        listener.privilegedStartService()
        self.addCleanup(listener.stopService)
        return listener

    def test_boundPorts(self) -> None:
        """
        Configured with port 0 on the wildcard: the bare port each bound.
        """
        admin, metrics = self.listening("admin"), self.listening("metrics")
        settings = AgentSettings(admin_enabled=True, metrics_enabled=True)
        text = head("Agent", settings, [("Uptime", "u")], [admin, metrics])
        self.assertIn(f"ServletService{{port={admin.portNumber}, paths=", text)
        self.assertIn(f"MetricsService{{port={metrics.portNumber}, path=/metrics}}", text)

    def test_interface(self) -> None:
        """
        On one interface: its address, which the port alone would not say.
        """
        admin = self.listening("admin", "127.0.0.1")
        settings = ProxySettings(admin_enabled=True, metrics_enabled=True, metrics_port=8082)
        text = head("Proxy", settings, [("Uptime", "u")], [admin])
        self.assertIn(f"ServletService{{port=127.0.0.1:{admin.portNumber}, paths=", text)
        # No metrics listener given: the configured port.
        self.assertIn("MetricsService{port=8082, path=/metrics}", text)


class TableTests(SynchronousTestCase):
    def test_padded(self) -> None:
        text = table(
            "Agent Path Configs",
            ["Name", "Path", "URL"],
            [['"node"', "/node_metrics", "http://n:9100/metrics"], ['"a"', "/a", "http://a/"]],
            "\n",
        )
        self.assertEqual(
            text.splitlines(),
            [
                "Agent Path Configs:",
                "Name   Path          URL",
                '"node" /node_metrics http://n:9100/metrics',
                '"a"    /a            http://a/',
            ],
        )

    def test_gap(self) -> None:
        rows = [["/a", "1 x"], ["/b", "2 y"]]
        text = table("Proxy Path Map", ["Path", "Agent Context"], rows, "\n\n")
        self.assertEqual(text, "Proxy Path Map:\nPath Agent Context\n/a   1 x\n\n/b   2 y")


class RecentLineTests(SynchronousTestCase):
    # 2026-12-02T03:04:05.678Z
    at = 1796180645.678

    def test_success(self) -> None:
        self.assertEqual(
            recentLine(self.at, "m", "success", 200, "", 0.0123),
            "03:04:05.678: /m - success - 200 OK time: 12.3ms",
        )

    def test_failure(self) -> None:
        """
        A failed scrape carries its reason, as prometheus-proxy's line.
        """
        self.assertEqual(
            recentLine(self.at, "m", "timed_out", 503, "no answer", 5),
            "03:04:05.678: /m - timed_out - 503 Service Unavailable reason: [no answer]"
            " time: 5000.0ms",
        )
