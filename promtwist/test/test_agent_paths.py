"""
Tests for the agent's path table (L{promtwist.agent.paths}), its discovery
file (L{promtwist.agent.discoveryfile}) and live path changes over one link.
"""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from promtwist.agent import discoveryfile
from promtwist.agent.discoveryfile import FileDiscovery, readDiscoveryFile
from promtwist.agent.paths import PathTable
from promtwist.config.settings import AgentSettings, ConfigError, PathConfig
from promtwist.proxy.relay import ScrapeCall
from promtwist.test.helpers import eventually
from promtwist.test.test_link import PATHS, Pair

A = PathConfig("a", "a", "http://t.test/a")
B = PathConfig("b", "b", "http://t.test/b", {"x": "1"})
B2 = PathConfig("b", "b", "http://t.test/b2", {"x": "1"})
C = PathConfig("c", "c", "http://t.test/c")


class PathTableTests(SynchronousTestCase):
    def test_desired(self) -> None:
        table = PathTable(static=[A], discovered=[B])
        self.assertEqual(dict(table.desired()), {"a": A, "b": B})

    def test_replaceDiff(self) -> None:
        table = PathTable(static=[A, B])
        changes = table.replace(static=[B2, C])
        self.assertEqual(changes.added, (C,))
        self.assertEqual(changes.removed, (A,))
        self.assertEqual(changes.changed, ((B, B2),))
        self.assertFalse(table.replace(static=[B2, C]))

    def test_partsIndependent(self) -> None:
        table = PathTable(static=[A], discovered=[B])
        table.replace(discovered=[])
        self.assertEqual(dict(table.desired()), {"a": A})
        table.replace(static=[])
        self.assertEqual(dict(table.desired()), {})

    def test_staticWins(self) -> None:
        warnings: list[str] = []
        discoveredA = PathConfig("other", "a", "http://t.test/other")
        table = PathTable(static=[A], discovered=[discoveredA], warn=warnings.append)
        self.assertEqual(table.desired()["a"], A)
        self.assertEqual(len(warnings), 1)
        self.assertIn("/a", warnings[0])
        table.replace(discovered=[discoveredA, B])
        self.assertEqual(len(warnings), 1, "warned once per collision")

    def test_lastDiscoveredWins(self) -> None:
        table = PathTable(discovered=[B, B2])
        self.assertEqual(table.desired()["b"], B2)

    def test_snapshotImmutable(self) -> None:
        table = PathTable(static=[A])
        before = table.desired()
        table.replace(static=[B])
        self.assertEqual(dict(before), {"a": A})
        self.assertNotIsInstance(before, dict)


class DiscoveryFileTests(SynchronousTestCase):
    def write(self, text: str, name: str = "targets.conf") -> str:
        path = FilePath(self.mktemp())
        path.makedirs()
        target = path.child(name)
        target.setContent(text.encode())
        return target.path

    def test_hocon(self) -> None:
        path = self.write(
            """
            host = "t.test"
            paths = [
              { path: a, url: "http://"${host}"/a" }
              { name: "B", path: b, url: "http://t.test/b", labels: "{\\"x\\": 1}" }
              { path: a, url: "http://${HOST2}/a2" }
            ]
            """.replace("${HOST2}", "t2.test")
        )
        self.assertEqual(
            readDiscoveryFile(path, {}),
            (
                PathConfig("B", "b", "http://t.test/b", {"x": "1"}),
                PathConfig("a", "a", "http://t2.test/a2"),
            ),
        )

    def test_environmentSubstitution(self) -> None:
        path = self.write('paths = [ { path: a, url: "http://"${TARGET}"/m" } ]')
        self.assertEqual(
            readDiscoveryFile(path, {"TARGET": "t.test:9"}),
            (PathConfig("a", "a", "http://t.test:9/m"),),
        )

    def test_json(self) -> None:
        path = self.write('{"paths": [{"path": "a", "url": "http://t.test/a"}]}', "t.json")
        self.assertEqual(readDiscoveryFile(path, {}), (PathConfig("a", "a", "http://t.test/a"),))

    def test_empty(self) -> None:
        self.assertEqual(readDiscoveryFile(self.write("paths = []"), {}), ())

    def test_malformed(self) -> None:
        for text in ("paths = [", "other = 1", "paths = [ { path: a } ]", "paths = 3"):
            self.assertRaises(ConfigError, readDiscoveryFile, self.write(text), {})

    def test_unknownEntryKey(self) -> None:
        """
        A misspelt entry key is an error (the tick is skipped), with the
        closest key suggested.
        """
        text = 'paths = [{path = a, url = "http://t.test/a", lables = "{}"}]'
        error = self.assertRaises(ConfigError, readDiscoveryFile, self.write(text), {})
        self.assertIn("unknown configuration key paths[0].lables; did you mean", str(error))

    def test_missing(self) -> None:
        error = self.assertRaises(ConfigError, readDiscoveryFile, self.mktemp(), {})
        self.assertIn("cannot read", str(error))


class FileDiscoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())
        self.clock = Clock()
        self.applied: list[tuple[PathConfig, ...]] = []
        self.discovery = FileDiscovery(self.path.path, 30, self.applied.append, self.clock, {})

    def test_ticks(self) -> None:
        """
        The file is read at start and every interval; a change is applied,
        an unchanged file is not; a broken or missing file keeps the last
        good paths with one warning; an empty list removes them all.
        """
        self.path.setContent(b'paths = [ { path: a, url: "http://t.test/a" } ]')
        self.discovery.startService()
        self.addCleanup(self.discovery.stopService)
        self.assertEqual(self.applied, [(PathConfig("a", "a", "http://t.test/a"),)])
        self.clock.advance(30)
        self.assertEqual(len(self.applied), 1)
        self.path.setContent(b"paths = [")
        with capturedLogs() as events:
            self.clock.advance(30)
            self.clock.advance(30)
        warnings = [e for e in events if "discovery file skipped" in e["log_format"]]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["kept"], "1 path(s)")
        self.assertEqual(len(self.applied), 1)
        self.path.remove()
        self.clock.advance(30)
        self.assertEqual(len(self.applied), 1)
        self.path.setContent(b"paths = []")
        self.clock.advance(30)
        self.assertEqual(self.applied[-1], ())

    def test_stop(self) -> None:
        self.path.setContent(b"paths = []")
        self.discovery.startService()
        self.discovery.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ThreadedReadTests(TestCase):
    """
    With a real reactor the file is read at start, and then in a thread of
    the reactor's pool: a slow read (a URL, a slow mount) leaves the reactor
    serving.
    """

    async def test_readOffTheReactor(self) -> None:
        readers: list[threading.Thread] = []
        release = threading.Event()
        first = (PathConfig("a", "a", "http://t.test/a"),)
        second = (PathConfig("b", "b", "http://t.test/b"),)

        def read(path: str, environ: object) -> tuple[PathConfig, ...]:
            readers.append(threading.current_thread())
            if len(readers) == 1:
                return first
            release.wait(10)
            return second

        self.patch(discoveryfile, "readDiscoveryFile", read)
        applied: list[tuple[PathConfig, ...]] = []
        discovery = FileDiscovery("unused", 0.01, applied.append, reactor, {})
        discovery.startService()
        self.addCleanup(discovery.stopService)
        # At start, before the agent's first registration.
        self.assertEqual((applied, readers), ([first], [threading.current_thread()]))
        await eventually(self, lambda: len(readers) == 2, "the second read", 10)
        # The reactor runs timers while that read blocks.
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(applied, [first])
        self.assertIsNot(readers[1], threading.current_thread())
        release.set()
        await eventually(self, lambda: len(applied) == 2, "the second read applied", 10)
        self.assertEqual(applied[1], second)


