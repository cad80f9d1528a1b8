"""
Tests for L{promtwist.proxy.pushprox}: PushProx clients' polls and pushes
on the scrape port's own server (over L{StringTransport}s, on a
L{task.Clock}), and the scrapes they serve.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import Identity, ProxySettings
from promtwist.hostkeys import HostTarget, hostKey
from promtwist.metrics import MetricsRegistry, ProxyMetrics
from promtwist.proxy.access import guarded
from promtwist.proxy.answers import ScrapeFailed, ScrapeRecord
from promtwist.proxy.auth import Authenticator
from promtwist.proxy.bodybudget import BodyBudget
from promtwist.proxy.exchange import Exchange
from promtwist.proxy.httpserver import Handler, ScrapePortConnection
from promtwist.proxy.pushprox import POLL_EXPIRED, RESERVED_PATHS, PushProxHub
from promtwist.proxy.pushwire import MAX_PUSH_HEAD_BYTES
from promtwist.proxy.registry import Registry
from promtwist.proxy.relay import ScrapeCall
from promtwist.proxy.scrape import ScrapeHandler
from promtwist.proxy.stream import AnswerHead, ScrapeStream
from promtwist.test.scrapeport import Response, connect, factory, parseResponse
from promtwist.test.test_registry import FakeAgent

FQDN = "node1.example"
POLL_HOLD = 50.0
GRACE = 10.0


def scrapeCall(deadline: float = 10.0, query: str = "", scheme: str = "") -> ScrapeCall:
    return ScrapeCall(
        "/metrics",
        query,
        "text/plain;version=0.0.4",
        "gzip",
        "",
        deadline,
        HostTarget(scheme, FQDN, 9100),
    )


class Collected:
    """
    A scrape stream's outcome: its head or failure, and its body.
    """

    def __init__(self, stream: ScrapeStream) -> None:
        self.head: AnswerHead | None = None
        self.failure: ScrapeFailed | None = None
        self.body = b""
        self.done = False
        stream.head.addCallbacks(self._head, self._failed)
        self.stream = stream

    def _head(self, head: AnswerHead) -> None:
        self.head = head
        self.stream.deliverBody(self)

    def _failed(self, failure: Failure) -> None:
        self.failure = cast(ScrapeFailed, failure.trap(ScrapeFailed) and failure.value)

    def write(self, data: bytes) -> None:
        self.body += data

    def bodyDone(self) -> None:
        self.done = True

    def bodyFailed(self, failure: ScrapeFailed) -> None:
        self.failure = failure


def notPushProx(exchange: Exchange) -> None:
    exchange.setStatus(404)
    exchange.finishWith(b"not pushprox\n")


class Port:
    """
    A scrape port serving PushProx's paths through C{hub}, as the proxy
    builds it, and every other request with C{handler}.
    """

    def __init__(
        self,
        hub: PushProxHub,
        clock: Clock,
        handler: Handler = notPushProx,
        budget: BodyBudget | None = None,
    ) -> None:
        self.site = factory(
            hub.front(handler),
            clock,
            bodies=hub.bodyLimit,
            guard=hub.guard(None),
            budget=budget,
            sourceOf=hub.bodySource,
            bodyDeadline=hub.pushDeadline,
            refused=hub.refused,
            peekBytes=MAX_PUSH_HEAD_BYTES,
        )

    def connect(self, host: str = "10.1.1.1") -> tuple[ScrapePortConnection, StringTransport]:
        return connect(self.site, IPv4Address("TCP", host, 40000))

    def request(
        self,
        method: bytes,
        path: bytes,
        body: bytes = b"",
        headers: bytes = b"",
        host: str = "10.1.1.1",
    ) -> tuple[ScrapePortConnection, StringTransport]:
        connection, transport = self.connect(host)
        connection.dataReceived(
            b"%s %s HTTP/1.1\r\nHost: proxy\r\nContent-Length: %d\r\n%s\r\n%s"
            % (method, path, len(body), headers, body)
        )
        return connection, transport


def answer(transport: StringTransport) -> Response:
    return parseResponse(transport.value())


def scrapeIdOf(instruction: bytes) -> bytes:
    found = re.search(rb"\r\nId: ([0-9a-f-]+)\r\n", instruction)
    assert found is not None, instruction
    return found.group(1)


def pushBody(scrapeId: bytes, status: bytes = b"200 OK", body: bytes = b"up 1\n") -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4\r\nId: %s\r\n"
        b"X-Prometheus-Scrape-Timeout: 9.1\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (status, scrapeId, len(body), body)
    )


class HubCase(SynchronousTestCase):
    """
    A hub on a scrape port of its own, with a registry and a clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = MetricsRegistry()
        self.hub = self.makeHub(ProxySettings())
        self.port = Port(self.hub, self.clock)

    def makeHub(
        self,
        settings: ProxySettings,
        mayServe: Callable[[Identity, str], bool] | None = None,
    ) -> PushProxHub:
        self.metrics = MetricsRegistry()
        authenticator = Authenticator(settings)
        self.registry = Registry(
            RESERVED_PATHS, mayServe or authenticator.mayServe, settings, self.clock
        )
        return PushProxHub(
            self.registry,
            authenticator,
            self.clock,
            pollHold=POLL_HOLD,
            clientGrace=GRACE,
            maxContentBytes=1000,
            metricsRegistry=self.metrics,
            transfers=ProxyMetrics("test", self.clock),
        )

    def poll(
        self, fqdn: bytes = FQDN.encode(), headers: bytes = b"", host: str = "10.1.1.1"
    ) -> tuple[ScrapePortConnection, StringTransport]:
        return self.port.request(b"POST", b"/poll", fqdn, headers, host)

    def client(self) -> Any:
        (client,) = self.hub.clients.values()
        return client


