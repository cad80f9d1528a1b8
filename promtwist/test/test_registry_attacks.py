"""
A hostile agent flooding a real loopback proxy with oversized registrations:
it is refused at the limits with reasons, the proxy's memory and its
discovery document stay small, few warning lines are written, and a
well-behaved agent's scrapes keep succeeding throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from promtwist.config.settings import ProxySettings
from promtwist.protocol.promtwist_pb2 import Frame, Hello, PathReply, RegisterPath
from promtwist.test.helpers import BesideARealAgent, MiB, rss
from promtwist.test.test_framing import encode
from promtwist.test.test_link import decodeAll

TOKEN = "the-real-token"
# The limits under attack, as the defaults have them.
LIMITS = ProxySettings()
# How much the proxy's process (this test process) may grow: the flood of
# registrations by at most twice maxRegisteredBytes (16 MiB of strings and
# the objects holding them); one discovery request then by at most five
# times the document's size: the proxy keeps it twice (its groups' encoded
# text, shared by every target address, and the answer for this one), and
# the test's client holds its chunks and their join. Before the limits, 300
# paths of 1 MB cost 263 MB and the document was 600 MB.
REGISTRATIONS_RSS_BOUND = 2 * LIMITS.max_registered_bytes
DOCUMENT_COPIES_BOUND = 5
# Refusal warnings of one kind a link logs per interval (RepeatedWarnings).
BURST = 5


class HostileAgent(Protocol):
    """
    An agent that says Hello and then registers whatever it is told,
    counting the replies.
    """

    def __init__(self) -> None:
        self.received = b""
        self.replies: list[PathReply] = []
        self.closed: Deferred[None] = Deferred()
        self._waiting: tuple[int, Deferred[None]] | None = None

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        # Decode whole frames only; keep a partial one for the next read.
        whole, offset = [], 0
        while len(self.received) - offset >= 4:
            length = int.from_bytes(self.received[offset : offset + 4], "big")
            if len(self.received) - offset - 4 < length:
                break
            whole.append(self.received[offset : offset + 4 + length])
            offset += 4 + length
        self.received = self.received[offset:]
        for frame in decodeAll(b"".join(whole)):
            if frame.HasField("path_reply"):
                self.replies.append(frame.path_reply)
        if self._waiting is not None and len(self.replies) >= self._waiting[0]:
            self._waiting[1].callback(None)
            self._waiting = None

    def repliesFor(self, count: int) -> Deferred[None]:
        """
        Fires once C{count} replies arrived in all (the test's timeout
        bounds the wait).
        """
        waiting: Deferred[None] = Deferred()
        if len(self.replies) >= count:
            waiting.callback(None)
        else:
            self._waiting = (count, waiting)
        return waiting

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed.callback(None)


def attack() -> Iterator[Frame]:
    """
    Six hundred registrations an attacker might send: every kind of
    oversized field, then valid registrations as large as the limits allow,
    enough to go over the proxy-wide budget.
    """
    huge = "x" * 200_000
    oversized = [
        RegisterPath(path="p" + huge),
        RegisterPath(path="p", name=huge),
        RegisterPath(path="p", labels={f"l{n}": "" for n in range(LIMITS.max_labels_per_path + 1)}),
        RegisterPath(path="p", labels={"l" * 1000: ""}),
        RegisterPath(path="p", labels={"bad-name": ""}),
        RegisterPath(path="p", labels={"k": huge}),
    ]
    for n in range(120):
        request = oversized[n % len(oversized)]
        request.request_id = n
        yield Frame(register_path=request)
    biggest = {
        f"k{m:0{LIMITS.max_label_name_length - 1}d}": "v" * LIMITS.max_label_value_length
        for m in range(LIMITS.max_labels_per_path)
    }
    for n in range(120, 600):
        path = f"{n:0{LIMITS.max_path_length}d}"
        name = "n" * LIMITS.max_path_name_length
        yield Frame(register_path=RegisterPath(request_id=n, path=path, name=name, labels=biggest))


class RegistrationFloodTests(BesideARealAgent):
    agentToken = TOKEN

    def proxySettings(self) -> ProxySettings:
        return ProxySettings(http_port=0, agent_port=0, agent_token=TOKEN, sd_enabled=True)

    async def test_flood(self) -> None:
        hostile = HostileAgent()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.agentListener.portNumber)
        await connectProtocol(endpoint, hostile)
        hostile.send(encode(Frame(hello=Hello(protocol_version=1, agent_name="x", token=TOKEN))))
        frames = [encode(frame) for frame in attack()]
        before = rss()
        with capturedLogs() as events:
            for start in range(0, len(frames), 50):
                hostile.send(b"".join(frames[start : start + 50]))
                await hostile.repliesFor(start + 50)
                await self.assertRealAgentServes(1)
            registered = rss() - before
            code, body = await self.get("discovery")
            await self.assertRealAgentServes(3)
        grown = rss() - before

        # Refused at each limit, with the reason naming its setting.
        reasons = [reply.reason for reply in hostile.replies if not reply.ok]
        for key in (
            "maxPathLength",
            "maxPathNameLength",
            "maxLabelsPerPath",
            "maxLabelNameLength",
            "maxLabelValueLength",
            "maxRegisteredBytes",
        ):
            self.assertTrue(any(f"(proxy.internal.{key})" in r for r in reasons), key)
        self.assertIn("is not a Prometheus label name", "\n".join(reasons))
        self.assertLess(max(map(len, reasons)), 400)
        accepted = [reply for reply in hostile.replies if reply.ok]
        self.assertEqual(len(accepted) + len(reasons), 600)
        self.assertLessEqual(self.proxy.registry.registeredBytes, LIMITS.max_registered_bytes)

        # Discovery: no larger than the budget allows, and answered without
        # starving the links: both agents are still connected.
        self.assertEqual(code, 200)
        groups = json.loads(body)
        self.assertEqual(len(groups), len(accepted) + 1)
        self.assertLess(len(body), 2 * LIMITS.max_registered_bytes)
        self.assertEqual(len(self.proxy.registry.agents()), 2)
        self.assertNoResult(hostile.closed)

        # Memory and logs bounded.
        self.assertLess(
            registered,
            REGISTRATIONS_RSS_BOUND,
            f"RSS grew {registered / MiB:.0f} MiB with the registrations",
        )
        self.assertLess(
            grown,
            registered + DOCUMENT_COPIES_BOUND * len(body),
            f"RSS grew {grown / MiB:.0f} MiB with a {len(body) / MiB:.0f} MiB document",
        )
        # At most a burst of warnings per kind of refusal (six kinds here);
        # the rest are counted, to be summarised at the interval's end.
        lines = [e["log_format"] for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(len(lines), 6 * BURST, lines)
        self.assertEqual(self.proxy.registry.lookup("m")[0].name, "real")
