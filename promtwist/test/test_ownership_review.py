"""
Path ownership over real links (L{promtwist.test.test_ownership.Ownership}):
what a per-agent owner gets back after a restart, what standbys are told as
the queue moves, how a claim refused for a limit is asked again, and what a
holder serves while it drops a path.
"""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from promtwist.agent.connection import RETRY_FIRST_SECS
from promtwist.config.settings import Identity, ProxySettings
from promtwist.protocol.promtwist_pb2 import Frame
from promtwist.proxy import link as linkModule
from promtwist.proxy.build import buildProxy
from promtwist.proxy.relay import ScrapeCall
from promtwist.test.test_link import PATHS
from promtwist.test.test_ownership import Ownership, holderLines, text

DB1 = Identity("db1", "db1-token", perAgent=True)


class PerAgentOwnerTests(SynchronousTestCase):
    """
    A per-agent identity's paths come back to it after a routine restart,
    even if another identity's standby held them meanwhile.
    """

    def test_restartTakesPathsBack(self) -> None:
        """
        The owner says goodbye, a standby of the legacy shared token takes
        the paths; the owner's new process (new launch, same name) takes
        them back at once, reason C{returned}, logged and counted; the
        interim holder is told and waits first in line.
        """
        proxy = Ownership(ProxySettings(identities=(DB1,), agent_token="shared-legacy"))
        owner = proxy.connect("db1-agent", token="db1-token", launchId="L-old", host="db1")
        rogue = proxy.connect("whatever", token="shared-legacy", launchId="R", host="evil")
        owner.connection.sendGoodbye("agent shutting down")
        proxy.flush()
        self.assertEqual(proxy.holder(), rogue.link)
        with capturedLogs() as events:
            new = proxy.connect("db1-agent", token="db1-token", launchId="L-new", host="db1")
        self.assertEqual((proxy.holder(), proxy.holder("slow")), (new.link, new.link))
        self.assertTrue(new.standing().startswith("held by this agent"))
        self.assertTrue(
            rogue.standing().startswith(
                f"standby #1 behind agent 'db1-agent' on db1 ({new.link.agentId})"
            ),
            rogue.standing(),
        )
        self.assertEqual(proxy.changes("returned"), 2)
        self.assertTrue(
            any("its per-agent owner came back" in text(e) for e in holderLines(events)),
            [text(e) for e in events],
        )
        self.assertTrue(
            any(
                "displaced by agent 'db1-agent'" in text(e) and e["log_level"] == LogLevel.warn
                for e in events
            )
        )
        # Taken back, the path is the owner's again: the interim holder
        # leaving changes nothing, and a later claim of another identity waits.
        rogue.connection.transport.abortConnection()
        proxy.flush()
        self.assertEqual(proxy.holder(), new.link)

    def test_unregisteredIsNotReturned(self) -> None:
        """
        An owner that unregisters gives its path up: coming back, it waits.
        """
        proxy = Ownership(ProxySettings(identities=(DB1,), agent_token="shared"))
        owner = proxy.connect("db1-agent", token="db1-token", launchId="L1")
        other = proxy.connect("other", token="shared")
        owner.connection.unregisterPath(PATHS[0])
        proxy.flush()
        self.assertEqual(proxy.holder(), other.link)
        owner.connection.sendGoodbye("stop")
        proxy.flush()
        again = proxy.connect("db1-agent", token="db1-token", launchId="L2")
        self.assertEqual(proxy.holder(), other.link)
        self.assertTrue(again.standing().startswith("standby #1"))


class StandbyToldTests(SynchronousTestCase):
    """
    Every remaining standby learns its new holder and place.
    """

    def test_newHolder(self) -> None:
        proxy = Ownership()
        first, second, third = (proxy.connect(f"a{i}") for i in (1, 2, 3))
        self.assertTrue(third.standing().startswith("standby #2 behind agent 'a1'"))
        first.connection.transport.abortConnection()
        proxy.flush()
        self.assertEqual(
            third.standing(),
            f"standby #1 behind agent 'a2' on host-1 ({second.link.agentId}) "
            "(holder since 2025-12-01T00:00:00Z)",
        )

    def test_queueMoves(self) -> None:
        """
        A standby ahead leaving moves those behind up; the holder stays.
        """
        proxy = Ownership()
        first, second, third = (proxy.connect(f"a{i}") for i in (1, 2, 3))
        second.connection.transport.abortConnection()
        proxy.flush()
        self.assertEqual(proxy.holder(), first.link)
        self.assertTrue(
            third.standing().startswith(
                f"standby #1 behind agent 'a1' on host-0 ({first.link.agentId})"
            ),
            third.standing(),
        )


