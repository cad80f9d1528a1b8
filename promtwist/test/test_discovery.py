"""
Tests for L{promtwist.proxy.discovery}: the http_sd document and what it
costs to serve.
"""

from __future__ import annotations

import json

from twisted.application.internet import TimerService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import ProxySettings
from promtwist.hostkeys import hostKey
from promtwist.proxy import discovery
from promtwist.proxy.build import DISCOVERY_REFRESH_SECONDS, buildProxy
from promtwist.proxy.discovery import RENDERED_TARGETS, Discovery, Document
from promtwist.proxy.registry import PathEntry, Registry
from promtwist.test.scrapeport import Held, Response, exchangeFor, factory, parseResponse
from promtwist.test.test_registry import FakeAgent


def ask(resource: Discovery, host: str) -> Response:
    """
    The document as the scrape port (reached at 10.0.0.1:8080) serves it
    to a request with Host C{host}.
    """
    exchange, transport = exchangeFor(
        b"GET /discovery HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"
    )
    resource.answer(exchange)
    return parseResponse(transport.value())


def served(registry: Registry, agent: FakeAgent, *paths: str) -> None:
    registry.addAgent(agent)
    for path in paths:
        registry.registerPath(agent, path, "", {})


class DocumentTests(SynchronousTestCase):
    def test_targetGroups(self) -> None:
        """
        By default a group is what prometheus-proxy serves: labels are
        strings, reserved keys cannot be overridden, a consolidated path
        names all its agents, and there is no C{instance}, so Prometheus'
        is the target address, as it is for a user moving from there.
        """
        registry = Registry()
        a = FakeAgent("1", "a", "h1", consolidated=True)
        b = FakeAgent("2", "b", "h2", consolidated=True)
        registry.addAgent(a)
        registry.addAgent(b)
        forged = {"n": "2", "agentName": "forged", "__metrics_path__": "/x"}
        registry.registerPath(a, "app", "App", forged)
        registry.registerPath(b, "app", "", {})
        (group,) = json.loads(Document(registry, perPathInstance=False).render("proxy:8080"))
        self.assertEqual(
            group,
            {
                "targets": ["proxy:8080"],
                "labels": {
                    "n": "2",
                    "__metrics_path__": "/app",
                    "agentName": "a, b",
                    "hostName": "h1, h2",
                },
            },
        )

    def test_perPathInstance(self) -> None:
        """
        With C{perPathInstance}, each group also gets C{instance}
        C{<address>/<path>}, so that two paths exporting the same metric
        names in one job write distinct series.
        """
        registry = Registry()
        served(registry, FakeAgent("1", "a", "h"), "app", "db")
        groups = json.loads(Document(registry, perPathInstance=True).render("proxy:8080"))
        self.assertEqual(
            [group["labels"] for group in groups],
            [
                {
                    "instance": "proxy:8080/app",
                    "__metrics_path__": "/app",
                    "agentName": "a",
                    "hostName": "h",
                },
                {
                    "instance": "proxy:8080/db",
                    "__metrics_path__": "/db",
                    "agentName": "a",
                    "hostName": "h",
                },
            ],
        )

    def test_ownInstanceLabelKept(self) -> None:
        """
        A path's own C{instance} label passes through unchanged, with the
        setting or without it.
        """
        for perPathInstance in (False, True):
            registry = Registry()
            agent = FakeAgent("1")
            registry.addAgent(agent)
            registry.registerPath(agent, "app", "", {"instance": "db1", "k": "v"})
            document = Document(registry, perPathInstance)
            (group,) = json.loads(document.render("proxy:8080"))
            self.assertEqual(
                (group["targets"], group["labels"]["instance"], group["labels"]["k"]),
                (["proxy:8080"], "db1", "v"),
                perPathInstance,
            )

    def test_pathLabelsAsUpstream(self) -> None:
        """
        A path's labels pass as prometheus-proxy passes them, but for its
        three reserved ones: C{job} and C{__} labels its users set included.
        """
        registry = Registry()
        agent = FakeAgent("1")
        registry.addAgent(agent)
        labels = {"job": "app", "__scheme__": "https", "hostName": "forged"}
        registry.registerPath(agent, "app", "", labels)
        (group,) = json.loads(Document(registry, False).render("proxy:8080"))
        self.assertEqual(
            (group["labels"]["job"], group["labels"]["__scheme__"], group["labels"]["hostName"]),
            ("app", "https", "host"),
        )

    def test_escaping(self) -> None:
        """
        Targets and labels that need JSON escaping (quotes, backslashes,
        control and non-ASCII characters) come out as the same strings, in
        the per-path instance too.
        """
        registry = Registry()
        agent = FakeAgent("1", 'a"\\', "h\x01é")
        registry.addAgent(agent)
        registry.registerPath(agent, "p", "", {"k": 'v"\n\\ü'})
        target = 'h"\\é:1'
        labels = {
            "k": 'v"\n\\ü',
            "__metrics_path__": "/p",
            "agentName": 'a"\\',
            "hostName": "h\x01é",
        }
        for perPathInstance, expected in [
            (False, labels),
            (True, {**labels, "instance": target + "/p"}),
        ]:
            (group,) = json.loads(Document(registry, perPathInstance).render(target))
            self.assertEqual(group["targets"], [target])
            self.assertEqual(group["labels"], expected)

    def test_empty(self) -> None:
        for perPathInstance in (False, True):
            self.assertEqual(Document(Registry(), perPathInstance).render("x:1"), b"[]\n")


