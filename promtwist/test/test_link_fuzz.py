"""
A bounded fuzz test of the frame decoder and the link state machine, on both
ends: thousands of mutated frame sequences from a fixed seed (frames of
random kinds in random states, random field values, bit flips, truncations,
huge declared lengths, random cuts between reads) fed to a proxy
L{promtwist.proxy.link.AgentLink} and to an agent
L{promtwist.agent.connection.ProxyConnection}, each on a L{StringTransport}
and a L{Clock}.

For every sequence: nothing is logged as a failure or as critical; the link
is open in a state consistent with what it holds, or closed by itself; and
once its connection is lost, the registry, the link's scrape table, the
factory's sets and the clock's timers are all back to empty.
"""

from __future__ import annotations

import gc
import random
import string
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from promtwist.agent.connection import ProxyConnectionFactory
from promtwist.agent.scraper import Scraper
from promtwist.config.settings import AgentSettings, ProxySettings
from promtwist.protocol.framing import encodeFrame
from promtwist.protocol.promtwist_pb2 import Frame, Hello, Welcome
from promtwist.protocol.session import LinkState
from promtwist.proxy.link import AgentLink
from promtwist.proxy.relay import ScrapeCall
from promtwist.test.helpers import agentLinkFactory
from promtwist.test.memorytarget import MemoryTargets
from promtwist.test.test_link import PATHS, Target, TCPStringTransport

SEED = 20261201
SEQUENCES = 3000
KINDS = [field.name for field in Frame.DESCRIPTOR.oneofs_by_name["kind"].fields]
# What a proxy puts in a query string: already percent-encoded.
QUERY_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~=&%+")
PATH_CHOICES = ["fast", "slow", "other", "", "a" * 300, "\x00\x7f/..", "ünï"]


def _text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(PATH_CHOICES)
    if roll < 0.9:
        return "".join(
            chr(rng.choice((rng.randrange(32, 127), rng.randrange(0, 0x3000))))
            for _ in range(rng.randrange(0, 40))
        )
    return "x" * rng.randrange(1000, 70_000)


def _number(rng: random.Random, kind: int) -> int:
    # Small values hit ids and states that exist; the extremes hit bounds.
    roll = rng.random()
    if roll < 0.7:
        return rng.randrange(0, 4)
    top = {FieldDescriptor.TYPE_UINT32: 2**32 - 1, FieldDescriptor.TYPE_INT64: 2**63 - 1}
    limit = top.get(kind, 2**64 - 1)
    if roll < 0.85:
        return limit
    value = rng.randrange(0, limit)
    if kind == FieldDescriptor.TYPE_INT64 and rng.random() < 0.3:
        return -value
    return value


def fill(rng: random.Random, message: Message) -> Message:
    """
    Give each field of C{message} a random value of its type, or leave it
    unset.
    """
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target: Any = getattr(message, field.name)
            for _ in range(rng.choice((0, 1, 3, 40))):
                target[_text(rng)[:50]] = _text(rng)[:50]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, field.name).SetInParent()
            fill(rng, getattr(message, field.name))
        elif field.type == FieldDescriptor.TYPE_STRING:
            setattr(message, field.name, _text(rng))
        elif field.type == FieldDescriptor.TYPE_BYTES:
            setattr(message, field.name, rng.randbytes(rng.choice((0, 5, 300, 70_000))))
        elif field.type == FieldDescriptor.TYPE_BOOL:
            setattr(message, field.name, rng.random() < 0.5)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            values = [v.number for v in field.enum_type.values]
            setattr(message, field.name, rng.choice(values))
        else:
            setattr(message, field.name, _number(rng, field.type))
    return message


def randomFrame(rng: random.Random) -> Frame:
    frame = Frame()
    kind = rng.choice(KINDS)
    getattr(frame, kind).SetInParent()
    fill(rng, getattr(frame, kind))
    return frame


