"""
Tests for C{proxy_url} scrapes on the scrape port: L{promtwist.proxy.proxyurl}
and the handler routing them by target.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from promtwist.hostkeys import HostTarget, hostKey
from promtwist.proxy.proxyurl import BadProxyRequest, ProxyRoute, Written, proxyRoute
from promtwist.proxy.registry import RegistrationRefused, Registry
from promtwist.test.test_relay import FakeLink, Proxy, response


class ProxyRouteTests(SynchronousTestCase):
    def test_absolute(self) -> None:
        """
        An absolute URI names the target, whatever C{Host} says; its path and
        query are kept as sent, C{_scheme} taken out of the query, and its
        port and whole query as written are kept too.
        """
        route = proxyRoute(b"http://Node1:9100/a%20b", b"x=1&_scheme=https&y")
        self.assertEqual(
            route,
            ProxyRoute(
                HostTarget("https", "node1", 9100),
                "/a%20b",
                "x=1&y",
                Written("9100", "x=1&_scheme=https&y"),
            ),
        )
        route = proxyRoute(b"http://[::1]:9100", b"")
        self.assertEqual(
            route, ProxyRoute(HostTarget("", "::1", 9100), "/", "", Written("9100", ""))
        )
        self.assertEqual(route.shown if route else "", "//[::1]:9100")

    def test_defaultPorts(self) -> None:
        route = proxyRoute(b"http://node1/metrics", b"")
        self.assertEqual(route and route.target, HostTarget("", "node1", 80))
        self.assertEqual(route and route.written, Written("", ""))
        route = proxyRoute(b"http://[::1]/metrics", b"")
        self.assertEqual(route and route.written, Written("", ""))
        route = proxyRoute(b"https://node1/metrics", b"_scheme=http")
        self.assertEqual(route and route.target, HostTarget("http", "node1", 443))
        route = proxyRoute(b"HTTPS://node1/metrics", b"")
        self.assertEqual(route and route.target, HostTarget("https", "node1", 443))

    def test_originForm(self) -> None:
        """
        An origin-form request is for the proxy's own paths: it is never
        routed by target, whatever its C{Host}. A request target in neither
        form (C{*}, which only C{OPTIONS} may send) is refused.
        """
        self.assertIsNone(proxyRoute(b"/metrics", b"x=1"))
        e = self.assertRaises(BadProxyRequest, proxyRoute, b"*", b"")
        self.assertEqual(e.status, 400)
        self.assertIn("neither a path (/...) nor an absolute URL", e.reason)

    def test_leadingZeros(self) -> None:
        """
        A target URL's port may have leading zeros: the same target.
        """
        for url, port in [(b"http://localhost:00080/", 80), (b"http://node1:019100/", 19100)]:
            route = proxyRoute(url, b"")
            self.assertEqual(route and route.target.port, port, url)

    def test_refused(self) -> None:
        """
        Each badly named target is a 400 saying what was wrong.
        """
        for path, query, why in [
            (b"ftp://node1:21/x", b"", "only http and https"),
            (b"http://user:pw@node1:9100/", b"", "user info"),
            (b"http://node1:99999/", b"", "out of range"),
            (b"http://node1:/", b"", "empty port"),
            (b"http://no%20de:80/", b"", "not a DNS name"),
            (b"http://:80/", b"", "no host given"),
            (b"http://\xc3\xa9:80/", b"", "not ASCII"),
            (b"http://node1:80/a\x7f", b"", "byte 0x7f at position 2"),
            (b"http://node1:80/a#b", b"", "fragment"),
            (b"http://node1:80/", b"_scheme=gopher", "is not a scheme"),
            (b"http://node1:80/", b"_scheme=http&_scheme=https", "both http and https"),
            (b"http://node1:80/", b"a=\x01", "query string has byte 0x01"),
            (b"http://node1:80/", b"a=1#frag", "fragment (#) at position 3"),
            (b"http://[fe80::1%25eth0]:19100/", b"", "IPv6 zone"),
        ]:
            e = self.assertRaises(BadProxyRequest, proxyRoute, path, query)
            self.assertEqual(e.status, 400)
            self.assertIn(why, e.reason, path)


class HostRoutedScrapeTests(SynchronousTestCase):
    """
    The scrape handler relays a C{proxy_url} scrape to whoever claimed its
    target.
    """

    def setUp(self) -> None:
        self.proxy = Proxy()
        self.registry: Registry = self.proxy.registry

    def claim(self, name: str, key: str) -> FakeLink:
        link = FakeLink(name, agentId=name)
        self.registry.addAgent(link)
        self.registry.registerPath(link, key, name, {})
        return link

    def test_exactTarget(self) -> None:
        """
        The agent that declared C{host:port} is asked for exactly the path
        and query Prometheus sent, with the target and scheme.
        """
        link = self.claim("a1", hostKey("node1", 9100))
        conn = self.proxy.get(b"http://node1:9100/metrics?x=%2F&_scheme=https", Accept="text/plain")
        link.head(b"up 1\n", last=True, content_length=5)
        r = response(conn)
        self.assertEqual((r.status, r.body), (200, b"up 1\n"))
        (call,) = link.calls
        self.assertEqual(
            (call.path, call.query, call.accept, call.target),
            ("/metrics", "x=%2F", "text/plain", HostTarget("https", "node1", 9100)),
        )
        self.assertEqual(self.proxy.records[-1].path, "//node1:9100")

    def test_exactBeforeAnyPort(self) -> None:
        """
        A claim on the exact port wins over one on the host; the host's
        claim serves its other ports.
        """
        exact = self.claim("exact", hostKey("node1", 9100))
        anyPort = self.claim("any", hostKey("node1", None))
        self.proxy.get(b"http://node1:9100/metrics")
        self.proxy.get(b"http://node1:9182/metrics")
        self.assertEqual([c.target for c in exact.calls], [HostTarget("", "node1", 9100)])
        self.assertEqual([c.target for c in anyPort.calls], [HostTarget("", "node1", 9182)])

    def test_hostHeaderDoesNotRoute(self) -> None:
        """
        A C{Host} naming a claimed target does not route an origin-form
        request: it is path-routed, as any request for the proxy's paths.
        """
        target = self.claim("a1", hostKey("node1", 9100))
        path = self.proxy.agent("a2", "metrics")
        self.proxy.get(b"/metrics", host="node1:9100")
        self.assertEqual(([c.path for c in path.calls], target.calls), (["metrics"], []))

    def test_ownAddressUnclaimable(self) -> None:
        """
        No agent may claim the proxy's own C{host:port} (here its scrape
        port, 8080, on a loopback address or C{localhost}); the proxy's
        ordinary requests reach its paths whatever an agent declared.
        """
        victim = self.proxy.agent("victim", "app1_metrics")
        attacker = FakeLink("attacker", agentId="attacker")
        self.registry.addAgent(attacker)
        for host in (
            "127.0.0.1",
            "127.1.2.3",
            "localhost",
            "::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
        ):
            e = self.assertRaises(
                RegistrationRefused,
                self.registry.registerPath,
                attacker,
                hostKey(host, 8080),
                "attacker",
                {},
            )
            self.assertIn("the proxy's own address", str(e))
        self.registry.registerPath(attacker, hostKey("127.0.0.1", 9100), "attacker", {})
        conn = self.proxy.get(b"/app1_metrics", host="127.0.0.1:8080")
        self.assertEqual(len(victim.calls), 1)
        victim.head(b"up 1\n", last=True, content_length=5)
        self.assertEqual((response(conn).status, attacker.calls), (200, []))

    def test_noLoop(self) -> None:
        """
        A scrape whose target is the proxy itself is refused, even when a
        claim on any port of the host (a PushProx client's) covers it:
        whoever fetched it would send it back to the proxy.
        """
        anyPort = self.claim("pushed", hostKey("localhost", None))
        r = response(self.proxy.get(b"http://localhost:8080/app1_metrics"))
        self.assertEqual(r.status, 400)
        self.assertIn(b"localhost:8080 is this proxy's own address", r.body)
        self.proxy.get(b"http://localhost:9100/metrics")
        self.assertEqual([c.target for c in anyPort.calls], [HostTarget("", "localhost", 9100)])

    def test_asteriskTarget(self) -> None:
        """
        C{GET *} is refused by the proxy itself, never sent to an agent.
        """
        self.proxy.agent("a1", "*")
        r = response(self.proxy.get(b"*", host="node1:9100"))
        self.assertEqual(r.status, 400)
        self.assertIn(b"neither a path", r.body)

    def test_pathsStillServed(self) -> None:
        """
        The same agent serves a path and a target at once, each by its own
        routing.
        """
        link = self.proxy.agent("a1", "app1")
        self.registry.registerPath(link, hostKey("node1", 9100), "t", {})
        self.proxy.get(b"/app1")
        self.proxy.get(b"http://node1:9100/metrics")
        self.assertEqual(
            [(c.path, c.target) for c in link.calls],
            [("app1", None), ("/metrics", HostTarget("", "node1", 9100))],
        )

    def test_nobodyServes(self) -> None:
        """
        A target nobody claimed is a 404 naming it, another port of a
        claimed host included.
        """
        self.claim("a1", hostKey("node1", 9100))
        for target in (b"http://node2:9100/metrics", b"http://node1:9101/metrics"):
            r = response(self.proxy.get(target))
            self.assertEqual(r.status, 404)
            self.assertIn(b"no agent serves target node", r.body)
        self.assertEqual(self.proxy.records[-1].path, "//node1:9101")

    def test_badRequest(self) -> None:
        r = response(self.proxy.get(b"http://u@node1:9100/metrics"))
        self.assertEqual(r.status, 400)
        self.assertIn(b"user info", r.body)

    def test_connect(self) -> None:
        """
        C{CONNECT}, which Prometheus sends for an https target through an
        http proxy_url, is refused saying how to scrape https instead.
        """
        channel = self.proxy.site.buildProtocol(None)
        assert channel is not None
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"CONNECT node1:9100 HTTP/1.1\r\nHost: node1:9100\r\n\r\n")
        r = response(transport)
        self.assertEqual(r.status, 405)
        self.assertIn(b"_scheme", r.body)

    def test_post(self) -> None:
        channel = self.proxy.site.buildProtocol(None)
        assert channel is not None
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"DELETE http://node1:9100/ HTTP/1.1\r\nHost: node1\r\n\r\n")
        self.assertEqual(response(transport).status, 405)

    def test_departed(self) -> None:
        """
        A target whose agent left a moment ago is a 503 saying so, as a
        departed path is.
        """
        link = self.claim("a1", hostKey("node1", 9100))
        self.registry.removeAgent(link)
        r = response(self.proxy.get(b"http://node1:9100/metrics"))
        self.assertEqual(r.status, 503)
        self.assertIn(b"agent 'a1' disconnected", r.body)

    def test_standby(self) -> None:
        """
        Two agents claiming one target: the second waits, and takes over
        when the first leaves.
        """
        first = self.claim("a1", hostKey("node1", 9100))
        second = FakeLink("a2", agentId="a2")
        roles: list[str] = []
        second.pathRoleChanged = (  # type: ignore[method-assign]
            lambda path, role, *args, **kw: roles.append(f"{path} {role}")
        )
        self.registry.addAgent(second)
        placement = self.registry.registerPath(second, hostKey("node1", 9100), "a2", {})
        self.assertEqual(placement.position, 1)
        self.proxy.get(b"http://node1:9100/metrics")
        self.assertEqual((len(first.calls), len(second.calls)), (1, 0))
        self.registry.removeAgent(first)
        self.assertEqual(roles, ["//node1:9100 holder"])
        self.proxy.get(b"http://node1:9100/metrics")
        self.assertEqual(len(second.calls), 1)

    def test_anyPortClaimByHostHeader(self) -> None:
        """
        A host claimed on any port (a PushProx client's FQDN) is reached by
        absolute URI only: its name in C{Host} does not capture the proxy's
        own requests.
        """
        path = self.proxy.agent("a1", "app1")
        anyPort = self.claim("pushed", hostKey("proxy", None))
        self.proxy.get(b"/app1", host="proxy:8080")
        self.proxy.get(b"http://proxy:8081/metrics")
        self.assertEqual([c.path for c in path.calls], ["app1"])
        self.assertEqual([c.target for c in anyPort.calls], [HostTarget("", "proxy", 8081)])

    def test_anyPortRecordedByItsKey(self) -> None:
        """
        Scrapes served by a claim on any port are recorded (and so labelled
        in the metrics) by that claim's key, whichever port was asked for:
        ten ports make one series, not ten.
        """
        self.claim("pushed", hostKey("client1", None))
        for port in range(1000, 1010):
            self.proxy.get(f"http://client1:{port}/metrics".encode())
        self.proxy.clock.advance(60)
        self.assertEqual({r.path for r in self.proxy.records}, {"//client1"})

    def test_departedAnyPort(self) -> None:
        """
        A host claimed on any port whose client left a moment ago is a 503
        saying so, on every port.
        """
        link = self.claim("pushed", hostKey("node1", None))
        self.registry.removeAgent(link)
        r = response(self.proxy.get(b"http://node1:9100/metrics"))
        self.assertEqual(r.status, 503)
        self.assertIn(b"agent 'pushed' disconnected", r.body)