class HubTests(HubCase):
    def test_pollCarriesScrape(self) -> None:
        """
        A held poll is answered with the scrape as an absolute-URI HTTP
        request, with C{Id} and the deadline the client needs; the push
        with that C{Id} is the scrape's answer, its internal and
        hop-by-hop headers gone.
        """
        _, pollTransport = self.poll()
        self.assertEqual(pollTransport.value(), b"")
        collected = Collected(self.client().scrape(scrapeCall(deadline=10)))
        poll = answer(pollTransport)
        self.assertEqual(poll.status, 200)
        lines = poll.body.split(b"\r\n")
        self.assertEqual(lines[0], b"GET http://node1.example:9100/metrics HTTP/1.1")
        self.assertEqual(lines[1], b"Host: node1.example:9100")
        self.assertIn(b"Accept: text/plain;version=0.0.4", lines)
        self.assertIn(b"Accept-Encoding: gzip", lines)
        self.assertIn(b"X-Prometheus-Scrape-Timeout-Seconds: 9.500", lines)
        self.assertTrue(poll.body.endswith(b"\r\n\r\n"))
        _, pushTransport = self.port.request(b"POST", b"/push", pushBody(scrapeIdOf(poll.body)))
        self.assertEqual(answer(pushTransport).status, 200)
        assert collected.head is not None
        self.assertEqual(collected.head.status, 200)
        self.assertEqual(collected.head.contentType, "text/plain; version=0.0.4")
        self.assertEqual((collected.body, collected.done), (b"up 1\n", True))
        # Only the client's grace is left running (and the connections'
        # idle timers): the scrape's deadline went with it.
        pending = [c for c in self.clock.getDelayedCalls() if "_idleTimedOut" not in repr(c)]
        self.assertEqual(pending, [self.client()._grace])

    def test_scrapeWaitsForPoll(self) -> None:
        """
        A scrape with no poll held waits for the next one.
        """
        _, first = self.poll()
        Collected(self.client().scrape(scrapeCall()))
        collected = Collected(self.client().scrape(scrapeCall()))
        self.assertEqual(first.value().count(b"HTTP/1.1 200"), 1)
        self.clock.advance(1)
        _, second = self.poll()
        instruction = answer(second).body
        self.port.request(b"POST", b"/push", pushBody(scrapeIdOf(instruction)))
        self.assertTrue(collected.done)

    def test_deadPollSwallowsNothing(self) -> None:
        """
        A poll whose connection closed never takes a scrape: the scrape
        waits for a live poll and, with none, fails at its deadline saying
        why.
        """
        connection, transport = self.poll()
        connection.connectionLost(Failure(ConnectionError("gone")))
        self.clock.advance(2)
        collected = Collected(self.client().scrape(scrapeCall(deadline=5)))
        self.assertEqual(transport.value(), b"")
        self.clock.advance(4.5)
        assert collected.failure is not None
        self.assertEqual(collected.failure.status, 503)
        self.assertEqual(
            collected.failure.reason,
            "no poll from PushProx client 'node1.example' within 4.5s"
            " (its last poll was closed by the client 6.5s ago)",
        )

    def test_pollExpires(self) -> None:
        """
        A poll is held at most C{pollHold}, then answered with PushProx's
        expiry; the client stays registered while it polls again.
        """
        _, transport = self.poll()
        self.clock.advance(POLL_HOLD)
        r = answer(transport)
        self.assertEqual((r.status, r.body), (408, POLL_EXPIRED.encode() + b"\n"))
        self.clock.advance(GRACE - 1)
        self.poll()
        self.clock.advance(POLL_HOLD - 1)
        self.assertEqual(self.registry.lookupHost(FQDN, 9100), (self.client(),))
        self.assertEqual(self.hub.servedFQDNs(), [FQDN])

    def test_forgottenAfterGrace(self) -> None:
        """
        A client with no poll for C{clientGrace} seconds is forgotten: gone
        from the registry and from C{/clients}, its queued scrapes failed.
        """
        connection, _ = self.poll()
        client = self.client()
        connection.connectionLost(Failure(ConnectionError("gone")))
        collected = Collected(client.scrape(scrapeCall(deadline=60)))
        self.assertEqual(self.registry.lookupHost(FQDN, 1), (client,))
        self.clock.advance(GRACE)
        self.assertEqual(self.registry.lookupHost(FQDN, 1), ())
        self.assertEqual(self.registry.agents(), [])
        self.assertEqual(self.hub.clients, {})
        assert collected.failure is not None
        self.assertIn("forgotten: no poll for 10s", collected.failure.reason)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_graceFromLastPoll(self) -> None:
        """
        The grace runs from the end of the client's last poll, however many
        polls came and ended since the first one's: a client that polled
        again half-way through is forgotten C{clientGrace} after that
        poll ended, and not before.
        """
        self.poll()
        client = self.client()
        Collected(client.scrape(scrapeCall(deadline=60)))
        self.clock.advance(GRACE / 2)
        connection, _ = self.poll()
        connection.connectionLost(Failure(ConnectionError("gone")))
        self.clock.advance(GRACE / 2)
        self.assertEqual(self.hub.clients, {client.key: client})
        self.clock.advance(GRACE / 2 - 0.1)
        self.assertEqual(self.hub.clients, {client.key: client})
        self.clock.advance(0.1)
        self.assertEqual(self.hub.clients, {})

    def test_newerPollExpiresOlder(self) -> None:
        """
        As in PushProx, a newer poll from the same client answers the older
        one with the expiry; the scrape goes to the newer.
        """
        _, old = self.poll()
        _, new = self.poll()
        self.assertEqual(answer(old).status, 408)
        Collected(self.client().scrape(scrapeCall()))
        self.assertEqual(answer(new).status, 200)

    def test_sentButNotPushed(self) -> None:
        """
        A scrape a poll carried and no push answered fails at its deadline
        with 408, saying so; a late push then finds nothing.
        """
        _, transport = self.poll()
        collected = Collected(self.client().scrape(scrapeCall(deadline=5)))
        self.clock.advance(4.5)
        assert collected.failure is not None
        self.assertEqual(collected.failure.status, 408)
        self.assertIn("took the scrape and pushed no answer within 4.5s", collected.failure.reason)
        _, push = self.port.request(b"POST", b"/push", pushBody(scrapeIdOf(answer(transport).body)))
        self.assertEqual(answer(push).status, 404)

    def test_errorPushed(self) -> None:
        """
        A client's error answer (PushProx pushes its own failures as 500)
        fails the scrape with the client's words.
        """
        _, transport = self.poll()
        collected = Collected(self.client().scrape(scrapeCall()))
        scrapeId = scrapeIdOf(answer(transport).body)
        self.port.request(
            b"POST",
            b"/push",
            pushBody(scrapeId, b"500 Internal Server Error", b"scrape target doesn't match"),
        )
        assert collected.failure is not None
        self.assertEqual(collected.failure.status, 500)
        self.assertEqual(
            collected.failure.reason,
            "PushProx client 'node1.example': HTTP 500: scrape target doesn't match",
        )

    def test_clients(self) -> None:
        """
        C{/clients} is PushProx's: a target group per FQDN, no labels, as
        JSON.
        """
        self.poll()
        self.poll(b"b.example\n", host="10.1.1.2")
        _, transport = self.port.request(b"GET", b"/clients")
        r = answer(transport)
        self.assertEqual(r.headers[b"content-type"], b"application/json")
        self.assertTrue(r.body.endswith(b"]\n"), r.body)
        self.assertEqual(
            json.loads(r.body),
            [{"targets": ["b.example"], "labels": None}, {"targets": [FQDN], "labels": None}],
        )

    def test_metrics(self) -> None:
        """
        PushProx's series: requests by path and status, durations (a
        poll's is how long it was held), and the clients known.
        """
        value = self.metrics.get_sample_value
        self.assertEqual(value("pushprox_http_requests_total", {"code": "408", "path": "/poll"}), 0)
        _, transport = self.poll()
        self.clock.advance(3)
        Collected(self.client().scrape(scrapeCall()))
        self.port.request(b"POST", b"/push", pushBody(scrapeIdOf(answer(transport).body)))
        self.port.request(b"POST", b"/push", b"junk")
        self.port.request(b"GET", b"/clients")
        self.assertEqual(value("pushprox_http_requests_total", {"code": "200", "path": "/poll"}), 1)
        self.assertEqual(value("pushprox_http_requests_total", {"code": "200", "path": "/push"}), 1)
        self.assertEqual(value("pushprox_http_requests_total", {"code": "400", "path": "/push"}), 1)
        self.assertEqual(
            value("pushprox_http_requests_total", {"code": "200", "path": "/clients"}), 1
        )
        self.assertEqual(value("pushprox_http_duration_seconds_sum", {"path": "/poll"}), 3)
        # Go's default buckets, as PushProx's histogram has, spelled as
        # PushProx's /metrics spells them (its 5d89cdb build, run).
        buckets = [
            sample.labels["le"]
            for family in self.metrics.collect()
            for sample in family.samples
            if sample.name == "pushprox_http_duration_seconds_bucket"
            and sample.labels["path"] == "/poll"
        ]
        self.assertEqual(
            buckets,
            "0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 +Inf".split(),
        )
        self.assertEqual(value("pushprox_proxy_clients"), 1)
        self.assertEqual(value("pushproxy_proxied_requests_total", {"code": "200"}), 1)
        # A scrape no poll took in time counts with the status it got.
        connection, _ = self.poll()
        connection.connectionLost(Failure(ConnectionError("gone")))
        Collected(self.client().scrape(scrapeCall(deadline=2)))
        self.clock.advance(2)
        self.assertEqual(value("pushproxy_proxied_requests_total", {"code": "503"}), 1)
        # PushProx's families, types and label names (its cmd/proxy/main.go).
        shapes = {
            family.name: (
                family.type,
                {frozenset(sample.labels) - {"le"} for sample in family.samples},
            )
            for family in self.metrics.collect()
        }
        self.assertEqual(
            shapes,
            {
                "pushprox_http_requests": ("counter", {frozenset({"code", "path"})}),
                "pushprox_http_duration_seconds": ("histogram", {frozenset({"path"})}),
                "pushproxy_proxied_requests": ("counter", {frozenset({"code"})}),
                "pushprox_proxy_clients": ("gauge", {frozenset()}),
            },
        )
        # PushProx's Go client writes no _created series.
        created = [
            sample.name
            for family in self.metrics.collect()
            for sample in family.samples
            if sample.name.endswith("_created")
        ]
        self.assertEqual(created, [])

    def test_serverRefusalsCounted(self) -> None:
        """
        Polls and pushes the server refuses before they reach the hub (a
        body undeclared, too large, too slow) count in PushProx's series.
        """
        value = self.metrics.get_sample_value
        connection, _ = self.port.connect()
        connection.dataReceived(b"POST /push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.port.request(b"POST", b"/poll", b"x" * 1000)
        connection, _ = self.port.connect()
        connection.dataReceived(b"POST /push HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
        self.clock.advance(10)
        self.assertEqual(value("pushprox_http_requests_total", {"code": "411", "path": "/push"}), 1)
        self.assertEqual(value("pushprox_http_requests_total", {"code": "413", "path": "/poll"}), 1)
        self.assertEqual(value("pushprox_http_requests_total", {"code": "408", "path": "/push"}), 1)
        self.assertEqual(value("pushprox_http_duration_seconds_sum", {"path": "/push"}), 10)

    def test_spellingKept(self) -> None:
        """
        A client's FQDN is kept as it spelled it, case and final dot and
        all: C{/clients} lists it so, and the scrapes it is sent name it
        so, since the client compares their host with its own exactly.
        """
        _, poll = self.poll(b"NODE1.Example.")
        Collected(self.client().scrape(scrapeCall()))
        lines = answer(poll).body.split(b"\r\n")
        self.assertEqual(lines[0], b"GET http://NODE1.Example.:9100/metrics HTTP/1.1")
        self.assertEqual(lines[1], b"Host: NODE1.Example.:9100")
        _, transport = self.port.request(b"GET", b"/clients")
        self.assertEqual(
            json.loads(answer(transport).body), [{"targets": ["NODE1.Example."], "labels": None}]
        )

    def test_spellingsDoNotCancel(self) -> None:
        """
        Two clients whose FQDNs differ only in spelling are two clients of
        one host: neither's poll answers the other's; the second waits as
        a standby.
        """
        _, first = self.poll(b"node1.example")
        _, second = self.poll(b"NODE1.EXAMPLE.")
        _, third = self.poll(b"::1", host="10.1.1.2")
        _, fourth = self.poll(b"0:0:0:0:0:0:0:1", host="10.1.1.2")
        self.assertEqual([t.value() for t in (first, second, third, fourth)], [b""] * 4)
        roles = sorted((c.fqdn, c.role) for c in self.hub.clients.values())
        self.assertEqual(
            roles,
            [
                ("0:0:0:0:0:0:0:1", "standby"),
                ("::1", "holder"),
                ("NODE1.EXAMPLE.", "standby"),
                ("node1.example", "holder"),
            ],
        )

    def test_anonymousNewAddressIsStandby(self) -> None:
        """
        An anonymous poll from a new address is another client even while
        the FQDN's holder has no poll held (as after each scrape it
        carries): it waits as a standby, and holds the FQDN only once the
        holder is forgotten, C{clientGraceSecs} after its last poll.
        """
        _, poll = self.poll()
        holder = self.client()
        Collected(holder.scrape(scrapeCall()))
        self.assertEqual(answer(poll).status, 200)
        _, newcomer = self.poll(host="10.2.2.2")
        self.assertEqual(newcomer.value(), b"")
        roles = sorted((c.hostName, c.role) for c in self.hub.clients.values())
        self.assertEqual(roles, [("10.1.1.1", "holder"), ("10.2.2.2", "standby")])
        self.assertEqual(self.registry.lookupHost(FQDN, 9100), (holder,))
        self.clock.advance(GRACE)
        (standby,) = self.hub.clients.values()
        self.assertEqual((standby.hostName, standby.role), ("10.2.2.2", "holder"))
        self.assertEqual(self.registry.lookupHost(FQDN, 9100), (standby,))

    def test_registrationsLoggedAtABoundedRate(self) -> None:
        """
        Polls from ever new addresses (a scanner, a takeover attempt) log
        their registrations at a bounded rate, the rest counted in one line
        when the interval ends.
        """
        with capturedLogs() as events:
            for i in range(50):
                self.poll(host=f"10.3.0.{i + 1}")
            self.clock.advance(60)
            self.hub.news.summariseExpired()
        registered = [e for e in events if "registered as" in e["log_format"]]
        self.assertEqual(len(registered), 5)
        (summary,) = [e for e in events if "suppressed" in e["log_format"]]
        self.assertEqual((summary["count"], summary["kind"]), (45, "PushProx client registration"))

    def test_anonymousHolderPollingKeepsFQDN(self) -> None:
        """
        A holder that keeps polling keeps its FQDN however often a
        newcomer from another address polls between its polls.
        """
        _, poll = self.poll()
        holder = self.client()
        for _ in range(3):
            Collected(holder.scrape(scrapeCall()))
            self.assertEqual(answer(poll).status, 200)
            self.poll(host="10.2.2.2")
            self.clock.advance(GRACE / 2)
            _, poll = self.poll()
        self.assertEqual(holder.role, "holder")
        self.assertEqual(self.registry.lookupHost(FQDN, 9100), (holder,))

    def test_anonymousHolderKeepsFQDN(self) -> None:
        """
        An anonymous newcomer from another address does not take an FQDN
        whose holder polls: it waits as a standby.
        """
        _, held = self.poll()
        _, newcomer = self.poll(host="10.2.2.2")
        self.assertEqual((held.value(), newcomer.value()), (b"", b""))
        roles = sorted((c.hostName, c.role) for c in self.hub.clients.values())
        self.assertEqual(roles, [("10.1.1.1", "holder"), ("10.2.2.2", "standby")])

    def tokenHub(self, perAgent: bool = False) -> bytes:
        """
        Require tokens; the C{Authorization} header of identity C{a}.
        """
        identity = Identity("a", "tok-a", perAgent=perAgent)
        self.hub = self.makeHub(ProxySettings(identities=(identity,)))
        self.port = Port(self.hub, self.clock)
        return b"Authorization: Bearer tok-a\r\n"

    def test_tokenClientMoved(self) -> None:
        """
        A client of a shared identity that polls from a new host between
        its rounds of polls (its poll closed, or expired, or its push made)
        has moved: it keeps its FQDN at once, and scrapes waiting for it go
        to the new poll.
        """
        token = self.tokenHub()
        connection, _ = self.poll(headers=token)
        client = self.client()
        connection.connectionLost(Failure(ConnectionError("gone")))
        collected = Collected(client.scrape(scrapeCall()))
        with capturedLogs() as events:
            _, new = self.poll(headers=token, host="10.2.2.2")
        self.assertEqual((client.hostName, client.role), ("10.2.2.2", "holder"))
        self.assertEqual(self.hub.clients, {client.key: client})
        self.assertEqual(answer(new).status, 200)
        moves = [e["address"] for e in events if "polls from" in e["log_format"]]
        self.assertEqual(moves, ["10.2.2.2"])
        self.assertIsNone(collected.failure)
        _, push = self.port.request(
            b"POST", b"/push", pushBody(scrapeIdOf(answer(new).body)), token, "10.2.2.2"
        )
        self.assertEqual(answer(push).status, 200)
        # Between its push and its next poll it has moved too.
        _, newer = self.poll(headers=token, host="10.3.3.3")
        self.assertEqual((client.hostName, client.role), ("10.3.3.3", "holder"))
        self.assertEqual(newer.value(), b"")

    def test_sharedTokenHolderKeepsFQDN(self) -> None:
        """
        Two clients of one shared identity on two hosts, both polling: the
        first holds the FQDN, its polls held and its scrapes its own, while
        the second waits as a standby, as an anonymous newcomer does, and
        holds it once the first is forgotten.
        """
        token = self.tokenHub()
        connection, held = self.poll(headers=token)
        holder = self.client()
        for _ in range(3):
            _, other = self.poll(headers=token, host="10.2.2.2")
            self.assertEqual((held.value(), other.value()), (b"", b""))
            collected = Collected(holder.scrape(scrapeCall()))
            scrapeId = scrapeIdOf(answer(held).body)
            # Its scrape out, the holder is polling still.
            _, other = self.poll(headers=token, host="10.2.2.2")
            self.port.request(b"POST", b"/push", pushBody(scrapeId), token)
            assert collected.head is not None
            connection, held = self.poll(headers=token)
        roles = sorted((c.hostName, c.role) for c in self.hub.clients.values())
        self.assertEqual(roles, [("10.1.1.1", "holder"), ("10.2.2.2", "standby")])
        self.assertEqual(self.registry.lookupHost(FQDN, 9100), (holder,))
        connection.connectionLost(Failure(ConnectionError("gone")))
        self.clock.advance(GRACE)
        (standby,) = self.hub.clients.values()
        self.assertEqual((standby.hostName, standby.role), ("10.2.2.2", "holder"))

    def test_perAgentTokenClientMoved(self) -> None:
        """
        A client of an identity declared one agent's (C{perAgent}) is that
        client wherever it polls from: its poll from a new host replaces
        the older at once, as in PushProx.
        """
        token = self.tokenHub(perAgent=True)
        _, old = self.poll(headers=token)
        _, new = self.poll(headers=token, host="10.2.2.2")
        self.assertEqual(answer(old).status, 408)
        client = self.client()
        self.assertEqual((client.hostName, client.role), ("10.2.2.2", "holder"))
        Collected(client.scrape(scrapeCall()))
        self.assertEqual(answer(new).status, 200)

    def test_anonymousIPv6KeyedBySlash64(self) -> None:
        """
        An anonymous client polling from a new address in its IPv6 /64 (a
        temporary address) is the same client, not a standby.
        """
        site = self.port.site
        for address in ("2001:db8::1", "2001:db8::2"):
            connection, _ = connect(site, IPv6Address("TCP", address, 40000))  # type: ignore[arg-type]
            connection.dataReceived(
                b"POST /poll HTTP/1.1\r\nHost: proxy\r\nContent-Length: %d\r\n\r\n%s"
                % (len(FQDN), FQDN.encode())
            )
        client = self.client()
        self.assertEqual((client.hostName, client.role), ("2001:db8::2", "holder"))
        self.assertEqual(client.key.host, "2001:db8::/64")

    def test_standbyNotListed(self) -> None:
        """
        A second client claiming a held FQDN (from another address) waits:
        C{/clients} lists the FQDN once, and scrapes go to the holder.
        """
        self.poll()
        self.poll(host="10.9.9.9")
        self.assertEqual(len(self.hub.clients), 2)
        self.assertEqual(self.hub.servedFQDNs(), [FQDN])
        self.assertEqual(sorted(c.role for c in self.hub.clients.values()), ["holder", "standby"])


class HostileTests(HubCase):
    """
    What a client or anyone else sends is checked; each refusal costs its
    request only.
    """

    def test_badFQDN(self) -> None:
        for body, why in [
            (b"", b"no host given"),
            (b"a b", b"is not a DNS name or IP address"),
            (b"a:b:c", b"is not an IPv6 address"),
            (b"x" * 254, b"254 characters"),
            (b"\xff", b"in ASCII"),
        ]:
            _, transport = self.poll(body)
            r = answer(transport)
            self.assertEqual(r.status, 400, body)
            self.assertIn(why, r.body)
        self.assertEqual(self.hub.clients, {})

    def test_pollTooLarge(self) -> None:
        _, transport = self.poll(b"x" * 1000)
        self.assertEqual(answer(transport).status, 413)

    def test_pushBudgetShared(self) -> None:
        """
        A token client's pushes count against the budget by its identity
        and host: one identity's clients on two hosts (a fleet sharing
        C{proxy.agentToken}) are two sources, and one host's pushes under
        two identities are two; the same identity on the same host is one,
        holding at most half the budget.
        """
        budget = BodyBudget(2000, "proxy.pushprox.pushBudgetMBytes")
        identities = (Identity("a", "tok-a"), Identity("b", "tok-b"))
        self.hub = self.makeHub(ProxySettings(identities=identities))
        self.port = Port(self.hub, self.clock, budget=budget)
        self.assertEqual(self.heldPush(b"tok-a", "10.1.1.1").value(), b"")
        self.assertEqual(self.heldPush(b"tok-a", "10.1.1.2").value(), b"")
        self.assertEqual(self.heldPush(b"tok-b", "10.1.1.1").value(), b"")
        refused = answer(self.heldPush(b"tok-a", "10.1.1.1"))
        self.assertEqual(refused.status, 503)
        self.assertIn(b"from identity 'a' on 10.1.1.1,", refused.body)
        self.assertIn(b"one source's share of 1000", refused.body)
        self.assertEqual(
            budget.bySource,
            {
                "identity 'a' on 10.1.1.1": 600,
                "identity 'a' on 10.1.1.2": 600,
                "identity 'b' on 10.1.1.1": 600,
            },
        )

    def test_pushBudgetSharedAnonymous(self) -> None:
        """
        Anonymous clients' pushes count against the budget by the host
        they come from.
        """
        budget = BodyBudget(2000, "proxy.pushprox.pushBudgetMBytes")
        self.port = Port(self.hub, self.clock, budget=budget)
        self.assertEqual(self.heldPush(b"", "10.1.1.1").value(), b"")
        refused = answer(self.heldPush(b"", "10.1.1.1"))
        self.assertEqual(refused.status, 503)
        self.assertIn(b"from 10.1.1.1,", refused.body)
        self.assertEqual(self.heldPush(b"", "10.1.1.2").value(), b"")
        self.assertEqual(budget.bySource, {"10.1.1.1": 600, "10.1.1.2": 600})

    def test_heldPollNotCounted(self) -> None:
        """
        A client's held poll is not a body in the push budget: its push is
        its host's first, so it takes the room kept for sources reading
        none, beside two hosts holding pushes. (Counted, the poll made the
        push its host's second, which must leave that room free, and the
        real client's answers were refused while it polled as it does.)
        """
        budget = BodyBudget(2000, "proxy.pushprox.pushBudgetMBytes")
        self.port = Port(self.hub, self.clock, budget=budget)
        self.assertEqual(self.poll()[1].value(), b"")
        self.assertEqual(budget.held, 0)
        for host in ("10.1.1.2", "10.1.1.3"):
            self.assertEqual(self.heldPush(b"", host).value(), b"")
        self.assertEqual(self.heldPush(b"", "10.1.1.1").value(), b"")
        self.assertEqual(budget.bySource, {"10.1.1.1": 600, "10.1.1.2": 600, "10.1.1.3": 600})

    def heldPush(self, token: bytes, host: str) -> StringTransport:
        """
        A push from C{host} that declares 600 bytes and sends none of them.
        """
        connection, transport = self.port.connect(host)
        authorization = b"Authorization: Bearer %s\r\n" % token if token else b""
        connection.dataReceived(
            b"POST /push HTTP/1.1\r\nHost: proxy\r\nContent-Length: 600\r\n%s\r\n" % authorization
        )
        return transport

    def test_clientsCountAsAgents(self) -> None:
        """
        New clients count against C{proxy.internal.maxAgents} with the
        agents: past it a poll for a new FQDN gets 503 saying so, while
        the clients known keep polling.
        """
        self.hub = self.makeHub(ProxySettings(max_agents=3))
        self.port = Port(self.hub, self.clock)
        agent = FakeAgent("a1")
        self.registry.addAgent(agent)
        for n in (1, 2):
            self.assertEqual(self.poll(b"node%d.example" % n)[1].value(), b"")
        r = answer(self.poll(b"node3.example")[1])
        self.assertEqual(r.status, 503)
        self.assertIn(
            b"already serves 3 agents and PushProx clients (proxy.internal.maxAgents)", r.body
        )
        self.assertEqual(self.poll(b"node1.example")[1].value(), b"")
        self.registry.removeAgent(agent)
        self.assertEqual(self.poll(b"node3.example")[1].value(), b"")
        self.assertEqual(len(self.hub.clients), 3)

    def test_pushTooLarge(self) -> None:
        """
        A push over the content limit (plus room for a head) is refused
        before it is read.
        """
        _, transport = self.port.request(b"POST", b"/push", b"x" * (1000 + 64 * 1024 + 1))
        self.assertEqual(answer(transport).status, 413)

    def sentScrape(self, deadline: float = 30) -> tuple[Collected, bytes]:
        """
        A scrape a poll carried, and its id.
        """
        _, poll = self.poll()
        collected = Collected(self.client().scrape(scrapeCall(deadline=deadline)))
        return collected, scrapeIdOf(answer(poll).body)

    def assertScrapeFailed(self, collected: Collected, status: int, reason: str) -> None:
        assert collected.failure is not None
        self.assertEqual(collected.failure.status, status)
        self.assertIn(reason, collected.failure.reason)

    def test_pushedBodyOverLimit(self) -> None:
        """
        A pushed answer whose body is over the content limit (as an agent's
        would be) is refused with 413, and its scrape ends at once with
        413 and the reason, not at its deadline.
        """
        collected, scrapeId = self.sentScrape()
        _, push = self.port.request(b"POST", b"/push", pushBody(scrapeId, body=b"x" * 1001))
        r = answer(push)
        self.assertEqual(r.status, 413)
        self.assertIn(b"a body of 1001 bytes, over the content limit of 1000 bytes", r.body)
        self.assertScrapeFailed(
            collected,
            413,
            "PushProx client 'node1.example' pushed a body of 1001 bytes, over the content"
            " limit of 1000 bytes (proxy.internal.maxUnzippedContentSizeMBytes)",
        )

    def test_pushOverItsLimit(self) -> None:
        """
        A push over its limit is refused on its head at once, and the
        scrape that the start of the push that came with the head names
        ends at once; with only the head come, nothing names it.
        """
        collected, scrapeId = self.sentScrape()
        data = pushBody(scrapeId, body=b"x" * 70000)
        connection, push = self.port.connect()
        connection.dataReceived(b"POST /push HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(data))
        self.assertEqual(answer(push).status, 413)
        self.assertIsNone(collected.failure)
        _, push = self.port.request(b"POST", b"/push", data)
        self.assertEqual(answer(push).status, 413)
        self.assertScrapeFailed(
            collected, 413, f"pushed {len(data)} bytes, over the push limit of 66536"
        )

    def test_malformedPush(self) -> None:
        """
        A push that is no answer but names a scrape ends that scrape at
        once with 502, as an agent's answer breaking the protocol would.
        """
        collected, scrapeId = self.sentScrape()
        bad = pushBody(scrapeId).replace(b"Content-Length: 5", b"Content-Length: 9")
        _, push = self.port.request(b"POST", b"/push", bad)
        self.assertEqual(answer(push).status, 400)
        self.assertScrapeFailed(
            collected,
            502,
            "pushed an answer that is not one: the pushed answer's body is shorter than its"
            " framing says",
        )

    def test_pushOverBudget(self) -> None:
        """
        A push refused on its head for the push budget ends the scrape
        that the start of it that came with the head names, at once, with
        the refusal's reason.
        """
        budget = BodyBudget(2000, "proxy.pushprox.pushBudgetMBytes")
        self.port = Port(self.hub, self.clock, budget=budget)
        collected, scrapeId = self.sentScrape()
        self.heldPush(b"", "10.1.1.1")
        _, push = self.port.request(b"POST", b"/push", pushBody(scrapeId, body=b"x" * 500))
        self.assertEqual(answer(push).status, 503)
        self.assertScrapeFailed(
            collected,
            502,
            "PushProx client 'node1.example' pushed no whole answer: the proxy is reading 600"
            " bytes of request bodies, 600 of them from 10.1.1.1,",
        )

    def slowPush(self, data: bytes, missing: int = 2) -> StringTransport:
        """
        A push of C{data} that sends all but its last C{missing} bytes.
        """
        connection, push = self.port.connect()
        connection.dataReceived(
            b"POST /push HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data[:-missing])
        )
        self.connection = connection
        return push

    def test_slowPushWithinScrapeDeadline(self) -> None:
        """
        A push that names a scrape waiting for it may take as long as that
        scrape has left, past the head's deadline: PushProx reads a slow
        push, and a large answer on a slow link is one.
        """
        collected, scrapeId = self.sentScrape(deadline=30)
        data = pushBody(scrapeId)
        push = self.slowPush(data)
        self.clock.advance(25)
        self.assertEqual(push.value(), b"")
        self.connection.dataReceived(data[-2:])
        self.assertEqual(answer(push).status, 200)
        assert collected.head is not None
        self.assertEqual(collected.head.status, 200)

    def test_slowPush(self) -> None:
        """
        A push not whole by its scrape's deadline is refused with 408 then,
        saying so; one that names no waiting scrape has the head's
        deadline only, and ends the scrape it names with the reason.
        """
        collected, scrapeId = self.sentScrape(deadline=30)
        push = self.slowPush(pushBody(scrapeId))
        self.clock.advance(10)
        self.clock.advance(20)
        r = answer(push)
        self.assertEqual(r.status, 408)
        self.assertIn(
            b"not complete within 10 seconds of its request's start, nor by the deadline of"
            b" what it answers (2 bytes missing)",
            r.body,
        )
        self.assertScrapeFailed(collected, 408, "took the scrape and pushed no answer within 29.5s")
        _, poll = self.poll()
        collected = Collected(self.client().scrape(scrapeCall(deadline=30)))
        scrapeId = scrapeIdOf(answer(poll).body)
        unnamed = self.slowPush(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        named = self.slowPush(pushBody(scrapeId) + b"x" * 50000, missing=40000)
        self.clock.advance(10)
        self.assertEqual(answer(unnamed).status, 408)
        self.assertEqual(named.value(), b"")
        self.assertIsNone(collected.failure)

    def test_refusedPushOfOtherIdentity(self) -> None:
        """
        A refused push naming a scrape sent to another identity leaves
        that scrape alone.
        """
        settings = ProxySettings(identities=(Identity("a", "tok-a"), Identity("b", "tok-b")))
        self.hub = self.makeHub(settings)
        self.port = Port(self.hub, self.clock)
        _, poll = self.poll(headers=b"Authorization: Bearer tok-a\r\n")
        collected = Collected(self.client().scrape(scrapeCall()))
        scrapeId = scrapeIdOf(answer(poll).body)
        _, push = self.port.request(
            b"POST",
            b"/push",
            pushBody(scrapeId, body=b"x" * 1001),
            b"Authorization: Bearer tok-b\r\n",
        )
        self.assertEqual(answer(push).status, 403)
        bad = pushBody(scrapeId).replace(b"Content-Length: 5", b"Content-Length: 9")
        self.port.request(b"POST", b"/push", bad, b"Authorization: Bearer tok-b\r\n")
        self.assertIsNone(collected.failure)

    def test_badPushes(self) -> None:
        scrapeId = b"0123abcd-0000-4000-8000-0123456789ab"
        for body, why in [
            (b"garbage\r\n\r\n", b"not an HTTP response"),
            (b"HTTP/1.1 200 OK\r\n\r\n", b"no Id header"),
            (b"HTTP/1.1 200 OK\r\nId: x\r\n\r\n", b"is not a scrape id"),
            (b"HTTP/1.1 200 OK\r\nId: %s\r\nId: %s\r\n\r\n" % (scrapeId, scrapeId), b"2 Id"),
            (b"HTTP/1.1 200 OK\r\nId: %s\r\nContent-Length: 9\r\n\r\nab" % scrapeId, b"shorter"),
            (b"HTTP/1.1 200 OK", b"not complete"),
            (pushBody(scrapeId), b"no scrape " + scrapeId + b" waits"),
        ]:
            _, transport = self.port.request(b"POST", b"/push", body)
            r = answer(transport)
            self.assertIn(r.status, (400, 404), body)
            self.assertIn(why, r.body)

    def test_pushWithoutLength(self) -> None:
        """
        A push must declare its C{Content-Length}: one with neither it nor
        chunked framing has no body, and gets 400 saying so; a chunked one
        gets 411.
        """
        for framing, status, why in [
            (
                b"",
                400,
                b"the push has no body: it must carry the target's answer, its length"
                b" declared in Content-Length",
            ),
            (b"Transfer-Encoding: chunked\r\n", 411, b"Content-Length"),
        ]:
            connection, transport = self.port.connect()
            connection.dataReceived(b"POST /push HTTP/1.1\r\nHost: proxy\r\n%s\r\n" % framing)
            r = answer(transport)
            self.assertEqual(r.status, status)
            self.assertIn(why, r.body)

    def test_pushFromOtherIdentity(self) -> None:
        """
        With identities, a push is taken only from the identity the scrape
        was sent to: another client cannot answer for it.
        """
        settings = ProxySettings(identities=(Identity("a", "tok-a"), Identity("b", "tok-b")))
        self.hub = self.makeHub(settings)
        self.port = Port(self.hub, self.clock)
        _, transport = self.poll(headers=b"Authorization: Bearer tok-a\r\n")
        collected = Collected(self.client().scrape(scrapeCall()))
        scrapeId = scrapeIdOf(answer(transport).body)
        _, push = self.port.request(
            b"POST", b"/push", pushBody(scrapeId), b"Authorization: Bearer tok-b\r\n"
        )
        self.assertEqual(answer(push).status, 403)
        self.assertIsNone(collected.head)
        _, push = self.port.request(
            b"POST", b"/push", pushBody(scrapeId), b"Authorization: Bearer tok-a\r\n"
        )
        self.assertEqual(answer(push).status, 200)
        self.assertTrue(collected.done)

    def test_tokenRequired(self) -> None:
        """
        With agent credentials configured, a PushProx client must present a
        bearer token of an identity: without one, or with a wrong one, 401.
        """
        self.hub = self.makeHub(ProxySettings(identities=(Identity("a", "tok-a"),)))
        self.port = Port(self.hub, self.clock)
        required = b"this proxy requires PushProx clients to send Authorization: Bearer <token>"
        for headers, why in [
            (b"", required + b" with an agent token (a front end adds it), and this one sent none"),
            (b"Authorization: Bearer nope\r\n", b"invalid agent token"),
            (
                b"Authorization: Basic eDp5\r\n",
                required + b" with an agent token (a front end adds it), and this one sent"
                b" Authorization: Basic ..., which the proxy does not check",
            ),
        ]:
            _, transport = self.poll(headers=headers)
            r = answer(transport)
            self.assertEqual(r.status, 401)
            self.assertIn(why, r.body)
        self.assertEqual(self.hub.clients, {})

    def test_basicAuthorizationNoToken(self) -> None:
        """
        Where PushProx clients need no token, an C{Authorization} of
        another scheme (a front end's Basic credentials, or Go's for a
        C{--proxy-url} with user info) is no refusal: the client polls and
        pushes anonymously.
        """
        basic = b"Authorization: Basic dTpw\r\n"
        _, poll = self.poll(headers=basic)
        self.assertEqual(poll.value(), b"")
        collected = Collected(self.client().scrape(scrapeCall()))
        scrapeId = scrapeIdOf(answer(poll).body)
        _, push = self.port.request(b"POST", b"/push", pushBody(scrapeId), basic)
        self.assertEqual(answer(push).status, 200)
        assert collected.head is not None
        self.assertEqual(collected.head.status, 200)

    def test_refusedBeforeBody(self) -> None:
        """
        Without a valid token a push is refused on its head, before a byte
        of its body is read, and the connection closes.
        """
        self.hub = self.makeHub(ProxySettings(identities=(Identity("a", "tok-a"),)))
        self.port = Port(self.hub, self.clock)
        connection, transport = self.port.connect()
        connection.dataReceived(b"POST /push HTTP/1.1\r\nContent-Length: 60000\r\n\r\n")
        r = answer(transport)
        self.assertEqual(r.status, 401)
        self.assertIn(b"this one sent none", r.body)
        self.assertTrue(transport.disconnecting)

    def test_claimRefused(self) -> None:
        """
        A client whose identity may not serve the FQDN gets 403 with the
        registry's reason, and is not kept.
        """
        self.hub = self.makeHub(ProxySettings(), lambda identity, key: key != hostKey(FQDN, None))
        self.port = Port(self.hub, self.clock)
        _, transport = self.poll()
        r = answer(transport)
        self.assertEqual(r.status, 403)
        self.assertIn(b"is not authorized to serve //node1.example", r.body)
        self.assertEqual((self.hub.clients, self.registry.agents()), ({}, []))
        # Another FQDN the identity may serve is held as usual.
        _, transport = self.poll(b"other.example")
        self.assertEqual((transport.value(), len(self.hub.clients)), (b"", 1))


class RoutedTests(HubCase):
    """
    PushProx clients with the registry and the scrape handler: what
    Prometheus' proxy_url requests get.
    """

    def setUp(self) -> None:
        super().setUp()
        self.scrapes = ScrapeHandler(ProxySettings(), self.registry, self.clock)
        self.port = Port(self.hub, self.clock, self.scrapes)
        self.site = self.port.site

    def prometheus(self, url: bytes) -> StringTransport:
        connection, transport = connect(self.site, IPv4Address("TCP", "10.5.5.5", 50000))
        connection.dataReceived(
            b"GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n"
            b"X-Prometheus-Scrape-Timeout-Seconds: 5\r\n\r\n" % url
        )
        return transport

    def test_proxyURL(self) -> None:
        """
        A proxy_url scrape of any port of the client's FQDN goes down its
        poll; the pushed answer reaches Prometheus with the target's type,
        and none of the link's headers or the target's hop-by-hop ones.
        """
        _, poll = self.poll()
        scrape = self.prometheus(b"http://node1.example:9182/metrics?x=1")
        instruction = answer(poll).body
        self.assertTrue(
            instruction.startswith(b"GET http://node1.example:9182/metrics?x=1 HTTP/1.1\r\n")
        )
        self.assertIn(b"X-Prometheus-Scrape-Timeout-Seconds: 4.500\r\n", instruction)
        self.port.request(b"POST", b"/push", pushBody(scrapeIdOf(instruction)))
        r = answer(scrape)
        self.assertEqual((r.status, r.body), (200, b"up 1\n"))
        self.assertEqual(r.headers[b"content-type"], b"text/plain; version=0.0.4")
        self.assertNotIn(b"x-prometheus-scrape-timeout", r.headers)
        self.assertNotIn(b"id", r.headers)
        self.assertNotIn(b"connection", r.headers)

    def test_https(self) -> None:
        """
        An https target (C{_scheme=https}, as PushProx users configure it)
        is asked of the client as PushProx's proxy asks: with
        C{_scheme=https}, which the client acts on.
        """
        _, poll = self.poll()
        self.prometheus(b"http://node1.example:9100/metrics?_scheme=https")
        self.assertTrue(
            answer(poll).body.startswith(
                b"GET http://node1.example:9100/metrics?_scheme=https HTTP/1.1\r\n"
            )
        )

    def test_routedIgnoringSpelling(self) -> None:
        """
        A scrape routes to the client whatever the case or final dot of
        its host, and is sent naming the host as the client spells it.
        """
        _, poll = self.poll(b"Node1.Example")
        self.prometheus(b"http://NODE1.example.:9100/metrics")
        self.assertTrue(
            answer(poll).body.startswith(b"GET http://Node1.Example:9100/metrics HTTP/1.1\r\n")
        )

    def test_askedAsWritten(self) -> None:
        """
        The client is sent the target as Prometheus wrote it, as PushProx's
        proxy sends it: no default port added, the query in its order with
        C{_scheme} where it was.
        """
        _, poll = self.poll()
        self.prometheus(b"http://node1.example/metrics?_scheme=https&a=1")
        lines = answer(poll).body.split(b"\r\n")
        self.assertEqual(
            lines[:2],
            [
                b"GET http://node1.example/metrics?_scheme=https&a=1 HTTP/1.1",
                b"Host: node1.example",
            ],
        )

    def test_noClient(self) -> None:
        """
        A host nobody serves: 404 at once, naming it.
        """
        r = answer(self.prometheus(b"http://other.example:9100/metrics"))
        self.assertEqual(r.status, 404)
        self.assertIn(b"other.example:9100", r.body)

    def test_standbyPromoted(self) -> None:
        """
        Two clients claiming one FQDN follow path ownership: the second
        waits; when the first is forgotten (no poll within its grace) the
        second holds it at once and Prometheus' scrapes go to it.
        """
        firstConnection, _ = self.poll()
        _, secondPoll = self.poll(host="10.9.9.9")
        first, second = self.hub.clients.values()
        self.assertEqual((first.role, second.role), ("holder", "standby"))
        self.assertEqual(self.registry.lookupHost(FQDN, 9100), (first,))
        firstConnection.connectionLost(Failure(ConnectionError("killed")))
        self.clock.advance(GRACE)
        self.assertEqual(second.role, "holder")
        self.assertEqual(self.registry.lookupHost(FQDN, 9100), (second,))
        scrape = self.prometheus(b"http://node1.example:9100/metrics")
        instruction = answer(secondPoll).body
        self.port.request(b"POST", b"/push", pushBody(scrapeIdOf(instruction)), host="10.9.9.9")
        self.assertEqual(answer(scrape).status, 200)

    def test_deadClientScrape(self) -> None:
        """
        Prometheus' scrape of a client whose poll closed fails within its
        deadline with the reason; none of it reaches a dead poll.
        """
        connection, poll = self.poll()
        connection.connectionLost(Failure(ConnectionError("killed")))
        scrape = self.prometheus(b"http://node1.example:9100/metrics")
        self.clock.advance(4.5)
        r = answer(scrape)
        self.assertEqual(r.status, 503)
        self.assertIn(b"no poll from PushProx client 'node1.example' within 4.5s", r.body)
        self.assertEqual(poll.value(), b"")

    def test_departed(self) -> None:
        """
        A client forgotten with no standby: its scrapes get 503 saying it
        left, as a departed agent's paths do.
        """
        connection, _ = self.poll()
        connection.connectionLost(Failure(ConnectionError("killed")))
        self.clock.advance(GRACE)
        r = answer(self.prometheus(b"http://node1.example:9100/metrics"))
        self.assertEqual(r.status, 503)
        self.assertIn(b"PushProx client 'node1.example' disconnected 0s ago", r.body)

    def test_hostHeaderNotCaptured(self) -> None:
        """
        A client registered under the proxy's own host name takes none of
        the proxy's own requests: an ordinary request whose Host names that
        host is path-routed (else the client would fetch it from the proxy,
        which would hand it to the client again).
        """
        _, poll = self.poll()
        connection, transport = connect(self.site, IPv4Address("TCP", "10.5.5.5", 50000))
        connection.dataReceived(b"GET /app_metrics HTTP/1.1\r\nHost: node1.example:8080\r\n\r\n")
        r = answer(transport)
        self.assertEqual(r.status, 404)
        self.assertIn(b"/app_metrics", r.body)
        self.assertEqual(poll.value(), b"")

    def test_proxyItselfNotScraped(self) -> None:
        """
        A client registered as C{localhost}, which always names the proxy's
        machine, serves that host's other ports; a scrape of the proxy's
        own port under it is refused, never sent to the client, which would
        fetch it from the proxy again.
        """
        _, poll = self.poll(b"localhost")
        r = answer(self.prometheus(b"http://localhost:8080/discovery"))
        self.assertEqual(r.status, 400)
        self.assertIn(b"localhost:8080 is this proxy's own address", r.body)
        self.assertEqual(poll.value(), b"")
        self.prometheus(b"http://localhost:9100/metrics")
        self.assertTrue(answer(poll).body.startswith(b"GET http://localhost:9100/metrics "))

    def test_recordedByClaim(self) -> None:
        """
        Scrapes of a client's ports are recorded by its claim, C{//fqdn}:
        one metric series per client, not per port asked for.
        """
        records: list[ScrapeRecord] = []
        self.scrapes.tracker.observers.append(records.append)
        for port in (b"1000", b"1001", b"1002"):
            _, poll = self.poll()
            self.prometheus(b"http://node1.example:" + port + b"/metrics")
            instruction = answer(poll).body
            self.port.request(b"POST", b"/push", pushBody(scrapeIdOf(instruction)))
        self.assertEqual([r.path for r in records], ["//node1.example"] * 3)


class AccessTests(HubCase):
    """
    Who may poll and push: networks and reloaded identities.
    """

    def test_allowedNetworks(self) -> None:
        """
        With C{proxy.pushprox.allowedNetworks}, polls and pushes from
        elsewhere get 403 naming the setting; /clients is the scrape
        side's.
        """
        self.hub = PushProxHub(
            self.registry,
            Authenticator(ProxySettings()),
            self.clock,
            pollHold=POLL_HOLD,
            clientGrace=GRACE,
            maxContentBytes=1000,
            metricsRegistry=MetricsRegistry(),
            transfers=ProxyMetrics("test", self.clock),
            allowedNetworks=("10.1.0.0/16",),
        )
        self.port = Port(self.hub, self.clock)
        _, held = self.poll(host="10.1.2.3")
        self.assertEqual(held.value(), b"")
        for method, path in [(b"POST", b"/poll"), (b"POST", b"/push")]:
            _, transport = self.port.request(method, path, FQDN.encode(), host="192.0.2.1")
            r = answer(transport)
            self.assertEqual(r.status, 403)
            self.assertIn(b"proxy.pushprox.allowedNetworks", r.body)
        _, transport = self.port.request(b"GET", b"/clients", host="192.0.2.1")
        self.assertEqual(answer(transport).status, 200)

    def test_revoked(self) -> None:
        """
        A reload that revokes a client's identity forgets the client at
        once: its poll expires, and its FQDN goes to a standby.
        """
        settings = ProxySettings(identities=(Identity("a", "tok-a"), Identity("b", "tok-b")))
        self.hub = self.makeHub(settings)
        self.port = Port(self.hub, self.clock)
        _, pollA = self.poll(headers=b"Authorization: Bearer tok-a\r\n")
        self.poll(headers=b"Authorization: Bearer tok-b\r\n")
        a, b = self.hub.clients.values()
        self.assertEqual((a.role, b.role), ("holder", "standby"))
        fresh = Authenticator(ProxySettings(identities=(Identity("b", "tok-b"),)))
        self.registry.stillHolds = fresh.stillHolds
        self.hub.revoked(fresh.stillHolds)
        self.assertEqual(answer(pollA).status, 408)
        self.assertEqual(list(self.hub.clients.values()), [b])
        self.assertEqual(b.role, "holder")


class OverlapTests(HubCase):
    def test_agentTakesClientsPort(self) -> None:
        """
        An agent's target on one port of a client's FQDN takes that port's
        scrapes from the client, whichever claimed first, and the proxy
        warns saying so; the client keeps every other port.
        """
        agent = FakeAgent("a1", hostName="10.3.3.3")
        self.registry.addAgent(agent)
        for first in ("client", "agent"):
            with capturedLogs() as events:
                if first == "agent":
                    self.registry.registerPath(agent, hostKey(FQDN, 9100), "t", {})
                self.poll()
                if first == "client":
                    self.registry.registerPath(agent, hostKey(FQDN, 9100), "t", {})
            client = next(c for c in self.hub.clients.values() if c.role == "holder")
            self.assertEqual(self.registry.lookupHost(FQDN, 9100), (agent,))
            self.assertEqual(self.registry.lookupHost(FQDN, 9182), (client,))
            (warning,) = [e for e in events if "serves target" in e["log_format"]]
            self.assertEqual(
                formatEvent(warning),
                f"agent {agent.name!r} on 10.3.3.3 serves target {FQDN}:9100, so its scrapes go"
                f" to it, not to PushProx client {client.described}, which serves {FQDN} on every"
                " other port: a claim on a port comes before a claim on every port of its host",
            )
            self.registry.unregisterPath(agent, hostKey(FQDN, 9100))
            self.hub.forgetClient(client, "test")


class ListedHostsTests(HubCase):
    def test_agentHostsListed(self) -> None:
        """
        C{/clients} lists the host of each C{host:port} an agent holds
        beside the clients' FQDNs, each host once and a client's as it
        spells it, so an SD job on it keeps a host whose client an agent
        replaced; path claims and standbys are not listed.
        """
        self.poll(b"Node1.Example")
        first = FakeAgent("a1", hostName="10.3.3.3")
        second = FakeAgent("a2", hostName="10.4.4.4")
        for agent in (first, second):
            self.registry.addAgent(agent)
        claims = [
            (first, hostKey("node1.example", 9182)),
            (first, hostKey("node2.example", 9100)),
            (first, hostKey("node2.example", 9182)),
            (first, hostKey("::1", 9100)),
            (first, "app"),
            (second, hostKey("node2.example", 9100)),
        ]
        for agent, key in claims:
            self.registry.registerPath(agent, key, key, {})
        _, transport = self.port.request(b"GET", b"/clients")
        self.assertEqual(
            [group["targets"] for group in json.loads(answer(transport).body)],
            [["::1"], ["Node1.Example"], ["node2.example"]],
        )
        self.registry.removeAgent(first)
        self.registry.removeAgent(second)
        self.assertEqual(self.hub.listedHosts(), ["Node1.Example"])


class TargetGlobTests(HubCase):
    def test_identityGlobs(self) -> None:
        """
        A client may claim only the FQDNs its identity's C{targets} globs
        match (against the FQDN alone: the claim is for every port); an
        identity limited to some paths claims no FQDN.
        """
        settings = ProxySettings(
            identities=(
                Identity("dc1", "tok-dc1", targets=("*.dc1.example",)),
                Identity("apps", "tok-apps", paths=("app*",)),
            )
        )
        self.hub = self.makeHub(settings)
        self.port = Port(self.hub, self.clock)
        dc1 = b"Authorization: Bearer tok-dc1\r\n"
        _, held = self.poll(b"node1.dc1.example", headers=dc1)
        self.assertEqual(held.value(), b"")
        for fqdn, headers in [
            (b"node1.dc2.example", dc1),
            (b"node1.dc1.example", b"Authorization: Bearer tok-apps\r\n"),
        ]:
            _, transport = self.poll(fqdn, headers=headers, host="10.7.7.7")
            r = answer(transport)
            self.assertEqual(r.status, 403, fqdn)
            self.assertIn(b"is not authorized to serve //" + fqdn, r.body)
        self.assertEqual(self.hub.servedFQDNs(), ["node1.dc1.example"])


class CredentialsTests(SynchronousTestCase):
    """
    The scrape side's credentials guard C{/clients} and proxy_url scrapes,
    not the polls and pushes, whose C{Authorization} is the client's.
    """

    def test_separate(self) -> None:
        clock = Clock()
        settings = ProxySettings(http_bearer_token="scrape-secret")
        authenticator = Authenticator(settings)
        registry = Registry(RESERVED_PATHS, authenticator.mayServe, settings, clock)
        hub = PushProxHub(
            registry,
            authenticator,
            clock,
            pollHold=POLL_HOLD,
            clientGrace=GRACE,
            maxContentBytes=1000,
            metricsRegistry=MetricsRegistry(),
            transfers=ProxyMetrics("test", clock),
        )
        guard = hub.guard(guarded(settings))
        site = factory(
            hub.front(ScrapeHandler(settings, registry, clock)),
            clock,
            bodies=hub.bodyLimit,
            guard=guard,
        )
        port = Port(hub, clock)
        port.site = site
        _, poll = port.request(b"POST", b"/poll", FQDN.encode())
        self.assertEqual(poll.value(), b"")
        _, clients = port.request(b"GET", b"/clients")
        self.assertEqual(answer(clients).status, 401)
        _, clients = port.request(
            b"GET", b"/clients", headers=b"Authorization: Bearer scrape-secret\r\n"
        )
        self.assertEqual(answer(clients).status, 200)
        connection, scrape = connect(site)
        connection.dataReceived(b"GET http://node1.example:9100/metrics HTTP/1.1\r\n\r\n")
        # (A proxy_url request proves the credentials in Proxy-Authorization.)
        self.assertEqual(answer(scrape).status, 407)
        self.assertEqual(poll.value(), b"")