class LiveChangeTests(SynchronousTestCase):
    """
    Path changes go over the existing link: no reconnect, a new agent id is
    not needed.
    """

    def setUp(self) -> None:
        self.pair = Pair()
        self.successResultOf(self.pair.ready)
        self.factory = self.pair.agent.factory

    def proxyPaths(self) -> dict[str, tuple[str, dict[str, str]]]:
        return {e.path: (e.name, dict(e.labels)) for e in self.pair.registry.snapshot()}

    def apply(self, **parts: tuple[PathConfig, ...]) -> None:
        _, done = self.factory.replacePaths(**parts)
        self.pair.flush()
        self.successResultOf(done)

    def test_addRemoveChange(self) -> None:
        fast = PATHS[0]
        agentId = self.pair.agent.agentId
        self.apply(discovered=(C,))
        self.assertEqual(set(self.proxyPaths()), {"fast", "slow", "c"})
        self.apply(static=(fast,))
        self.assertEqual(set(self.proxyPaths()), {"fast", "c"})
        relabelled = PathConfig("Fast!", "fast", fast.url, {"team": "b"})
        self.apply(static=(relabelled,))
        self.assertEqual(self.proxyPaths()["fast"], ("Fast!", {"team": "b"}))
        self.assertEqual(self.pair.agent.registeredPaths()["fast"], relabelled)
        self.assertIs(self.factory.current, self.pair.agent)
        self.assertEqual(self.pair.agent.agentId, agentId)
        self.assertEqual(self.pair.registry.lookup("fast")[0].agentId, agentId)

    def test_urlChangeStaysLocal(self) -> None:
        fast, slow = PATHS
        moved = PathConfig(fast.name, fast.path, "http://target.test/other", fast.labels)
        with capturedLogs() as events:
            self.apply(static=(moved, slow))
        self.assertTrue(any("now scrapes" in e["log_format"] for e in events))
        self.assertIs(self.factory.paths["fast"], moved)

    def test_removedPathNotFound(self) -> None:
        self.apply(static=PATHS[:1])
        self.assertEqual(self.pair.registry.lookup("slow"), ())

    def test_inFlightKeepsConfig(self) -> None:
        """
        A scrape in flight finishes with the config it started with.
        """
        stream = self.pair.scrape("slow")
        self.assertEqual(len(self.pair.target.pending), 1)
        self.apply(static=PATHS[:1])
        self.assertEqual(self.pair.agent.scrapesInFlight, 1)
        request = self.pair.target.pending.pop()
        request.write(b"up 1\n")
        request.finish()
        self.pair.flush()
        head = self.successResultOf(stream.head)
        self.assertEqual(head.status, 200)
        self.assertEqual(self.pair.agent.scrapesInFlight, 0)

    def test_overlappingChanges(self) -> None:
        """
        Changes made before the proxy answered the previous ones end in the
        latest state.
        """
        _, first = self.factory.replacePaths(discovered=(C,))
        _, second = self.factory.replacePaths(discovered=())
        self.pair.flush()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(set(self.proxyPaths()), {"fast", "slow"})

    def test_servedAfterGoodbye(self) -> None:
        """
        A scrape request the proxy sent before it read this agent's Goodbye
        is served, not refused: it is the last one for its path on this
        link, and a standby takes the next.
        """
        self.factory.draining = True
        self.pair.agent.sendGoodbye("agent shutting down")
        stream = self.pair.proxy.scrape(ScrapeCall("fast", "", "text/plain", "", "", 5.5))
        self.pair.flush()
        self.assertEqual(self.successResultOf(stream.head).status, 200)

    def test_whenIdle(self) -> None:
        self.successResultOf(self.pair.agent.whenIdle())
        self.pair.scrape("slow")
        idle = self.pair.agent.whenIdle()
        self.assertNoResult(idle)
        request = self.pair.target.pending.pop()
        request.finish()
        self.pair.flush()
        self.successResultOf(idle)

    def test_idleOnLoss(self) -> None:
        stream = self.pair.scrape("slow")
        idle = self.pair.agent.whenIdle()
        self.pair.agent.transport.abortConnection()
        self.pair.flush()
        self.successResultOf(idle)
        self.failureResultOf(stream.head)


class RefusedPathTests(SynchronousTestCase):
    def test_refusedNotRetried(self) -> None:
        """
        A path the proxy refused is not asked for again at every change.
        """
        pair = Pair(agentSettings=AgentSettings(name="a1", path_configs=PATHS))
        self.successResultOf(pair.ready)
        bad = PathConfig("bad", "bad", "http://t.test/bad")
        pair.registry.reservedPaths = frozenset({"bad"})
        with capturedLogs() as events:
            _, done = pair.agent.factory.replacePaths(discovered=(bad,))
            pair.flush()
            self.successResultOf(done)
            _, done = pair.agent.factory.replacePaths(discovered=(bad, C))
            pair.flush()
        refusals = [e for e in events if "refused path" in e["log_format"]]
        self.assertEqual(len(refusals), 1)
        self.assertNotIn("bad", pair.agent.registeredPaths())
