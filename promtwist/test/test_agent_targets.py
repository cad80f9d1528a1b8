"""
Tests for host-routed scrapes at the agent (L{promtwist.agent.targets}): it
fetches exactly what was asked of a target it declared, and nothing else,
whatever the proxy sends.
"""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from promtwist.agent.targets import NotServed, targetFetch
from promtwist.config.settings import AgentSettings, Identity, PathConfig, ProxySettings
from promtwist.hostkeys import HostTarget, hostKey
from promtwist.protocol.promtwist_pb2 import Outcome
from promtwist.proxy.answers import ScrapeFailed
from promtwist.proxy.relay import ScrapeCall
from promtwist.proxy.stream import ScrapeStream
from promtwist.test.test_link import PATHS, Pair, Target
from promtwist.test.test_ownership import Ownership

NODE = PathConfig("node", hostKey("node1.test", 9100), "http://node1.test:9100/", {"env": "a"})
OTHER = PathConfig("other", hostKey("node2.test", 9100), "http://node2.test:9100/")
SECURE = PathConfig("secure", hostKey("node1.test", 9443), "https://node1.test:9443/")


def _declared(key: str) -> PathConfig | None:
    return {NODE.path: NODE, SECURE.path: SECURE}.get(key)


class TargetFetchTests(SynchronousTestCase):
    def test_exactPath(self) -> None:
        """
        The URL is the declared target's, with the requested path as sent.
        """
        config = targetFetch("a1", "NODE1.test:9100", "", "/metrics/a%20b", _declared)
        self.assertEqual(
            config,
            PathConfig("node", NODE.path, "http://node1.test:9100/metrics/a%20b", {"env": "a"}),
        )
        config = targetFetch("a1", "node1.test:9443", "https", "/m", _declared)
        self.assertEqual(config.url, "https://node1.test:9443/m")

    def test_notDeclared(self) -> None:
        """
        Another port of a declared host, or another host, is not fetched.
        """
        for target in ("node1.test:9101", "node2.test:9100", "127.0.0.1:9100"):
            e = self.assertRaises(NotServed, targetFetch, "a1", target, "", "/m", _declared)
            self.assertEqual(e.outcome, Outcome.PATH_NOT_FOUND)
            self.assertIn(f"agent 'a1' does not serve target {target}", str(e))

    def test_schemeMismatch(self) -> None:
        e = self.assertRaises(
            NotServed, targetFetch, "a1", "node1.test:9100", "https", "/m", _declared
        )
        self.assertEqual(e.outcome, Outcome.AGENT_ERROR)
        self.assertIn("declared as http", str(e))
        self.assertIn("https://node1.test:9100", str(e))

    def test_badInput(self) -> None:
        for target, path, why in [
            ("node1.test", "/m", "has no port"),
            ("node1.test:9100", "metrics", "bad request path"),
            ("node1.test:9100", "/a b", "bad request path"),
            ("node1.test:9100", "/a#b", "bad request path"),
            ("node1.test:9100", "/\u00e9", "bad request path"),
        ]:
            e = self.assertRaises(NotServed, targetFetch, "a1", target, "", path, _declared)
            self.assertIn(why, str(e))


