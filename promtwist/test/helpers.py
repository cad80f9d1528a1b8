"""
Small helpers several test modules share.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from promtwist.agent.build import buildAgent
from promtwist.config.settings import AgentSettings, PathConfig, ProxyEndpoint, ProxySettings
from promtwist.proxy.build import buildAgentSide, buildProxy
from promtwist.proxy.link import AgentLinkFactory

MiB = 1024 * 1024


# Why the agent port refuses a connection before reading it: the reasons
# under which proxy_rejections_total counts those refusals.
CONNECTION_REFUSALS = (
    "pending_handshakes",
    "pending_handshakes_per_address",
    "waiting_handshakes",
    "handshake_wait_timeout",
)


def rejections(factory: AgentLinkFactory, *reasons: str) -> float:
    """
    What C{factory}'s metrics counted under C{reasons} of
    C{proxy_rejections_total}.
    """
    registry = factory.metrics.registry
    return sum(
        registry.get_sample_value("proxy_rejections_total", {"reason": reason}) or 0.0
        for reason in reasons
    )


def agentLinkFactory(
    settings: ProxySettings, clock: IReactorTime, reservedPaths: Iterable[str] = ()
) -> AgentLinkFactory:
    """
    The agent port's factory as the proxy builds it (with its registry,
    authenticator and metrics), for tests of the links alone.
    """
    return buildAgentSide(settings, clock, reservedPaths).links


def sourceTreeFile(relative: str) -> str:
    """
    A file of the source tree outside the package (C{examples/...}): the
    one beside this module, or, when the package is installed (as
    scripts/test runs it), in the tree trial was started in: trial works in
    C{_trial_temp} inside it (C{_trial_temp/N} with C{-j}).

    @raise FileNotFoundError: when neither has it.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    cwd = os.getcwd()
    trialTemp = os.path.dirname(cwd)
    roots = (os.path.join(here, os.pardir, os.pardir), cwd, trialTemp, os.path.dirname(trialTemp))
    for root in roots:
        candidate = os.path.normpath(os.path.join(root, relative))
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"{relative} is neither beside {here} nor in {os.getcwd()}")


def rss() -> int:
    """
    This process's resident memory in bytes, for the attack tests' bounds
    on what an attacker can make the proxy hold.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def eventually(
    case: TestCase, check: Callable[[], bool], what: str, seconds: float = 5.0
) -> None:
    """
    Wait in the reactor, at most C{seconds} in 0.05 s steps, until
    C{check()} holds; fail C{case} with C{what} otherwise.
    """
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await deferLater(reactor, 0.05)
    case.fail(f"not within {seconds:g} s: {what}")


class UnreadingPeer:
    """
    A peer that never reads what it is sent: a raw socket to 127.0.0.1 with
    a tiny receive buffer, fed C{greeting} and then C{frames} over and over
    (up to C{limit} bytes) as fast as the kernel takes them, so that what
    it has not sent yet is buffered nowhere in this process and only the
    server's memory is measured.

    @ivar sent: bytes the kernel took so far.
    @ivar reset: whether the server closed the connection.
    """

    def __init__(self, port: int, greeting: bytes, frames: bytes, limit: int = 256 * MiB) -> None:
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Loopback: connecting and a few hundred bytes never block.
        self.socket.connect(("127.0.0.1", port))
        self.socket.sendall(greeting)
        self.socket.setblocking(False)
        self.frames = frames
        self.limit = limit
        self.sent = 0
        self.reset = False
        self._offset = 0
        self._feeding = LoopingCall(self._feed)
        self._feeding.start(0.01)

    def _feed(self) -> None:
        while self.sent < self.limit:
            try:
                n = self.socket.send(self.frames[self._offset :])
            except BlockingIOError:
                return
            except OSError:
                self.reset = True
                break
            self.sent += n
            self._offset = (self._offset + n) % len(self.frames)
        self._feeding.stop()

    def close(self) -> None:
        if self._feeding.running:
            self._feeding.stop()
        self.socket.close()


def unsent(transport: Any) -> int:
    """
    What a TCP transport holds in user space for its peer to read.
    """
    held: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return held


class RawClient(Protocol):
    """
    A client that sends what it is told, keeps what it gets, and notes when
    it is disconnected.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed.callback(None)


class _Metrics(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"up 1\n"


def startTarget(case: TestCase, resource: Resource | None = None, path: str = "metrics") -> str:
    """
    A scrape target on loopback for C{case}: C{resource} (by default one
    answering C{up 1}) served at every path; the URL of C{path} on it.
    """
    target: IListeningPort = reactor.listenTCP(
        0,
        Site(resource if resource is not None else _Metrics()),  # type: ignore[arg-type]
        interface="127.0.0.1",
    )
    case.addCleanup(target.stopListening)
    address = target.getHost()
    assert isinstance(address, IPv4Address)
    return f"http://127.0.0.1:{address.port}/{path}"


class BesideARealAgent(TestCase):
    """
    A loopback proxy with one well-behaved agent (C{real}, serving C{/m}
    from a real target), for attack tests that must show the attack costs
    that agent nothing.

    Subclasses say how the proxy is set up with L{proxySettings}, and the
    agent's token with L{agentToken}.
    """

    timeout = 60
    agentToken = ""

    def proxySettings(self) -> ProxySettings:
        return ProxySettings(http_port=0, agent_port=0, agent_token=self.agentToken)

    # Trial waits for a Deferred that setUp returns; the signature it
    # inherits from unittest says None.
    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._startRealAgent())

    async def _startRealAgent(self) -> None:
        targetURL = startTarget(self)
        self.proxy = buildProxy(self.proxySettings(), reactor, interface="127.0.0.1")
        self.proxy.startService()
        self.addCleanup(self.proxy.stopService)
        self.agent = buildAgent(
            AgentSettings(
                name="real",
                agent_token=self.agentToken,
                proxy_endpoints=(ProxyEndpoint("127.0.0.1", self.proxy.agentListener.portNumber),),
                path_configs=(PathConfig("m", "m", targetURL),),
            ),
            reactor,
        )
        self.agent.startService()
        self.addCleanup(self.agent.stopService)
        self.realLink = await self.agent.whenConnected()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = Agent(reactor, pool=self.pool)

    async def get(self, path: str) -> tuple[int, bytes]:
        """
        Scrape C{/path} through the proxy.
        """
        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/{path}".encode()
        response = await self.http.request(b"GET", url)
        return response.code, await readBody(response)

    async def raw(self, request: bytes, port: int | None = None) -> RawClient:
        """
        A raw client on the scrape port (or C{port}) that has sent
        C{request}.
        """
        client = RawClient()
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", port or self.proxy.httpListener.portNumber
        )
        await connectProtocol(endpoint, client)
        assert client.transport is not None
        self.addCleanup(client.transport.loseConnection)
        client.send(request)
        return client

    async def assertRealAgentServes(self, count: int = 3) -> None:
        for _ in range(count):
            self.assertEqual(await self.get("m"), (200, b"up 1\n"))


async def servedOnLoopback(
    case: TestCase, protocol: Callable[[], Protocol]
) -> Callable[[object], IStreamClientEndpoint]:
    """
    Serve C{protocol} on 127.0.0.1 for the length of C{case}; return what a
    L{promtwist.agent.client.TargetPool} takes to reach it, whatever the
    origin.
    """
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(protocol)
    )
    case.addCleanup(port.stopListening)
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return lambda origin: TCP4ClientEndpoint(reactor, "127.0.0.1", address.port)