class RefusedStandbyRetryTests(SynchronousTestCase):
    """
    A claim refused for the byte budget is asked again with backoff, so a
    rolling update near the budget does not lose the path.
    """

    def test_retriedUntilAccepted(self) -> None:
        proxy = Ownership(ProxySettings(max_registered_bytes=3000))
        first = proxy.connect("a1", host="h")
        second = proxy.connect("a2", host="h")
        self.assertEqual(second.connection.registeredPaths(), {})
        # Still over the budget: refused again, asked again later.
        proxy.clock.advance(RETRY_FIRST_SECS)
        proxy.flush()
        self.assertEqual(second.connection.registeredPaths(), {})
        rejections = proxy.factory.metrics.registry.get_sample_value(
            "proxy_rejections_total", {"reason": "path_budget"}
        )
        self.assertEqual(rejections, 4)
        first.connection.sendGoodbye("stop")
        proxy.flush()
        # The second attempt waits twice as long.
        proxy.clock.advance(RETRY_FIRST_SECS * 2)
        proxy.flush()
        self.assertEqual(second.connection.registeredPaths().keys(), {"fast", "slow"})
        self.assertEqual(proxy.holder(), second.link)
        self.assertFalse(
            second.connection._timers and any(t.active() for t in second.connection._timers)
        )

    def test_timersCancelledOnLoss(self) -> None:
        proxy = Ownership(ProxySettings(max_registered_bytes=3000))
        proxy.connect("a1", host="h")
        second = proxy.connect("a2", host="h")
        retries = [t for t in second.connection._timers if t.active()]
        self.assertEqual(len(retries), 2)
        second.connection.transport.abortConnection()
        proxy.flush()
        self.assertFalse([t for t in retries if t.active()])

    def test_notRetriedWhileDraining(self) -> None:
        """
        A retry due after this agent said Goodbye sends nothing: a draining
        link may not claim paths.
        """
        proxy = Ownership(ProxySettings(max_registered_bytes=3000))
        proxy.connect("a1", host="h")
        second = proxy.connect("a2", host="h")
        sent: list[Frame] = []
        send = second.connection.sendFrame

        def record(frame: Frame) -> None:
            sent.append(frame)
            send(frame)

        self.patch(second.connection, "sendFrame", record)
        second.connection.sendGoodbye("stop")
        proxy.clock.advance(RETRY_FIRST_SECS)
        self.assertEqual([frame.WhichOneof("kind") for frame in sent], ["goodbye"])
        proxy.flush()

    def test_otherRefusalsNotRetried(self) -> None:
        """
        A refusal no other claim's leaving can lift (here: not authorized)
        is not asked again.
        """
        team = Identity("team", "tt", paths=("other/*",))
        proxy = Ownership(ProxySettings(identities=(team,)))
        agent = proxy.connect("a1", token="tt")
        self.assertEqual(agent.connection.registeredPaths(), {})
        self.assertFalse([t for t in agent.connection._timers if t.active()])


class UnregisterServesUntilAnsweredTests(SynchronousTestCase):
    def test_removedPathServedUntilUnregistered(self) -> None:
        """
        A scrape the proxy routes to a holder before it reads that holder's
        UnregisterPath is served with the path's old config, not a 404.
        """
        proxy = Ownership()
        first = proxy.connect("a1")
        second = proxy.connect("a2")
        first.connection.factory.replacePaths(static=[PATHS[1]])
        stream = proxy.holder().scrape(ScrapeCall("fast", "", "text/plain", "", "", 10.0))
        heads: list[object] = []
        stream.head.addBoth(heads.append)
        proxy.flush()
        self.assertEqual(getattr(heads[0], "status", heads[0]), 200)
        self.assertEqual(proxy.holder(), second.link)
        self.assertNotIn("fast", first.connection.registeredPaths())


class TakeoverLogTests(SynchronousTestCase):
    def test_takeoversCapped(self) -> None:
        """
        A same-launch reconnect takes its paths one registration at a time:
        the first L{linkModule.PATHS_LOGGED} are logged at INFO, then one
        line says the rest go to debug; the metric counts them all.
        """
        self.patch(linkModule, "PATHS_LOGGED", 1)
        proxy = Ownership()
        proxy.connect("a1", launchId="L1")
        with capturedLogs() as events:
            new = proxy.connect("a1", launchId="L1")
        lines = [text(e) for e in holderLines(events)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("1 path(s) change holder", lines[0])
        infos = [text(e) for e in events if e["log_level"] == LogLevel.info]
        self.assertIn(
            f"agent 'a1' ({new.link.agentId}) took more than 1 paths from other links; "
            "the rest are logged at debug level",
            infos,
        )
        self.assertEqual(proxy.changes("takeover"), 2)


class ReloadTests(SynchronousTestCase):
    def test_revokedStandbyNotPromoted(self) -> None:
        """
        A reload revoking identity C{x} disconnects its agents, the holder
        and a standby: the path goes straight to the standby of C{y}, once,
        with reason C{reload}.
        """
        x, y = Identity("x", "tx"), Identity("y", "ty")
        settings = ProxySettings(identities=(x, y))
        proxy = Ownership(settings)
        server = buildProxy(
            settings, proxy.clock, reloadSettings=lambda warn: ProxySettings(identities=(y,))
        )
        proxy.factory, proxy.registry = server.linkFactory, server.registry
        proxy.connect("a", token="tx")
        proxy.connect("b", token="tx")
        c = proxy.connect("c", token="ty")
        with capturedLogs() as events:
            server.reload()
            proxy.flush()
        self.assertEqual(proxy.holder(), c.link)
        self.assertEqual((proxy.changes("reload"), proxy.changes("lost")), (2, None))
        (line,) = holderLines(events)
        self.assertIn("the holder's identity was revoked on reload", text(line))