def mutate(rng: random.Random, stream: bytes) -> bytes:
    """
    Bit flips, a cut, a huge declared length or garbage, each sometimes.
    """
    data = bytearray(stream)
    if data and rng.random() < 0.2:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    if data and rng.random() < 0.1:
        del data[rng.randrange(len(data)) :]
    if rng.random() < 0.05:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.choice((b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x01"))
    if rng.random() < 0.05:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randrange(1, 30))
    return bytes(data)


def reads(rng: random.Random, data: bytes) -> list[bytes]:
    """
    C{data} cut into reads of random sizes.
    """
    pieces = []
    while data:
        size = rng.choice((1, 3, 17, 500, len(data)))
        pieces.append(data[:size])
        data = data[size:]
    return pieces


class FuzzTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.failures: list[str] = []

        @implementer(ILogObserver)
        def watch(event: LogEvent) -> None:
            if "log_failure" in event or event.get("log_level") == LogLevel.critical:
                failure = event.get("log_failure")
                why = failure.getErrorMessage() if failure is not None else ""
                self.failures.append(f"sequence {self.sequence}: {formatEvent(event)} {why}")

        globalLogPublisher.addObserver(watch)
        self.addCleanup(globalLogPublisher.removeObserver, watch)
        self.sequence = -1

    def frames(self, rng: random.Random, first: Frame, sanitise: bool = False) -> bytes:
        frames = [first] if rng.random() < 0.8 else []
        frames += [randomFrame(rng) for _ in range(rng.randrange(1, 12))]
        if sanitise:
            for frame in frames:
                if frame.HasField("scrape_request"):
                    request = frame.scrape_request
                    request.query = "".join(c for c in request.query if c in QUERY_CHARACTERS)
                    for name in ("accept", "accept_encoding", "authorization"):
                        text = getattr(request, name)
                        setattr(request, name, "".join(c for c in text if " " <= c <= "~"))
        return mutate(rng, b"".join(encodeFrame(frame) for frame in frames))

    def test_proxyLink(self) -> None:
        rng = random.Random(SEED)
        clock = Clock()
        factory = agentLinkFactory(
            ProxySettings(max_agents=3, max_pending_handshakes_per_address=1000), clock
        )
        registry = factory.registry
        closedByItself = 0
        seen: set[LinkState] = set()
        for self.sequence in range(SEQUENCES):
            address = IPv4Address("TCP", "127.0.0.1", 40000 + self.sequence % 20000)
            link = factory.buildProtocol(address)
            assert isinstance(link, AgentLink), self.sequence
            transport = TCPStringTransport(peerAddress=address)
            link.makeConnection(transport)
            hello = Frame(hello=Hello(protocol_version=1, agent_name="fuzz", max_frame_bytes=65536))
            streams = []
            for data in reads(rng, self.frames(rng, hello)):
                link.dataReceived(data)
                roll = rng.random()
                if roll < 0.1:
                    clock.advance(rng.choice((0.5, 3.0, 11.0)))
                elif roll < 0.3 and link.established:
                    stream = link.scrape(ScrapeCall(rng.choice(PATH_CHOICES), "", "", "", "", 5.0))
                    stream.head.addErrback(lambda _: None)
                    streams.append(stream)
                self.assertConsistent(link, transport)
                seen.add(link.state)
            closedByItself += not link.isOpen()
            link.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(link._scrapes, {}, self.sequence)
            self.assertEqual((registry.agents(), registry.snapshot()), ([], []), self.sequence)
            self.assertEqual((factory.links, factory.pending), (set(), set()), self.sequence)
            self.assertEqual(clock.getDelayedCalls(), [], self.sequence)
            for stream in streams:
                self.assertTrue(stream.head.called, self.sequence)
        self.assertEqual(self.failures, [])
        # The fuzz reaches every state, and both ends of the machine.
        self.assertEqual(seen, set(LinkState))
        self.assertGreater(closedByItself, SEQUENCES // 10)
        self.assertLess(closedByItself, SEQUENCES)

    def assertConsistent(self, link: AgentLink, transport: TCPStringTransport) -> None:
        state = link.state
        factory = link.factory
        if state is LinkState.CLOSED:
            self.assertTrue(transport.disconnecting, self.sequence)
            return
        self.assertFalse(transport.disconnecting, (self.sequence, state))
        self.assertEqual(link in factory.registry.agents(), state is LinkState.ESTABLISHED)
        self.assertEqual(link in factory.pending, state is LinkState.HANDSHAKE)
        self.assertIn(link, factory.links)

    def test_agentConnection(self) -> None:
        """
        The agent's end, with scrape requests whose text fields are the
        printable ASCII a proxy sends (the raw case is the next test).
        """
        self.fuzzAgent(SEED + 1, sanitise=True)

    def test_agentRawScrapeRequests(self) -> None:
        """
        The agent's end with scrape requests exactly as fuzzed.
        """
        self.fuzzAgent(SEED + 2, sanitise=False)

    def fuzzAgent(self, seed: int, sanitise: bool) -> None:
        rng = random.Random(seed)
        clock = Clock()
        target = Target()
        http = MemoryTargets(target)
        settings = AgentSettings(name="fuzz", path_configs=PATHS)
        factory = ProxyConnectionFactory(settings, Scraper(settings, http.pool, clock), clock)
        closedByItself = 0
        for self.sequence in range(SEQUENCES):
            connection = factory.buildProtocol(None)
            transport = TCPStringTransport()
            connection.makeConnection(transport)
            connection.whenReady().addErrback(lambda _: None)
            welcome = Frame(
                welcome=Welcome(agent_id="fuzz", protocol_version=1, max_frame_bytes=1 << 20)
            )
            for data in reads(rng, self.frames(rng, welcome, sanitise)):
                connection.dataReceived(data)
                http.flush()
                if rng.random() < 0.1:
                    clock.advance(rng.choice((0.5, 3.0, 11.0)))
                if connection.isOpen():
                    self.assertFalse(transport.disconnecting, self.sequence)
                else:
                    self.assertTrue(transport.disconnecting, self.sequence)
            closedByItself += not connection.isOpen()
            connection.connectionLost(Failure(ConnectionDone()))
            http.flush()
            self.assertEqual(connection._scrapes, {}, self.sequence)
            self.assertIsNone(factory.current, self.sequence)
            self.assertEqual(clock.getDelayedCalls(), [], self.sequence)
            target.pending.clear()
        # A dropped Deferred reports its error when collected: here, where
        # this test's assertion sees it, not in whichever test runs next.
        gc.collect()
        self.flushLoggedErrors()
        self.assertEqual(self.failures, [])
        self.assertGreater(closedByItself, SEQUENCES // 10)
        self.assertLess(closedByItself, SEQUENCES)
