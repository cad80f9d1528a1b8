"""
Tests for the path frames of L{promtwist.proxy.link.AgentLink}: what a
registration's reply says, how it is counted, and how many log lines a
flood of registrations costs.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import ProxySettings
from promtwist.metrics import ScrapeLeg
from promtwist.protocol.promtwist_pb2 import Frame, Hello, PathReply, RegisterPath, UnregisterPath
from promtwist.proxy.link import PATHS_LOGGED, AgentLink
from promtwist.test.helpers import agentLinkFactory
from promtwist.test.test_framing import encode
from promtwist.test.test_link import TCPStringTransport, decodeAll


class Link:
    """
    One proxy link, past its handshake, fed frames by hand.
    """

    def __init__(self, settings: ProxySettings = ProxySettings(), name: str = "a1") -> None:
        self.clock = Clock()
        self.factory = agentLinkFactory(settings, self.clock)
        link = self.factory.buildProtocol(None)
        assert isinstance(link, AgentLink)
        self.link = link
        self.transport = TCPStringTransport()
        link.makeConnection(self.transport)
        link.dataReceived(encode(Frame(hello=Hello(protocol_version=1, agent_name=name))))
        (welcome,) = self.frames()
        assert welcome.HasField("welcome"), welcome

    def frames(self) -> list[Frame]:
        frames = decodeAll(self.transport.value())
        self.transport.clear()
        return frames

    def register(self, *requests: RegisterPath | UnregisterPath) -> list[PathReply]:
        for request in requests:
            if isinstance(request, RegisterPath):
                frame = Frame(register_path=request)
            else:
                frame = Frame(unregister_path=request)
            self.link.dataReceived(encode(frame))
        return [frame.path_reply for frame in self.frames()]

    def rejections(self, kind: str) -> float | None:
        return self.factory.metrics.registry.get_sample_value(
            "proxy_rejections_total", {"reason": "path_" + kind}
        )


def warnings(events: Sequence[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e["log_level"] == LogLevel.warn]


class RefusalTests(SynchronousTestCase):
    def test_replyNamesTheLimit(self) -> None:
        """
        A refused registration is answered with the reason, naming the
        setting, and counted by kind; the link stays up.
        """
        link = Link(ProxySettings(max_labels_per_path=1))
        (reply,) = link.register(RegisterPath(request_id=7, path="p", labels={"a": "", "b": ""}))
        self.assertEqual(
            (reply.request_id, reply.ok, reply.reason),
            (
                7,
                False,
                "path /p has 2 labels, more than the 1 allowed (proxy.internal.maxLabelsPerPath)",
            ),
        )
        self.assertEqual(link.rejections("labels"), 1)
        self.assertFalse(link.transport.disconnecting)

    def test_noAnyPortClaim(self) -> None:
        """
        An agent claims targets as C{host:port}: the host on any port, a
        PushProx client's claim, is refused it, saying so.
        """
        link = Link()
        refused, accepted = link.register(
            RegisterPath(request_id=1, path="//node1.example"),
            RegisterPath(request_id=2, path="//node1.example:9100"),
        )
        self.assertFalse(refused.ok)
        self.assertIn("//node1.example names no port", refused.reason)
        self.assertTrue(accepted.ok, accepted.reason)
        self.assertEqual(link.rejections("invalid"), 1)

    def test_floodOfRefusals(self) -> None:
        """
        Five hundred oversized registrations get five hundred short replies
        and a handful of short warning lines: the first few, then one count
        when the interval ends, and one more for the rest when the agent
        port stops (the budget is the port's, not the link's).
        """
        # Heartbeats slow enough for the link to outlive the interval.
        link = Link(ProxySettings(heartbeat_period_secs=100))
        path = "p" * 100_000
        with capturedLogs() as events:
            replies = link.register(*(RegisterPath(request_id=n, path=path) for n in range(500)))
            link.clock.advance(61)
            link.register(*(RegisterPath(request_id=n, path=path) for n in range(500)))
            link.link.connectionLost()
            link.link.factory.stopFactory()
        self.assertEqual(len(replies), 500)
        self.assertTrue(all("(proxy.internal.maxPathLength)" in r.reason for r in replies))
        self.assertLess(max(len(r.reason) for r in replies), 400)
        self.assertEqual(link.rejections("long_path"), 1000)
        lines = warnings(events)
        burst = 5
        self.assertEqual(len(lines), 2 * burst + 2)
        counts = [e["count"] for e in lines if "suppressed" in e["log_format"]]
        self.assertEqual(counts, [500 - burst, 500 - burst])
        self.assertLess(max(len(str(e.get("path", ""))) for e in lines), 300)


class AcceptedTests(SynchronousTestCase):
    def test_reservedLabelsWarned(self) -> None:
        """
        Labels an agent may not set are named in one warning, with the
        agent and the claim; the claim itself is accepted.
        """
        link = Link()
        labels = {"job": "j", "env": "prod", "__scheme__": "https"}
        with capturedLogs() as events:
            (reply,) = link.register(
                RegisterPath(request_id=1, path="//node1.example:9100", labels=labels)
            )
        self.assertTrue(reply.ok)
        lines = [formatEvent(e) for e in warnings(events)]
        self.assertEqual(
            lines,
            [
                "agent 'a1': labels __scheme__, job of //node1.example:9100 are not its"
                " to set; discovery leaves them out"
            ],
        )

    def test_seriesEndWithTheClaim(self) -> None:
        """
        A path's metric series end when the agent unregisters it.
        """
        link = Link()
        (reply,) = link.register(RegisterPath(request_id=1, path="p"))
        self.assertTrue(reply.ok)
        link.factory.metrics.scrapeFinished("p", [ScrapeLeg("success", 0.1)], 0)
        latency = {"path": "p", "outcome": "success"}
        count = "proxy_scrape_request_latency_seconds_count"
        registry = link.factory.metrics.registry
        self.assertEqual(registry.get_sample_value(count, latency), 1)
        link.register(UnregisterPath(request_id=2, path="p"))
        self.assertIsNone(registry.get_sample_value(count, latency))

    def test_infoLinesBounded(self) -> None:
        """
        A link registering a thousand paths logs the first few at INFO and
        says once that the rest are at debug level.
        """
        link = Link()
        with capturedLogs() as events:
            replies = link.register(
                *(RegisterPath(request_id=n, path=f"p{n}") for n in range(1000))
            )
        self.assertTrue(all(reply.ok for reply in replies))
        info = [e for e in events if e["log_level"] == LogLevel.info]
        self.assertEqual(len(info), PATHS_LOGGED + 1)
        self.assertIn("the rest are logged at debug level", info[-1]["log_format"])

    def test_unregisterFreesBytes(self) -> None:
        link = Link()
        registry = link.factory.registry
        (ok,) = link.register(RegisterPath(request_id=1, path="p", labels={"k": "v"}))
        self.assertTrue(ok.ok)
        self.assertGreater(registry.registeredBytes, 0)
        (ok, refused) = link.register(
            UnregisterPath(request_id=2, path="p"), UnregisterPath(request_id=3, path="p")
        )
        self.assertEqual((ok.ok, refused.ok), (True, False))
        self.assertEqual(registry.registeredBytes, 0)

    def test_leavingFreesBytes(self) -> None:
        link = Link(ProxySettings(departed_path_retention_secs=0))
        link.register(*(RegisterPath(request_id=n, path=f"p{n}") for n in range(10)))
        self.assertGreater(link.factory.registry.registeredBytes, 0)
        link.link.connectionLost()
        self.assertEqual(link.factory.registry.registeredBytes, 0)
