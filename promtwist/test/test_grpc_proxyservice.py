"""
The agent port's C{ProxyService} (L{promtwist.proxy.grpcagent}) called by a
real gRPC client, grpcio with upstream's generated messages, on a proxy
built by L{buildProxy} on loopback: each call, and each refusal.

grpcio blocks and runs its own threads: every call is made in the
reactor's thread pool, and every channel is closed there after the test.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from promtwist.config.settings import Identity, ProxySettings
from promtwist.grpc import proxy_service_pb2 as pb
from promtwist.proxy.build import buildAgentSide, buildProxy
from promtwist.proxy.grpcagent import GrpcAgent
from promtwist.proxy.relay import ScrapeCall
from promtwist.proxy.server import ProxyService
from promtwist.test.upstreamchunks import chunkedResult


class _Client:
    """
    One grpcio channel (its own HTTP/2 connection) to the agent port.
    """

    def __init__(self, port: int, token: str = "") -> None:
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.metadata = (("agent-token", token),) if token else ()

    def unary(self, name: str, request: Any, response: type[Any]) -> Deferred[Any]:
        stub = self.channel.unary_unary(
            f"/ProxyService/{name}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        return deferToThread(stub, request, metadata=self.metadata, timeout=10)

    def withCall(self, name: str, request: Any, response: type[Any]) -> Deferred[Any]:
        stub = self.channel.unary_unary(
            f"/ProxyService/{name}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        return deferToThread(stub.with_call, request, metadata=self.metadata, timeout=10)

    def requests(self, agentId: str) -> Any:
        stub = self.channel.unary_stream(
            "/ProxyService/readRequestsFromProxy",
            request_serializer=pb.AgentInfo.SerializeToString,
            response_deserializer=pb.ScrapeRequest.FromString,
        )
        return stub(pb.AgentInfo(agent_id=agentId), metadata=self.metadata)

    def write(self, name: str, messages: Iterable[Any]) -> Deferred[Any]:
        stub = self.channel.stream_unary(
            f"/ProxyService/{name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.Empty.FromString,
        )
        return deferToThread(stub, iter(messages), metadata=self.metadata, timeout=10)

    def close(self) -> Deferred[None]:
        return deferToThread(self.channel.close)


class ProxyServiceTests(TestCase):
    timeout = 60

    def startProxy(self, **settings: Any) -> ProxyService:
        settings.setdefault("http_port", 0)
        settings.setdefault("agent_port", 0)
        self.proxy = buildProxy(ProxySettings(**settings), reactor, interface="127.0.0.1")
        self.proxy.startService()
        self.addCleanup(self.proxy.stopService)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = Agent(reactor, pool=pool)
        return self.proxy

    def client(self, token: str = "") -> _Client:
        client = _Client(self.proxy.agentListener.portNumber, token)
        self.addCleanup(client.close)
        return client

    async def connected(self, client: _Client, *paths: str, disabled: bool = False) -> str:
        """
        Connect in either of upstream's modes, register the agent and
        C{paths}; the agent id.
        """
        if disabled:
            info = await client.unary(
                "connectAgentWithTransportFilterDisabled", pb.Empty(), pb.AgentInfo
            )
            agentId: str = info.agent_id
        else:
            _, call = await client.withCall("connectAgent", pb.Empty(), pb.Empty)
            agentId = dict(call.initial_metadata())["agent-id"]
        answer = await client.unary(
            "registerAgent",
            pb.RegisterAgentRequest(agent_id=agentId, agent_name="a", host_name="h"),
            pb.RegisterAgentResponse,
        )
        self.assertTrue(answer.valid, answer.reason)
        for path in paths:
            reply = await client.unary(
                "registerPath",
                pb.RegisterPathRequest(agent_id=agentId, path=path, labels="{}"),
                pb.RegisterPathResponse,
            )
            self.assertTrue(reply.valid, reply.reason)
        return agentId

    async def refusedWith(self, call: Deferred[Any]) -> tuple[grpc.StatusCode, str]:
        try:
            await call
        except grpc.RpcError as e:
            return e.code(), e.details()
        self.fail("the call was not refused")

    async def answer(self, client: _Client, agentId: str, scrapeId: int, text: str) -> None:
        """
        Answer scrape C{scrapeId} with C{text} on writeResponsesToProxy.
        """
        await client.write(
            "writeResponsesToProxy",
            [
                pb.ScrapeResponse(
                    valid_response=True,
                    agent_id=agentId,
                    scrape_id=scrapeId,
                    status_code=200,
                    content_type="text/plain",
                    content_as_text=text,
                )
            ],
        )

    async def scrape(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/{path}".encode()
        response = await self.http.request(b"GET", url)
        return response.code, await readBody(response)

    # connect

    async def test_connectAgentSendsItsIdOnEveryCall(self) -> None:
        """
        connectAgent's headers carry the connection's agent id, random and
        at least 128 bits; every later call's headers carry the same.
        """
        self.startProxy()
        client = self.client()
        _, call = await client.withCall("connectAgent", pb.Empty(), pb.Empty)
        agentId = dict(call.initial_metadata())["agent-id"]
        self.assertGreaterEqual(len(agentId), 22)
        self.assertFalse(agentId.isdigit())
        _, again = await client.withCall(
            "pathMapSize", pb.PathMapSizeRequest(), pb.PathMapSizeResponse
        )
        self.assertEqual(dict(again.initial_metadata())["agent-id"], agentId)
        other = self.client()
        _, third = await other.withCall("connectAgent", pb.Empty(), pb.Empty)
        self.assertNotEqual(dict(third.initial_metadata())["agent-id"], agentId)

    async def test_secondConnectOnOneConnection(self) -> None:
        """
        A second connectAgent on one connection (a front end multiplexing
        agents) is refused, naming the setting that fixes it.
        """
        self.startProxy()
        client = self.client()
        await client.unary("connectAgent", pb.Empty(), pb.Empty)
        code, details = await self.refusedWith(client.unary("connectAgent", pb.Empty(), pb.Empty))
        self.assertEqual(code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("transportFilterDisabled", details)

    async def test_connectWithTransportFilterDisabled(self) -> None:
        """
        The disabled mode's id comes in the body, random, unlike the
        connection's.
        """
        self.startProxy()
        client = self.client()
        info, call = await client.withCall(
            "connectAgentWithTransportFilterDisabled", pb.Empty(), pb.AgentInfo
        )
        self.assertGreaterEqual(len(info.agent_id), 22)
        self.assertNotEqual(info.agent_id, dict(call.initial_metadata())["agent-id"])

    # tokens

    async def test_burstFromOneAddress(self) -> None:
        """
        Many gRPC connections at once from one address (a front end's, one
        per call) are all served: the native per-address handshake share
        does not apply to them (the reviewer's C{t_nginx_burst.py}: 502s
        and native Reject frames read as HTTP/2).
        """
        self.startProxy(max_pending_handshakes_per_address=2)
        clients = [self.client() for _ in range(12)]
        answers = await gatherResults(
            [
                client.unary("pathMapSize", pb.PathMapSizeRequest(), pb.PathMapSizeResponse)
                for client in clients
            ]
        )
        self.assertEqual([a.path_count for a in answers], [0] * 12)

    async def test_token(self) -> None:
        """
        With proxy.agentToken, every call without the token, or with
        another, is UNAUTHENTICATED with upstream's words; with it, served.
        """
        # The throttle of failed tokens per address is the native port's too.
        self.startProxy(agent_token="s3cret", max_auth_failures_per_address=100)
        for client in (self.client(), self.client("wrong")):
            for name, request, response in (
                ("connectAgent", pb.Empty(), pb.Empty),
                ("pathMapSize", pb.PathMapSizeRequest(), pb.PathMapSizeResponse),
                ("sendHeartBeat", pb.HeartBeatRequest(agent_id="x"), pb.HeartBeatResponse),
            ):
                self.assertEqual(
                    await self.refusedWith(client.unary(name, request, response)),
                    (grpc.StatusCode.UNAUTHENTICATED, "Missing or invalid agent token"),
                )
        await self.connected(self.client("s3cret"), "m")
        self.assertEqual(len(self.proxy.registry.lookup("m")), 1)

    # registration

    async def test_throttleSparesEstablishedAgents(self) -> None:
        """
        Failed tokens from an address (behind a front end, every agent's)
        throttle new authentications only, as the native port's Hello: an
        agent that connected keeps heartbeating and answering scrapes, a
        new connect is refused saying it is throttled, not that its token
        is invalid, and that refusal is counted.
        """
        self.startProxy(agent_token="s3cret", max_auth_failures_per_address=2)
        client, agentId, requests = await self.serving("m", disabled=True, token="s3cret")
        wrong = self.client("wrong")
        for _ in range(2):
            await self.refusedWith(
                wrong.unary("pathMapSize", pb.PathMapSizeRequest(), pb.PathMapSizeResponse)
            )
        beat = await client.unary(
            "sendHeartBeat", pb.HeartBeatRequest(agent_id=agentId), pb.HeartBeatResponse
        )
        self.assertTrue(beat.valid, beat.reason)
        scraped = Deferred.fromCoroutine(self.scrape("m"))
        request = await deferToThread(next, requests)
        await self.answer(client, agentId, request.scrape_id, "up 1\n")
        self.assertEqual(await scraped, (200, b"up 1\n"))
        code, details = await self.refusedWith(
            self.client("s3cret").unary(
                "connectAgentWithTransportFilterDisabled", pb.Empty(), pb.AgentInfo
            )
        )
        self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn("too many failed authentication attempts from 127.0.0.1", details)
        self.assertIn("proxy.internal.maxAuthFailuresPerAddress", details)
        sample = self.proxy.metrics.registry.get_sample_value
        self.assertEqual(sample("proxy_rejections_total", {"reason": "grpc_throttled"}), 1.0)
        self.assertEqual(sample("proxy_rejections_total", {"reason": "grpc_unauthenticated"}), 2)

    async def test_throttleTellsNothingOfTokens(self) -> None:
        """
        While an address is throttled, a call naming a live agent passes
        only if it proves that agent's identity: a wrong token, no token, or
        another identity's valid token, on a fresh connection or on one that
        carries the agent, all get the throttled answer, as a new connect
        does, and count as failures (the reviewer's C{t_oracle3.py}: the
        answers told a valid token of another identity from a wrong one).
        """
        self.startProxy(
            identities=(Identity("a", "ta"), Identity("b", "tb")),
            max_auth_failures_per_address=2,
        )
        unbound = await self.connected(self.client("ta"), disabled=True)
        carrier = self.client("ta")
        bound = await self.connected(carrier)
        wrong = self.client("wrong")
        for _ in range(2):
            await self.refusedWith(
                wrong.unary("pathMapSize", pb.PathMapSizeRequest(), pb.PathMapSizeResponse)
            )
        connect = await self.refusedWith(
            self.client("tb").unary(
                "connectAgentWithTransportFilterDisabled", pb.Empty(), pb.AgentInfo
            )
        )
        self.assertEqual(connect[0], grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn("too many failed authentication attempts from 127.0.0.1", connect[1])
        answers = []
        for token in ("junk", "", "tb"):
            for client in (self.client(token), carrier):
                client.metadata = (("agent-token", token),) if token else ()
                for agentId in (unbound, bound):
                    for name, request, response in (
                        (
                            "sendHeartBeat",
                            pb.HeartBeatRequest(agent_id=agentId),
                            pb.HeartBeatResponse,
                        ),
                        (
                            "pathMapSize",
                            pb.PathMapSizeRequest(agent_id=agentId),
                            pb.PathMapSizeResponse,
                        ),
                    ):
                        code, details = await self.refusedWith(
                            client.unary(name, request, response)
                        )
                        # The seconds left may differ by one.
                        answers.append((code, details.split("; retry in")[0]))
        self.assertEqual(set(answers), {(connect[0], connect[1].split("; retry in")[0])})
        carrier.metadata = (("agent-token", "ta"),)
        for agentId in (unbound, bound):
            beat = await carrier.unary(
                "sendHeartBeat", pb.HeartBeatRequest(agent_id=agentId), pb.HeartBeatResponse
            )
            self.assertTrue(beat.valid, beat.reason)
        beat = await self.client("ta").unary(
            "sendHeartBeat", pb.HeartBeatRequest(agent_id=unbound), pb.HeartBeatResponse
        )
        self.assertTrue(beat.valid, beat.reason)
        sample = self.proxy.metrics.registry.get_sample_value
        self.assertEqual(
            sample("proxy_rejections_total", {"reason": "grpc_throttled"}), 1.0 + len(answers)
        )
        self.assertEqual(sample("proxy_rejections_total", {"reason": "grpc_unauthenticated"}), 2)

    async def test_registerAgentRefusals(self) -> None:
        """
        registerAgent for an id no one was given, or another connection's,
        is valid=false, as are paths before registerAgent.
        """
        self.startProxy()
        client = self.client()
        _, call = await client.withCall("connectAgent", pb.Empty(), pb.Empty)
        agentId = dict(call.initial_metadata())["agent-id"]
        unknown = await client.unary(
            "registerAgent", pb.RegisterAgentRequest(agent_id="nobody"), pb.RegisterAgentResponse
        )
        self.assertFalse(unknown.valid)
        self.assertIn("Invalid agentId: nobody (registerAgent)", unknown.reason)
        early = await client.unary(
            "registerPath",
            pb.RegisterPathRequest(agent_id=agentId, path="m", labels="{}"),
            pb.RegisterPathResponse,
        )
        self.assertEqual((early.valid, early.path_id), (False, -1))
        self.assertIn("registerAgent", early.reason)
        other = self.client()
        await other.unary("connectAgent", pb.Empty(), pb.Empty)
        stolen = await other.unary(
            "registerAgent", pb.RegisterAgentRequest(agent_id=agentId), pb.RegisterAgentResponse
        )
        self.assertFalse(stolen.valid)
        self.assertIn("does not match the connection's agentId (registerAgent)", stolen.reason)

    async def test_registerPath(self) -> None:
        """
        registerPath answers the proxy-wide count and a fresh path id;
        refuses several segments and labels that are not a JSON object of
        strings, naming what is wrong; unregisterPath removes a path and
        refuses one the agent does not hold; pathMapSize counts.
        """
        self.startProxy()
        client = self.client()
        agentId = await self.connected(client)

        async def register(path: str, labels: str = "{}") -> Any:
            return await client.unary(
                "registerPath",
                pb.RegisterPathRequest(agent_id=agentId, path=path, labels=labels),
                pb.RegisterPathResponse,
            )

        first, second = await register("a", '{"team": "x"}'), await register("b")
        self.assertEqual((first.valid, first.path_count), (True, 1))
        self.assertEqual((second.valid, second.path_count), (True, 2))
        self.assertNotEqual(first.path_id, second.path_id)
        self.assertEqual(self.proxy.registry.snapshot()[0].labels, {"team": "x"})
        deep = await register("a/b")
        self.assertEqual((deep.valid, deep.path_id), (False, -1))
        self.assertIn("Multi-segment path not supported", deep.reason)
        for labels in ("not json", '["a"]', '{"n": 1}'):
            bad = await register("c", labels)
            self.assertFalse(bad.valid)
            self.assertIn("labels", bad.reason)
        size = await client.unary("pathMapSize", pb.PathMapSizeRequest(), pb.PathMapSizeResponse)
        self.assertEqual(size.path_count, 2)
        gone = await client.unary(
            "unregisterPath",
            pb.UnregisterPathRequest(agent_id=agentId, path="b"),
            pb.UnregisterPathResponse,
        )
        self.assertTrue(gone.valid, gone.reason)
        again = await client.unary(
            "unregisterPath",
            pb.UnregisterPathRequest(agent_id=agentId, path="b"),
            pb.UnregisterPathResponse,
        )
        self.assertFalse(again.valid)
        self.assertIn("Unable to remove path /b", again.reason)
        self.assertEqual(self.proxy.registry.lookup("b"), ())

    async def test_heartbeat(self) -> None:
        """
        sendHeartBeat is valid for a known agent, and says upstream's words
        for an unknown one.
        """
        self.startProxy()
        client = self.client()
        agentId = await self.connected(client)
        known = await client.unary(
            "sendHeartBeat", pb.HeartBeatRequest(agent_id=agentId), pb.HeartBeatResponse
        )
        self.assertTrue(known.valid)
        unknown = await client.unary(
            "sendHeartBeat", pb.HeartBeatRequest(agent_id="gone"), pb.HeartBeatResponse
        )
        self.assertFalse(unknown.valid)
        self.assertIn("Invalid agentId: gone (sendHeartBeat)", unknown.reason)

    async def exhausted(self, client: _Client, connects: int) -> str:
        """
        C{connects} connects without registering are served, the next is
        RESOURCE_EXHAUSTED: its details.
        """
        for _ in range(connects):
            await client.unary("connectAgentWithTransportFilterDisabled", pb.Empty(), pb.AgentInfo)
        code, details = await self.refusedWith(
            client.unary("connectAgentWithTransportFilterDisabled", pb.Empty(), pb.AgentInfo)
        )
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        return details

    async def test_unregisteredConnectsBounded(self) -> None:
        """
        Agents connected and not registered are bounded as the native
        port's handshakes are: past proxy.internal.maxPendingHandshakes a
        connect is RESOURCE_EXHAUSTED, naming the setting.
        """
        self.startProxy(max_pending_handshakes=2)
        details = await self.exhausted(self.client(), 2)
        self.assertIn("proxy.internal.maxPendingHandshakes", details)

    async def test_unregisteredNotKeptAlive(self) -> None:
        """
        An agent that connected and never registered is not kept alive by
        heartbeats (they are invalid, saying why), and is dropped at
        proxy.internal.handshakeTimeoutSecs, as a native link without its
        Hello: one token holder cannot keep pending places for ever.
        """
        self.startProxy(handshake_timeout_secs=0.5)
        client = self.client()
        info = await client.unary(
            "connectAgentWithTransportFilterDisabled", pb.Empty(), pb.AgentInfo
        )
        beat = await client.unary(
            "sendHeartBeat", pb.HeartBeatRequest(agent_id=info.agent_id), pb.HeartBeatResponse
        )
        self.assertFalse(beat.valid)
        self.assertIn("has not called registerAgent (sendHeartBeat)", beat.reason)
        grpcAgents = self.proxy.grpcAgents
        assert grpcAgents is not None
        self.assertEqual(len(grpcAgents.agents()), 1)
        await _until(lambda: not grpcAgents.agents())
        late = await client.unary(
            "registerAgent",
            pb.RegisterAgentRequest(agent_id=info.agent_id, agent_name="a"),
            pb.RegisterAgentResponse,
        )
        self.assertFalse(late.valid)
        self.assertIn("Invalid agentId", late.reason)
        # An agent that registers in time stays.
        await self.connected(client, disabled=True)
        await deferLater(reactor, 0.7)
        self.assertEqual(len(grpcAgents.connected()), 1)

    async def test_pendingBoundPerSource(self) -> None:
        """
        One identity on one address may hold at most seven eighths of
        proxy.internal.maxPendingHandshakes with agents that have not
        registered: another identity still connects.
        """
        self.startProxy(
            max_pending_handshakes=8, identities=(Identity("a", "ta"), Identity("b", "tb"))
        )
        details = await self.exhausted(self.client("ta"), 7)
        self.assertIn("7 gRPC agents of identity a from 127.0.0.1", details)
        self.assertIn("proxy.internal.maxPendingHandshakes (8)", details)
        await self.connected(self.client("tb"), disabled=True)

    async def test_evicted(self) -> None:
        """
        An agent silent for maxAgentInactivitySecs is evicted: its paths
        leave, its heartbeat is then invalid, and eviction is counted.
        """
        self.startProxy(max_agent_inactivity_secs=0.5, stale_agent_check_pause_secs=0.1)
        client = self.client()
        agentId = await self.connected(client, "m", disabled=True)
        await _until(lambda: not self.proxy.registry.lookup("m"))
        beat = await client.unary(
            "sendHeartBeat", pb.HeartBeatRequest(agent_id=agentId), pb.HeartBeatResponse
        )
        self.assertFalse(beat.valid)
        # Why it left; not the L7 hint, since it runs in the mode that hint
        # asks for.
        self.assertIn("(sendHeartBeat); it left: evicted: nothing heard for", beat.reason)
        self.assertNotIn("transportFilterDisabled", beat.reason)
        self.assertEqual(
            self.proxy.metrics.registry.get_sample_value("proxy_eviction_count_total"), 1.0
        )

    async def test_boundAgentNamedElsewhere(self) -> None:
        """
        A call on another connection naming a connectAgent agent whose own
        connection closed (a front end opening a connection per call) gets
        the L7 hint, where it holds; a never-known id gets none.
        """
        self.startProxy()
        first = self.client()
        agentId = await self.connected(first)
        await first.close()
        await _until(lambda: not self.proxy.registry.agentCount())
        other = self.client()
        beat = await other.unary(
            "sendHeartBeat", pb.HeartBeatRequest(agent_id=agentId), pb.HeartBeatResponse
        )
        self.assertFalse(beat.valid)
        self.assertIn("it left: its HTTP/2 connection closed", beat.reason)
        self.assertIn("must run with transportFilterDisabled=true", beat.reason)
        unknown = await other.unary(
            "sendHeartBeat", pb.HeartBeatRequest(agent_id="never"), pb.HeartBeatResponse
        )
        self.assertEqual(unknown.reason, "Invalid agentId: never (sendHeartBeat)")

    async def test_evictedWithStaleCheckOff(self) -> None:
        """
        With proxy.internal.staleAgentCheckEnabled false, an agent bound to
        no connection is still evicted, as upstream evicts it; one bound to
        its connection is not.
        """
        self.startProxy(
            stale_agent_check_enabled=False,
            max_agent_inactivity_secs=0.5,
            stale_agent_check_pause_secs=0.1,
        )
        await self.connected(self.client(), "bound")
        await self.connected(self.client(), "unbound", disabled=True)
        await _until(lambda: not self.proxy.registry.lookup("unbound"))
        self.assertEqual(len(self.proxy.registry.lookup("bound")), 1)

    async def test_identityRevokedOnReload(self) -> None:
        """
        A reload that revokes an agent's identity drops the agent: its
        paths leave, and its request stream ends so that it reconnects.
        """
        fresh = ProxySettings(http_port=0, agent_port=0, identities=(Identity("b", "tb"),))
        self.proxy = buildProxy(
            ProxySettings(http_port=0, agent_port=0, identities=(Identity("a", "ta"),)),
            reactor,
            interface="127.0.0.1",
            reloadSettings=lambda warn: fresh,
        )
        self.proxy.startService()
        self.addCleanup(self.proxy.stopService)
        client = self.client("ta")
        agentId = await self.connected(client, "m")
        requests = client.requests(agentId)
        self.addCleanup(requests.cancel)
        await _until(
            lambda: self.proxy.grpcAgents is not None and bool(self.proxy.grpcAgents.connected())
        )
        await self.proxy.reload()
        self.assertEqual(self.proxy.registry.lookup("m"), ())
        # The stream ended OK, with nothing more sent.
        self.assertEqual(await deferToThread(list, requests), [])

    # the request stream and results

    async def test_readRequestsRefusals(self) -> None:
        """
        readRequestsFromProxy for an unknown id is NOT_FOUND, for another
        connection's agent PERMISSION_DENIED, as upstream answers.
        """
        self.startProxy()
        owner = self.client()
        agentId = await self.connected(owner)
        stranger = self.client()
        await stranger.unary("connectAgent", pb.Empty(), pb.Empty)
        for client, wanted, code, words in (
            (stranger, "nobody", grpc.StatusCode.NOT_FOUND, "No AgentContext found for agentId"),
            (stranger, agentId, grpc.StatusCode.PERMISSION_DENIED, "does not match"),
        ):
            stream = client.requests(wanted)
            refused = await self.refusedWith(deferToThread(next, stream))
            self.assertEqual(refused[0], code)
            self.assertIn(words, refused[1])

    async def serving(
        self, *paths: str, disabled: bool = False, token: str = ""
    ) -> tuple[_Client, str, Any]:
        client = self.client(token)
        agentId = await self.connected(client, *paths, disabled=disabled)
        requests = client.requests(agentId)
        self.addCleanup(requests.cancel)
        return client, agentId, requests

    async def test_scrapeAnsweredInText(self) -> None:
        """
        A scrape goes down readRequestsFromProxy with its path, query,
        Accept and Authorization; the text answer on writeResponsesToProxy
        is the scrape's body. The per-kind gauge counts the agent.
        """
        self.startProxy()
        client, agentId, requests = await self.serving("m", disabled=True)
        scraped = Deferred.fromCoroutine(self.scrape("m?a=1"))
        request = await deferToThread(next, requests)
        self.assertEqual(
            (request.agent_id, request.path, request.encodedQueryParams), (agentId, "m", "a=1")
        )
        await self.answer(client, agentId, request.scrape_id, "up 1\n")
        self.assertEqual(await scraped, (200, b"up 1\n"))
        self.assertEqual(
            self.proxy.metrics.registry.get_sample_value("proxy_agents", {"kind": "grpc"}), 1.0
        )
        self.assertEqual(
            self.proxy.metrics.registry.get_sample_value("proxy_agents", {"kind": "promtwist"}), 0.0
        )

    async def test_resultForAnotherAgentDropped(self) -> None:
        """
        A result naming a scrape id issued to another agent is dropped: the
        scrape gets its own agent's answer.
        """
        self.startProxy()
        client, agentId, requests = await self.serving("m")
        other = self.client()
        otherId = await self.connected(other)
        scraped = Deferred.fromCoroutine(self.scrape("m"))
        request = await deferToThread(next, requests)

        def answer(agent: str, text: str) -> pb.ScrapeResponse:
            return pb.ScrapeResponse(
                valid_response=True,
                agent_id=agent,
                scrape_id=request.scrape_id,
                status_code=200,
                content_as_text=text,
            )

        await other.write("writeResponsesToProxy", [answer(otherId, "forged 1\n")])
        await other.write("writeResponsesToProxy", [answer(agentId, "forged 2\n")])
        await client.write("writeResponsesToProxy", [answer(agentId, "real 1\n")])
        self.assertEqual(await scraped, (200, b"real 1\n"))

    async def chunked(
        self, body: bytes, corrupt: Callable[[int, int], int] = lambda n, c: c
    ) -> tuple[int, bytes]:
        self.startProxy()
        client, agentId, requests = await self.serving("m")
        scraped = Deferred.fromCoroutine(self.scrape("m"))
        request = await deferToThread(next, requests)
        zipped = zlib.compress(body, wbits=31)
        messages = chunkedResult(request.scrape_id, zipped, agentId, 1000, corrupt=corrupt)
        await client.write("writeChunkedResponsesToProxy", messages)
        return await scraped

    async def test_chunked(self) -> None:
        """
        A chunked gzip result is the scrape's body, byte for byte.
        """
        body = b"".join(b'm{i="%d"} %d\n' % (i, i * 7919 % 1000) for i in range(3000))
        self.assertEqual(await self.chunked(body), (200, body))

    async def test_transferPurgedWhenScrapeTimesOut(self) -> None:
        """
        A transfer whose scrape timed out holds nothing, while its call
        stays open and sends no more: purged when the scrape ended.
        """
        self.startProxy(scrape_request_timeout_secs=0.5)
        client, agentId, requests = await self.serving("m", disabled=True)
        scraped = Deferred.fromCoroutine(self.scrape("m"))
        request = await deferToThread(next, requests)
        messages = chunkedResult(request.scrape_id, b"x" * 100000, agentId, 1000)
        gate = threading.Event()
        self.addCleanup(gate.set)

        def held() -> Iterator[pb.ChunkedScrapeResponse]:
            yield from messages[:-1]
            gate.wait(10)

        stub = client.channel.stream_unary(
            "/ProxyService/writeChunkedResponsesToProxy",
            request_serializer=pb.ChunkedScrapeResponse.SerializeToString,
            response_deserializer=pb.Empty.FromString,
        )
        call = stub.future(held(), metadata=client.metadata, timeout=10)
        grpcAgents = self.proxy.grpcAgents
        assert grpcAgents is not None
        transfers = grpcAgents.transfers
        await _until(lambda: transfers.budget.held == 100000)
        code, _ = await scraped
        self.assertEqual(code, 503)
        self.assertEqual((len(transfers), transfers.budget.held), (0, 0))
        gate.set()
        await deferToThread(call.result)

    async def test_chunkChecksumMismatch(self) -> None:
        """
        A chunk whose running CRC32 is wrong fails the scrape with 502
        naming the checksum, and upstream's counter counts the stage.
        """
        body = b"".join(b'm{i="%d"} %d\n' % (i, i * 7919 % 1000) for i in range(3000))
        code, text = await self.chunked(body, lambda n, c: c + 1 if n == 2 else c)
        self.assertEqual(code, 502)
        self.assertIn(b"Chunk validation failed: checksum mismatch at chunk 2", text)
        self.assertEqual(
            self.proxy.metrics.registry.get_sample_value(
                "proxy_chunk_validation_failures_total", {"stage": "chunk"}
            ),
            1.0,
        )

    async def test_requestStreamEndRemovesAgent(self) -> None:
        """
        When the agent's readRequestsFromProxy ends, it leaves the registry.
        """
        self.startProxy()
        _, _, requests = await self.serving("m", disabled=True)
        await _until(
            lambda: self.proxy.grpcAgents is not None and bool(self.proxy.grpcAgents.connected())
        )
        requests.cancel()
        await _until(lambda: not self.proxy.registry.lookup("m"))

    async def test_stopEndsStreamsWithAStatus(self) -> None:
        """
        When the proxy stops, an agent's request stream ends OK and its open
        result stream UNAVAILABLE "the proxy is shutting down", both before
        the reactor could stop (the reviewer's C{t_stop.py}: both saw
        "Stream removed").
        """
        self.startProxy()
        client = self.client()
        agentId = await self.connected(client, "m")
        reading = deferToThread(list, client.requests(agentId))
        gate = threading.Event()

        def results() -> Iterator[pb.ScrapeResponse]:
            gate.wait(10)
            yield from ()

        writing = client.write("writeResponsesToProxy", results())
        self.addCleanup(gate.set)
        server = self.proxy.agentPort.grpc
        assert server is not None
        await _until(lambda: sum(len(p._streams) for p in server.connections) == 2)
        await self.proxy.stopService()
        self.assertEqual(await reading, [])
        code, details = await self.refusedWith(writing)
        self.assertEqual(
            (code, details), (grpc.StatusCode.UNAVAILABLE, "the proxy is shutting down")
        )
        self.assertEqual(server.connections, set())


class _UnreadRequests:
    """
    An agent's readRequestsFromProxy call whose agent reads nothing: each
    send waits until the test lets it go.
    """

    cancelled = False

    def __init__(self) -> None:
        self.sends: list[tuple[pb.ScrapeRequest, Deferred[None]]] = []

    def send(self, request: pb.ScrapeRequest) -> Deferred[None]:
        sent: Deferred[None] = Deferred()
        self.sends.append((request, sent))
        return sent


class RequestQueueTests(SynchronousTestCase):
    def test_oneRequestAtATime(self) -> None:
        """
        Scrape requests go down an agent's request stream one at a time,
        each once the one before has gone: for an agent that does not read,
        the proxy holds the requests of scrapes still waiting, and drops a
        forgotten scrape's before it is sent (the review's slow-reader
        suspicion: every request was queued on the stream at once).
        """
        side = buildAgentSide(ProxySettings(), Clock())
        assert side.grpc is not None
        agent = GrpcAgent(side.grpc, "a1", Identity("t"), "peer", "identity t from peer", None)
        requests = _UnreadRequests()
        done = agent.readRequests(requests)  # type: ignore[arg-type]
        call = ScrapeCall("m", "", "", "", "", 10.0)
        streams = [agent.scrape(call) for _ in range(3)]
        self.assertEqual(len(requests.sends), 1)
        agent.forget(streams[1].scrapeId)
        requests.sends[0][1].callback(None)
        self.assertEqual(
            [request.scrape_id for request, _ in requests.sends],
            [streams[0].scrapeId, streams[2].scrapeId],
        )
        requests.sends[1][1].callback(None)
        self.assertEqual(len(requests.sends), 2)
        agent.leave("the test is over")
        self.successResultOf(done)
        for stream in (streams[0], streams[2]):
            self.failureResultOf(stream.head)


class DisabledTests(TestCase):
    async def test_grpcOff(self) -> None:
        """
        With proxy.agent.grpcEnabled false, a gRPC client on the agent port
        does not get through: the port is the native link's alone.
        """
        proxy = buildProxy(
            ProxySettings(http_port=0, agent_port=0, agent_grpc_enabled=False),
            reactor,
            interface="127.0.0.1",
        )
        proxy.startService()
        self.addCleanup(proxy.stopService)
        self.assertIsNone(proxy.grpcAgents)
        client = _Client(proxy.agentListener.portNumber)
        self.addCleanup(client.close)
        try:
            await client.unary("pathMapSize", pb.PathMapSizeRequest(), pb.PathMapSizeResponse)
        except grpc.RpcError as e:
            self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE)
        else:
            self.fail("served with gRPC agents off")


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    from twisted.internet.task import deferLater

    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await deferLater(reactor, 0.05)
    raise AssertionError("condition not met in time")