class CachingTests(SynchronousTestCase):
    """
    A request costs what changed: groups are made only for entries that
    changed since the last request, and an unchanged registry answers the
    same bytes again.
    """

    def setUp(self) -> None:
        self.built: list[str] = []
        real = discovery.groupSegments

        def counting(entry: PathEntry, perPathInstance: bool) -> list[str]:
            self.built.append(entry.path)
            return real(entry, perPathInstance)

        self.patch(discovery, "groupSegments", counting)
        self.clock = Clock()
        self.registry = Registry(clock=self.clock)
        self.agent = FakeAgent("1")
        served(self.registry, self.agent, "a", "b", "c")
        self.document = Document(self.registry, perPathInstance=False)

    def test_noChangeNoBuild(self) -> None:
        first = self.document.render("proxy:8080")
        self.assertEqual(self.built, ["a", "b", "c"])
        self.assertIs(self.document.render("proxy:8080"), first)
        self.assertEqual(self.built, ["a", "b", "c"])

    def test_changeBuildsOnlyWhatChanged(self) -> None:
        self.document.render("proxy:8080")
        del self.built[:]
        self.registry.registerPath(self.agent, "b", "", {"k": "v"})
        self.registry.registerPath(self.agent, "d", "", {})
        self.registry.unregisterPath(self.agent, "a")
        (b, c, d) = json.loads(self.document.render("proxy:8080"))
        self.assertEqual(sorted(self.built), ["b", "d"])
        self.assertEqual(b["labels"]["k"], "v")
        self.assertEqual([g["labels"]["__metrics_path__"] for g in (b, c, d)], ["/b", "/c", "/d"])

    def test_refreshEncodesAhead(self) -> None:
        """
        A refresh encodes what registered since the last one, so the next
        request has nothing left to encode; with nothing changed, a refresh
        encodes nothing.
        """
        self.document.refresh()
        self.registry.registerPath(self.agent, "d", "", {})
        self.document.refresh()
        self.assertEqual(self.built, ["a", "b", "c", "d"])
        self.document.refresh()
        groups = json.loads(self.document.render("proxy:8080"))
        self.assertEqual(self.built, ["a", "b", "c", "d"])
        self.assertEqual(len(groups), 4)

    def test_agentLeaving(self) -> None:
        """
        A departed agent's paths stay listed, unchanged and not rebuilt, for
        the retention, so Prometheus sees them down; then they go.
        """
        before = self.document.render("proxy:8080")
        del self.built[:]
        self.registry.removeAgent(self.agent)
        self.assertEqual(self.document.render("proxy:8080"), before)
        self.assertEqual(self.built, [])
        self.clock.advance(ProxySettings().departed_path_retention_secs)
        self.assertEqual(self.document.render("proxy:8080"), b"[]\n")

    def test_holderChangeShowsAtOnce(self) -> None:
        """
        A standby's claim shows nowhere while it waits; once it is promoted,
        the next document carries its agent and labels, rebuilding only that
        path's group.
        """
        standby = FakeAgent("2", "standby", "h2")
        self.registry.addAgent(standby)
        self.registry.registerPath(standby, "b", "", {"team": "new"})
        (_, b, _) = json.loads(self.document.render("proxy:8080"))
        self.assertEqual((b["labels"]["agentName"], b["labels"].get("team")), ("agent", None))
        del self.built[:]
        self.registry.removeAgent(self.agent, "goodbye")
        # a and c stay listed as departed, their text unchanged.
        (_, b, _) = json.loads(self.document.render("proxy:8080"))
        self.assertEqual(self.built, ["b"])
        self.assertEqual(
            (b["labels"]["agentName"], b["labels"]["hostName"], b["labels"]["team"]),
            ("standby", "h2", "new"),
        )

    def test_otherTargetNoBuild(self) -> None:
        """
        Another target address reuses every group; only a bounded number of
        rendered documents is kept.
        """
        first = self.document.render("t0:1")
        for n in range(1, RENDERED_TARGETS + 1):
            body = self.document.render(f"t{n}:1")
            self.assertEqual(json.loads(body)[0]["targets"], [f"t{n}:1"])
        self.assertEqual(self.built, ["a", "b", "c"])
        again = self.document.render("t0:1")
        self.assertEqual(again, first)
        self.assertIsNot(again, first)

    def test_otherTargetPerPathInstance(self) -> None:
        """
        With per-path instances too, another target address reuses every
        group: only the instance's address part follows the target.
        """
        document = Document(self.registry, perPathInstance=True)
        for target in ("t0:1", "t1:1"):
            groups = json.loads(document.render(target))
            self.assertEqual(
                [g["labels"]["instance"] for g in groups], [f"{target}/{p}" for p in "abc"]
            )
        self.assertEqual(self.built, ["a", "b", "c"])