class Recording(Target):
    """
    A target that keeps the request line and Host of every request.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes | None]] = []

    def render_GET(self, request: Request) -> bytes | int:
        self.seen.append((request.uri, request.getHeader(b"host")))
        return super().render_GET(request)


class HostRoutedLinkTests(SynchronousTestCase):
    """
    An agent declaring a target registers it beside its paths and serves it.
    """

    def setUp(self) -> None:
        self.target = Recording()
        self.pair = Pair(
            agentSettings=AgentSettings(name="a1", path_configs=(*PATHS, NODE)),
            target=self.target,
        )

    def scrape(self, target: HostTarget, path: str = "/metrics", query: str = "") -> ScrapeStream:
        stream = self.pair.proxy.scrape(ScrapeCall(path, query, "", "", "", 5.5, target))
        self.pair.flush()
        return stream

    def test_registered(self) -> None:
        """
        The target is claimed in the registry's host key space, and the
        paths stay served by the same agent.
        """
        registry = self.pair.registry
        self.assertEqual(registry.lookupHost("node1.test", 9100), (self.pair.proxy,))
        self.assertEqual(registry.lookup("fast"), (self.pair.proxy,))

    def test_fetchesExactly(self) -> None:
        stream = self.scrape(HostTarget("", "node1.test", 9100), "/x/metrics", "a=1&b=%2F")
        self.assertEqual(self.successResultOf(stream.head).status, 200)
        self.assertEqual(self.target.seen, [(b"/x/metrics?a=1&b=%2F", b"node1.test:9100")])

    def test_strict(self) -> None:
        """
        A proxy asking for a port the agent did not declare is refused by
        the agent itself, with a reason, and the target is never contacted.
        """
        stream = self.scrape(HostTarget("", "node1.test", 22))
        failure = self.failureResultOf(stream.head, ScrapeFailed).value
        self.assertEqual(failure.status, 404)
        self.assertIn("does not serve target node1.test:22", failure.reason)
        self.assertEqual(self.target.seen, [])

    def test_schemeRefused(self) -> None:
        stream = self.scrape(HostTarget("https", "node1.test", 9100))
        failure = self.failureResultOf(stream.head, ScrapeFailed).value
        self.assertEqual(failure.status, 503)
        self.assertIn("declared as http", failure.reason)
        self.assertEqual(self.target.seen, [])


class TargetOwnershipTests(SynchronousTestCase):
    """
    Two agents declaring one target over real links: path ownership's
    standby rule, and identities' target globs.
    """

    def test_standbyPromoted(self) -> None:
        """
        The second agent waits for the target and is told behind whom; when
        the holder's link is lost it is promoted at once, and the target's
        scrapes go to it.
        """
        proxy = Ownership()
        first = proxy.connect("a1", targets=(NODE,))
        second = proxy.connect("a2", targets=(NODE,))
        self.assertEqual(proxy.registry.lookupHost("node1.test", 9100), (first.link,))
        self.assertTrue(second.standing(NODE.path).startswith("standby #1 behind agent 'a1'"))
        with capturedLogs() as events:
            first.connection.transport.abortConnection()
            proxy.flush()
        self.assertEqual(proxy.registry.lookupHost("node1.test", 9100), (second.link,))
        self.assertTrue(second.standing(NODE.path).startswith("held by this agent"))
        lines = [formatEvent(e) for e in events]
        self.assertTrue(
            any("now serving //node1.test:9100: promoted from standby" in t for t in lines), lines
        )
        stream = second.link.scrape(
            ScrapeCall("/metrics", "", "", "", "", 5.5, HostTarget("", "node1.test", 9100))
        )
        proxy.flush()
        self.assertEqual(self.successResultOf(stream.head).status, 200)

    def test_identityTargets(self) -> None:
        """
        An identity may claim only the targets its globs allow; the agent is
        told why. An identity limited to some targets claims no path, as one
        limited to some paths claims no target (docs/proxy-url.md's own
        example, C{targets: ["node1.example:*"]}, must not take paths).
        """
        nodes = Identity("nodes", "t-nodes", targets=("node1.test:*",))
        apps = Identity("apps", "t-apps", paths=("fast", "slow"))
        proxy = Ownership(ProxySettings(identities=(nodes, apps)))
        allowed = proxy.connect("a1", token="t-nodes", targets=(NODE,))
        self.assertEqual(proxy.registry.lookup("fast"), ())
        with capturedLogs() as events:
            refused = proxy.connect("a2", token="t-apps", targets=(OTHER,))
        self.assertEqual(proxy.registry.lookupHost("node1.test", 9100), (allowed.link,))
        self.assertEqual(proxy.registry.lookupHost("node2.test", 9100), ())
        self.assertEqual(proxy.registry.lookup("fast"), (refused.link,))
        self.assertNotIn(OTHER.path, refused.connection.registeredPaths())
        self.assertNotIn("fast", allowed.connection.registeredPaths())
        warned = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
        self.assertTrue(
            any(
                "the proxy refused path //node2.test:9100: agent identity 'apps' is not"
                " authorized to serve //node2.test:9100" in t
                for t in warned
            ),
            warned,
        )
