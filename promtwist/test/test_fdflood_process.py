"""
A twistd proxy whose open-file limit is low, flooded from one address with
connections that send half a request head and wait (the reviewer's
C{fdflood.py}, issue 12): the scrape port's caps keep the flood to its share,
so Prometheus' scrapes and the agent port go on being served.
"""

from __future__ import annotations

import os
import sys
from typing import cast

from twisted.internet import reactor
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from promtwist.proxy.admission import raiseOpenFileLimit
from promtwist.test.processes import Cluster, writeFile

# The proxy's open-file limit, soft and hard, and what it is configured to
# fit in it (promtwist.proxy.admission.filesNeeded: 50 + 8 + 16 + 400 + 256).
OPEN_FILES = 1200
PER_ADDRESS = 200
FLOOD = 1500
BATCH = 30

# Runs the proxy with its open-file limit lowered: argv[1] is the limit,
# the rest the command.
_LIMITED = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)

_PROXY_CONF = f"""
proxy {{
  http {{ maxConnections = 400, maxConnectionsPerAddress = {PER_ADDRESS},
          headerTimeoutSecs = 60 }}
  internal {{ maxAgents = 50, maxPendingHandshakes = 8, maxWaitingHandshakes = 16 }}
}}
"""


class _Holder(Protocol):
    """
    Sends half a request head and waits.
    """

    def __init__(self, flood: _Flood) -> None:
        self.flood = flood

    def connectionMade(self) -> None:
        self.flood.open += 1
        assert self.transport is not None
        self.transport.write(b"GET /x HTTP/1.1\r\nHost: x\r\n")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.flood.open -= 1
        self.flood.closed += 1


class _Flood(ClientFactory):
    def __init__(self) -> None:
        self.open = 0
        self.closed = 0
        self.failed = 0
        self.holders: list[_Holder] = []

    def buildProtocol(self, addr: object) -> _Holder:
        holder = _Holder(self)
        self.holders.append(holder)
        return holder

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.failed += 1

    def end(self) -> None:
        for holder in self.holders:
            if holder.transport is not None:
                cast(ITCPTransport, holder.transport).abortConnection()


class FileDescriptorFloodTests(TestCase):
    timeout = 120

    async def test_oneHostCannotExhaustFiles(self) -> None:
        """
        One address opens more connections than the proxy has files: it
        keeps L{PER_ADDRESS}, the rest are closed at once; a scrape from
        another address is answered, an agent that reconnects to the agent
        port is served again, and the refusals cost a few log lines.
        """
        # The flood's connections are this process's files.
        needed = FLOOD + 256
        self.assertGreaterEqual(
            raiseOpenFileLimit(needed), needed, f"the test needs an open-file limit of {needed}"
        )
        cluster = Cluster(self, {"ff_one": "metrics"}, sd=False)
        config = writeFile(os.path.join(cluster.workdir, "proxy.conf"), _PROXY_CONF)
        cluster.proxy.argv = [
            sys.executable,
            "-c",
            _LIMITED,
            str(OPEN_FILES),
            *cluster.proxy.argv,
            "-c",
            config,
        ]
        await cluster.start()
        flood = _Flood()
        self.addCleanup(flood.end)
        # In batches the proxy's listen backlog (50) holds: a handshake the
        # kernel completed beyond it is retried at its own pace, for a
        # minute or more.
        for issued in range(BATCH, FLOOD + 1, BATCH):
            for _ in range(BATCH):
                reactor.connectTCP(
                    "127.0.0.1", cluster.scrapePort, flood, timeout=10, bindAddress=("127.0.0.3", 0)
                )

            async def connected(issued: int = issued) -> bool:
                return flood.open + flood.closed + flood.failed >= issued

            await cluster.eventually(connected, f"{issued} connections made", 10, interval=0.02)

        async def settled() -> bool:
            return flood.closed == FLOOD - PER_ADDRESS

        await cluster.eventually(settled, "the flood's connections refused", 10, interval=0.1)
        self.assertEqual(flood.open, PER_ADDRESS)
        self.assertEqual(flood.failed, 0)
        assert cluster.proxy.pid is not None
        files = len(os.listdir(f"/proc/{cluster.proxy.pid}/fd"))
        # The flood's share is held, and nothing more than the proxy's own.
        self.assertGreaterEqual(files, PER_ADDRESS)
        self.assertLess(files, PER_ADDRESS + 100)
        # Prometheus, from 127.0.0.1: served while the flood holds its share.
        code, body = await cluster.get("ff_one")
        self.assertEqual(code, 200, body)
        # The agent port: an agent that reconnects registers and serves again.
        await cluster.agent.stop()
        cluster.agent.start()
        await cluster.eventually(
            lambda: cluster.servedOnce("ff_one"), "a scrape after the agent reconnected", 20
        )
        log = cluster.proxy.log()
        refusals = log.count("closing a scrape-port connection from 127.0.0.3 unanswered")
        self.assertGreater(refusals, 0, log)
        self.assertLessEqual(refusals, 5, log)
        self.assertIn("(proxy.http.maxConnectionsPerAddress)", log)
        self.assertNotIn("EMFILE", log)
        self.assertNotIn("out of file descriptors", log)
