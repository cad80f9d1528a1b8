"""
Tests for L{promtwist.reloads}: a reload reads in a thread and is handled in
the reactor thread, one reading at a time; and, through the agent, a
configuration URL served by the process's own reactor reloads (a reading in
the reactor thread would wait on itself).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from promtwist.agent.build import buildAgent
from promtwist.config.load import loadAgentSettings
from promtwist.config.settings import ConfigError
from promtwist.reloads import Reloads, inThreads
from promtwist.test.test_agent_service import SETTINGS, downEndpoints

Read = Callable[[], Any]


class FakeThreads:
    """
    An C{inThread} whose "thread" runs only when the test says: each
    reading waits in L{pending} until L{run} runs it and delivers its
    result.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Read, Deferred[Any]]] = []

    def __call__(self, f: Read) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((f, d))
        return d

    def run(self) -> None:
        f, d = self.pending.pop(0)
        try:
            result = f()
        except Exception as e:  # noqa: BLE001 - delivered as a thread's failure is
            d.errback(e)
        else:
            d.callback(result)


class ReloadsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.threads = FakeThreads()
        self.sources: list[str | Exception] = []
        self.loads: list[str] = []
        self.applied: list[str] = []
        self.refused: list[str] = []
        self.warned: list[str] = []
        self.reloads: Reloads[str] = Reloads(
            self.load,
            self.applied.append,
            lambda e: self.refused.append(str(e)),
            self.warned.append,
            self.threads,
        )

    def load(self, warn: Callable[[str], None]) -> str:
        source = self.sources.pop(0)
        self.loads.append(str(source))
        if isinstance(source, Exception):
            raise source
        warn(f"warning of {source}")
        return source

    def test_readInTheThreadHandledAfter(self) -> None:
        """
        Nothing is read when asked, only in the thread; the warnings the
        loader gave are passed on with the outcome, not from the thread.
        """
        self.sources.append("one")
        done = self.reloads()
        self.assertEqual((self.loads, self.warned, self.applied), ([], [], []))
        self.assertNoResult(done)
        self.threads.run()
        self.assertEqual(self.warned, ["warning of one"])
        self.assertEqual(self.applied, ["one"])
        self.assertIsNone(self.successResultOf(done))

    def test_refused(self) -> None:
        self.sources.append(ConfigError("a.conf: broken"))
        done = self.reloads()
        self.threads.run()
        self.assertEqual((self.refused, self.applied), (["a.conf: broken"], []))
        self.successResultOf(done)

    def test_coalesced(self) -> None:
        """
        Reloads asked for while one reads make one more reading, after the
        first one's settings were applied; never two at once.
        """
        self.sources += ["one", "two"]
        first = self.reloads()
        second, third = self.reloads(), self.reloads()
        self.assertEqual(len(self.threads.pending), 1)
        self.threads.run()
        self.assertEqual(self.applied, ["one"])
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(len(self.threads.pending), 1)
        self.threads.run()
        self.assertEqual(self.applied, ["one", "two"])
        self.successResultOf(second)
        self.successResultOf(third)
        self.assertEqual(self.threads.pending, [])

    def test_waitsForTheApplying(self) -> None:
        """
        A reload fires once its settings took effect (the applying's
        Deferred), while the next reading need not wait for that.
        """
        taken: Deferred[None] = Deferred()
        self.reloads = Reloads(
            self.load, lambda _: taken, self.fail, self.warned.append, self.threads
        )
        self.sources += ["one", "two"]
        first = self.reloads()
        self.threads.run()
        self.assertNoResult(first)
        self.reloads()
        self.assertEqual(len(self.threads.pending), 1)
        taken.callback(None)
        self.successResultOf(first)

    def test_unexpectedFailure(self) -> None:
        """
        A loader that fails other than with a L{ConfigError} is logged with
        its traceback, the reload still fires, and the next one runs.
        """
        self.sources += [RuntimeError("bug"), "two"]
        with capturedLogs() as events:
            done = self.reloads()
            self.threads.run()
        self.successResultOf(done)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        (failure,) = [e for e in events if "log_failure" in e]
        self.assertEqual(failure["doing"], "reading")
        self.reloads()
        self.threads.run()
        self.assertEqual(self.applied, ["two"])

    def test_stopped(self) -> None:
        """
        After L{Reloads.stop} a reading under way is discarded when it ends,
        and the reloads waiting for the next one fire without reading.
        """
        self.sources.append("one")
        first = self.reloads()
        second = self.reloads()
        self.reloads.stop()
        self.successResultOf(second)
        self.threads.run()
        self.successResultOf(first)
        self.assertEqual((self.applied, self.warned, self.threads.pending), ([], [], []))
        self.successResultOf(self.reloads())
        self.assertEqual(self.threads.pending, [])

    def test_noThreadsInAClock(self) -> None:
        """
        A reactor without threads (a test's Clock) reads in its own thread.
        """
        self.assertEqual(self.successResultOf(inThreads(Clock())(lambda: 7)), 7)


class ThreadTests(TestCase):
    timeout = 30

    async def test_anotherThread(self) -> None:
        """
        With a real reactor the reading runs in another thread while the
        reactor goes on, and its result comes back to the reactor thread.
        """
        release = threading.Event()

        def read() -> int:
            release.wait(10)
            return threading.get_ident()

        reading = inThreads(reactor)(read)
        # The reactor runs meanwhile: this fires while read() waits.
        await Deferred.fromCoroutine(_later(release.set))
        self.assertNotEqual(await reading, threading.get_ident())

    async def test_agentReloadsFromItsOwnServer(self) -> None:
        """
        The reviewer's case: an agent configured by an http(s) URL reloads
        while serving. Here the configuration server runs in the agent's own
        reactor, so a reading in the reactor thread could never be answered
        (it timed out after 10 s and refused the reload); read in a thread,
        the new path is applied.
        """
        conf = FilePath(self.mktemp())
        conf.setContent(b'agent.pathConfigs = [{name = x, path = x, url = "http://t.test/x"}]\n')
        root = Resource()
        root.putChild(b"agent.conf", _File(conf))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(root))
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        url = f"http://127.0.0.1:{address.port}/agent.conf"

        def load(warn: Callable[[str], None]) -> Any:
            return loadAgentSettings({"config": url}, {}, warn=warn)

        service = buildAgent(SETTINGS, reactor, loadSettings=load, endpoints=downEndpoints([], "p"))
        with capturedLogs() as events:
            await service.reload()
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(errors, [])
        self.assertEqual(list(service.factory.paths), ["x"])


async def _later(f: Callable[[], None]) -> None:
    await deferLater(reactor, 0.01, f)


class _File(Resource):
    isLeaf = True

    def __init__(self, path: FilePath[str]) -> None:
        super().__init__()
        self.path = path

    def render_GET(self, request: Any) -> bytes:
        return self.path.getContent()