def askOn(resource: Discovery, local: IAddress, peer: IAddress, host: bytes = b"") -> Response:
    """
    The document as a scrape port at C{local} serves it to a client at
    C{peer} sending Host C{host} (none if empty).
    """
    held = Held()
    connection = factory(held).buildProtocol(peer)
    assert connection is not None
    connection.makeConnection(StringTransport(hostAddress=local, peerAddress=peer))
    headers = b"Host: " + host + b"\r\n" if host else b""
    connection.dataReceived(b"GET /discovery HTTP/1.0\r\n" + headers + b"\r\n")
    (exchange,) = held.exchanges
    resource.answer(exchange)
    transport = connection.transport
    assert isinstance(transport, StringTransport)
    return parseResponse(transport.value())


class ResourceTests(SynchronousTestCase):
    def test_targetFromHostHeader(self) -> None:
        """
        Without a configured prefix the target is the address Prometheus used
        to reach the proxy, with the scrape port when the Host header has none.
        """
        resource = Discovery(Registry(), "", perPathInstance=False)
        served(resource.registry, FakeAgent("1", "a", "h"), "app")
        for host, expected in [
            ("proxy.example:8080", "proxy.example:8080"),
            ("proxy.example", "proxy.example:8080"),
            ("[::1]:9000", "[::1]:9000"),
            ("bad host<>", "10.0.0.1:8080"),
        ]:
            r = ask(resource, host)
            self.assertTrue(r.complete)
            (group,) = json.loads(r.body)
            self.assertEqual(group["targets"], [expected], host)
            self.assertEqual(r.headers[b"content-type"], b"application/json; charset=utf-8")

    def test_unixSocket(self) -> None:
        """
        On a UNIX socket the target comes from a Host header with a port; with
        none, a 500 says which setting gives it, and nothing is rendered.
        """
        resource = Discovery(Registry(), "", perPathInstance=False)
        served(resource.registry, FakeAgent("1", "a", "h"), "app")
        for host, status in [(b"proxy.example:8080", 200), (b"proxy.example", 500), (b"", 500)]:
            r = askOn(resource, UNIXAddress("/run/promtwist/scrape.sock"), UNIXAddress(None), host)
            self.assertEqual(r.status, status, host)
            if status == 200:
                self.assertEqual(json.loads(r.body)[0]["targets"], ["proxy.example:8080"])
            else:
                self.assertIn(b"set proxy.service.discovery.targetPrefix", r.body)

    def test_targetFromSocketAddress(self) -> None:
        """
        Without a usable Host header the target is the address the request
        came in on, in a form Prometheus can scrape: an IPv6 address in
        brackets, an IPv4-mapped one as the IPv4 address it maps.
        """
        resource = Discovery(Registry(), "", perPathInstance=False)
        served(resource.registry, FakeAgent("1", "a", "h"), "app")
        for local, host, expected in [
            (IPv6Address("TCP", "::1", 8080), b"", "[::1]:8080"),
            (IPv6Address("TCP", "::ffff:127.0.0.1", 8080), b"", "127.0.0.1:8080"),
            (IPv6Address("TCP", "fe80::1%eth0", 8080), b"", "[fe80::1%eth0]:8080"),
            (IPv6Address("TCP", "::1", 8080), b"bad host<>", "[::1]:8080"),
            # A Host header's IPv6 address, bracketed or not, comes out
            # bracketed, with the port the request came in on.
            (IPv6Address("TCP", "::1", 8080), b"::1", "[::1]:8080"),
            (IPv6Address("TCP", "::1", 8080), b"[::1]", "[::1]:8080"),
            (IPv4Address("TCP", "10.0.0.1", 8080), b"", "10.0.0.1:8080"),
        ]:
            r = askOn(resource, local, IPv6Address("TCP", "::1", 40000), host)
            self.assertEqual(r.status, 200, (local, host))
            self.assertEqual(json.loads(r.body)[0]["targets"], [expected], (local, host))

    def test_configuredPrefix(self) -> None:
        resource = Discovery(Registry(), "proxy.example:8080", perPathInstance=False)
        served(resource.registry, FakeAgent("1", "a", "h"), "app")
        (group,) = json.loads(ask(resource, "other:1").body)
        self.assertEqual(group["targets"], ["proxy.example:8080"])


class RefreshTimerTests(SynchronousTestCase):
    def test_proxyEncodesAsAgentsRegister(self) -> None:
        """
        A proxy serving discovery refreshes the document every
        L{DISCOVERY_REFRESH_SECONDS}: paths registered meanwhile are encoded
        before any request asks for them. Without discovery, no timer.
        """
        clock = Clock()
        proxy = buildProxy(ProxySettings(sd_enabled=True), clock, interface="127.0.0.1")
        timers = [child for child in proxy if isinstance(child, TimerService)]
        for timer in timers:
            timer.startService()
            self.addCleanup(timer.stopService)
        assert proxy.scrapes.discovery is not None
        document = proxy.scrapes.discovery.document
        served(proxy.registry, FakeAgent("1"), "a")
        self.assertNotEqual(document._generation, proxy.registry.generation)
        clock.advance(DISCOVERY_REFRESH_SECONDS)
        self.assertEqual(document._generation, proxy.registry.generation)
        without = buildProxy(ProxySettings(), clock, interface="127.0.0.1")
        self.assertEqual(
            len([child for child in without if isinstance(child, TimerService)]),
            len(timers) - 1,
        )


class SettingTests(SynchronousTestCase):
    def test_proxyServesWhatIsConfigured(self) -> None:
        """
        C{proxy.service.discovery.perPathInstance} reaches the document the
        proxy serves: off by default, as prometheus-proxy; on, an instance
        per path.
        """
        for settings, expected in [
            (ProxySettings(sd_enabled=True), None),
            (ProxySettings(sd_enabled=True, sd_per_path_instance=True), "proxy:8080/app"),
        ]:
            proxy = buildProxy(settings, Clock(), interface="127.0.0.1")
            assert proxy.scrapes.discovery is not None
            served(proxy.registry, FakeAgent("1"), "app")
            (group,) = json.loads(ask(proxy.scrapes.discovery, "proxy:8080").body)
            self.assertEqual(group["labels"].get("instance"), expected, settings)


class HostRoutedTests(SynchronousTestCase):
    """
    C{?routing=host} lists the targets claimed for C{proxy_url} scrapes, each
    by its own address; the paths' document does not change.
    """

    def setUp(self) -> None:
        self.resource = Discovery(Registry(), "", perPathInstance=True)
        registry = self.resource.registry
        agent = FakeAgent("1", "a", "h")
        registry.addAgent(agent)
        registry.registerPath(agent, "app", "", {"team": "x"})
        forged = {"env": "prod", "instance": "i", "job": "j", "__scheme__": "https"}
        registry.registerPath(agent, hostKey("node1", 9100), "", {**forged, "__param_x": "y"})
        registry.registerPath(agent, hostKey("::1", 9182), "", {})
        # A host claimed on any port has no address to list.
        registry.registerPath(agent, hostKey("node2", None), "", {})

    def get(self, query: bytes) -> Response:
        exchange, transport = exchangeFor(
            b"GET /discovery" + query + b" HTTP/1.1\r\nHost: proxy:8080\r\n\r\n"
        )
        self.resource.answer(exchange)
        return parseResponse(transport.value())

    def test_targets(self) -> None:
        """
        Each target by its own address with its labels, but for those that
        are Prometheus' or the proxy's: an agent cannot set a target's
        C{job} or C{instance} (writing series under another target's), nor
        a C{__} label steering the scrape (C{__scheme__}, C{__param_*}).
        """
        r = self.get(b"?routing=host")
        self.assertEqual(r.headers[b"content-type"], b"application/json; charset=utf-8")
        self.assertEqual(
            json.loads(r.body),
            [
                {
                    "targets": ["[::1]:9182"],
                    "labels": {"agentName": "a", "hostName": "h"},
                },
                {
                    "targets": ["node1:9100"],
                    "labels": {"env": "prod", "agentName": "a", "hostName": "h"},
                },
            ],
        )

    def test_pathsUnchanged(self) -> None:
        for query in (b"", b"?routing=path", b"?x=1"):
            (group,) = json.loads(self.get(query).body)
            self.assertEqual(group["targets"], ["proxy:8080"])
            self.assertEqual(group["labels"]["__metrics_path__"], "/app")

    def test_unknownRouting(self) -> None:
        r = self.get(b"?routing=pushprox")
        self.assertEqual(r.status, 400)
        self.assertIn(b"unknown routing 'pushprox'", r.body)
