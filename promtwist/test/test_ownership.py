"""
Path ownership over real links: agents and proxy joined in memory
(L{twisted.test.iosim}) with a fake clock. What a standby is told, how a
promotion or a displacement reaches both agents, and what the operator sees
(one log line per holder change, the metric, both /debug pages).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from promtwist.agent.connection import ProxyConnection, ProxyConnectionFactory
from promtwist.agent.scraper import Scraper
from promtwist.config.settings import AgentSettings, Identity, PathConfig, ProxySettings
from promtwist.protocol.promtwist_pb2 import HOLDER, Frame, Holder, PathStatus
from promtwist.protocol.session import LinkState
from promtwist.proxy.link import AgentLink
from promtwist.test.helpers import agentLinkFactory
from promtwist.test.memorytarget import MemoryTargets
from promtwist.test.test_framing import encode
from promtwist.test.test_link import PATHS, Target, TCPStringTransport

# The clock starts here, so that since-times are not the epoch.
T0 = 1_764_547_200.0


class Agent:
    """
    One agent connected to the shared proxy of an L{Ownership}.
    """

    def __init__(self, connection: ProxyConnection, link: AgentLink, pump: IOPump) -> None:
        self.connection = connection
        self.link = link
        self.pump = pump

    def standing(self, path: str = "fast") -> str:
        return self.connection.standings[path].describe()


class Ownership:
    """
    One proxy and any number of agents serving L{PATHS}.
    """

    def __init__(self, proxySettings: ProxySettings = ProxySettings()) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.http = MemoryTargets(Target())
        self.factory = agentLinkFactory(proxySettings, self.clock)
        self.registry = self.factory.registry
        self.agents: list[Agent] = []

    def connect(
        self,
        name: str,
        launchId: str = "",
        token: str = "",
        host: str = "",
        targets: tuple[PathConfig, ...] = (),
    ) -> Agent:
        """
        @param targets: the agent's C{agent.targets}, claimed beside L{PATHS}.
        """
        settings = AgentSettings(name=name, path_configs=PATHS, agent_token=token, targets=targets)
        agentFactory = ProxyConnectionFactory(
            settings, Scraper(settings, self.http.pool, self.clock), self.clock
        )
        agentFactory.launchId = launchId or f"launch-of-{name}-{len(self.agents)}"
        agentFactory.hostName = host or f"host-{len(self.agents)}"

        def proxyLink() -> AgentLink:
            link = self.factory.buildProtocol(None)
            assert isinstance(link, AgentLink)
            return link

        connection, link, pump = connectedServerAndClient(
            proxyLink,
            lambda: agentFactory.buildProtocol(None),
            clock=self.clock,
            greet=False,
        )
        agent = Agent(connection, link, pump)
        self.agents.append(agent)
        self.flush()
        return agent

    def flush(self) -> None:
        for _ in range(5):
            for agent in self.agents:
                agent.pump.flush()
            self.http.flush()

    def holder(self, path: str = "fast") -> AgentLink:
        (link,) = self.registry.lookup(path)
        assert isinstance(link, AgentLink)
        return link

    def changes(self, reason: str) -> float | None:
        return self.factory.metrics.registry.get_sample_value(
            "proxy_path_holder_changes_total", {"reason": reason}
        )


def holderLines(events: Sequence[LogEvent]) -> list[LogEvent]:
    return [
        e for e in events if "change holder" in e["log_format"] and e["log_level"] == LogLevel.info
    ]


def text(event: LogEvent) -> str:
    return formatEvent(event)


class StandbyTests(SynchronousTestCase):
    def test_secondClaimWaitsAndIsTold(self) -> None:
        """
        A second agent claiming held paths is queued, not refused: both ends
        log it at INFO, and the agent knows behind whom it waits and since
        when.
        """
        proxy = Ownership()
        first = proxy.connect("a1")
        with capturedLogs() as events:
            second = proxy.connect("a2")
        self.assertEqual(proxy.holder(), first.link)
        self.assertEqual(first.standing(), "held by this agent since 2025-12-01T00:00:00Z")
        self.assertEqual(
            second.standing(),
            f"standby #1 behind agent 'a1' on host-0 ({first.link.agentId}) "
            "(holder since 2025-12-01T00:00:00Z)",
        )
        self.assertEqual(second.connection.registeredPaths().keys(), {"fast", "slow"})
        lines = [text(e) for e in events if e["log_level"] == LogLevel.info]
        self.assertTrue(
            any("agent 'a2' waits (standby #1) behind agent 'a1' (host-0" in t for t in lines),
            lines,
        )
        self.assertTrue(any("waiting for /fast" in t for t in lines), lines)
        self.assertFalse([e for e in events if e["log_level"] >= LogLevel.warn])
        self.assertEqual(
            proxy.factory.metrics.registry.get_sample_value(
                "proxy_rejections_total", {"reason": "path_taken"}
            ),
            None,
        )


class PromotionTests(SynchronousTestCase):
    """
    The first standby holds the path as soon as the holder leaves, however
    it leaves, is told with a PathStatus frame, and the change is logged
    once and counted by reason.
    """

    def promoted(self, leave: str, reason: str, atOnce: bool) -> Ownership:
        proxy = Ownership()
        first = proxy.connect("a1")
        second = proxy.connect("a2")
        with capturedLogs() as events:
            if leave == "goodbye":
                first.connection.sendGoodbye("stopping")
            elif leave == "lost":
                first.connection.transport.abortConnection()
            elif leave == "evicted":
                first.link.evict("evicted: nothing heard")
            elif leave == "closed":
                first.link.protocolError("nonsense")
            if atOnce:
                # The same reactor turn: no frame has moved yet.
                self.assertEqual(proxy.holder(), second.link)
            proxy.flush()
        self.assertEqual(proxy.holder(), second.link)
        self.assertEqual(proxy.holder("slow"), second.link)
        self.assertTrue(second.standing().startswith("held by this agent since"))
        (entry, _) = proxy.registry.snapshot()
        self.assertEqual(entry.agents, (second.link,))
        # One line for the agent's two paths.
        lines = holderLines(events)
        self.assertEqual(len(lines), 1, [text(e) for e in lines])
        self.assertEqual(
            text(lines[0]),
            f"2 path(s) change holder from agent 'a1' (host-0, {first.link.agentId}) to "
            f"'a2' (host-1, {second.link.agentId}): {reason}: /fast, /slow",
        )
        agentSide = [text(e) for e in events if "promoted from standby" in e["log_format"]]
        self.assertEqual(len(agentSide), 2)
        self.assertIn(f"now serving /fast: promoted from standby ({reason})", agentSide)
        return proxy

    def test_holderChangesLogBounded(self) -> None:
        """
        Holder changes a peer can make at will (the reviewer's
        C{holderflood.py}: holders that go, each promoting its standby)
        cost a few INFO lines a minute, then a count; the metric counts
        every change.
        """
        proxy = Ownership()
        agents = [proxy.connect(f"a{i}") for i in range(30)]
        with capturedLogs() as events:
            for agent in agents[:-1]:
                agent.connection.transport.abortConnection()
                proxy.flush()
            self.assertEqual(proxy.holder(), agents[-1].link)
            proxy.clock.advance(60)
            proxy.factory.warnings.summariseExpired()
        lines = holderLines(events)
        self.assertEqual(len(lines), proxy.factory.warnings.burst, [text(e) for e in lines])
        self.assertIn(
            f"{29 - proxy.factory.warnings.burst} more path holder change message(s) "
            "suppressed in 60s",
            [text(e) for e in events],
        )
        self.assertEqual(proxy.changes("lost"), 2 * 29)

    def test_goodbye(self) -> None:
        proxy = self.promoted("goodbye", "the holder said goodbye", atOnce=False)
        self.assertEqual(proxy.changes("goodbye"), 2)

    def test_lost(self) -> None:
        proxy = self.promoted("lost", "the holder's link was lost", atOnce=False)
        self.assertEqual(proxy.changes("lost"), 2)

    def test_evicted(self) -> None:
        proxy = self.promoted("evicted", "the holder was evicted for inactivity", atOnce=True)
        self.assertEqual(proxy.changes("evicted"), 2)

    def test_closedByTheProxy(self) -> None:
        """
        A link the proxy closes (here for a protocol error) hands its paths
        on before its connection is even gone.
        """
        proxy = self.promoted("closed", "the holder's link was lost", atOnce=True)
        self.assertEqual(proxy.changes("lost"), 2)

    def test_unregistered(self) -> None:
        proxy = Ownership()
        first = proxy.connect("a1")
        second = proxy.connect("a2")
        first.connection.unregisterPath(PATHS[0])
        proxy.flush()
        self.assertEqual((proxy.holder(), proxy.holder("slow")), (second.link, first.link))
        self.assertEqual(proxy.changes("unregistered"), 1)
        self.assertNotIn("fast", first.connection.standings)

    def test_debugPages(self) -> None:
        """
        The proxy's snapshot, which its /debug page prints, lists each
        path's holder and standbys in order.
        """
        proxy = Ownership()
        first, second, third = (proxy.connect(f"a{i}") for i in (1, 2, 3))
        (entry, _) = proxy.registry.snapshot()
        self.assertEqual(entry.agents, (first.link,))
        self.assertEqual([c.agent for c in entry.standbys], [second.link, third.link])
        self.assertEqual(
            third.standing(),
            f"standby #2 behind agent 'a1' on host-0 "
            f"({first.link.agentId}) (holder since 2025-12-01T00:00:00Z)",
        )


class TakeoverTests(SynchronousTestCase):
    def test_sameLaunchDisplaces(self) -> None:
        """
        The same agent process on a second link (its first not yet found
        dead) takes its paths at once; it gave the first link up, so that
        link's claim is dropped, not queued, and its agent is told by whom
        and warns.
        """
        proxy = Ownership()
        old = proxy.connect("a1", launchId="L1", host="h")
        with capturedLogs() as events:
            new = proxy.connect("a1", launchId="L1", host="h")
        self.assertEqual(proxy.holder(), new.link)
        self.assertTrue(new.standing().startswith("held by this agent"))
        self.assertNotIn("fast", old.connection.standings)
        self.assertEqual(old.connection.registeredPaths(), {})
        (entry, _) = proxy.registry.snapshot()
        self.assertEqual(entry.standbys, ())
        warnings = [text(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn(
            f"no longer claiming /fast on this link: agent 'a1' on h ({new.link.agentId}) "
            "holds it (the same agent claimed it again)",
            warnings,
        )
        self.assertEqual(proxy.changes("takeover"), 2)
        self.assertEqual(
            proxy.factory.metrics.registry.get_sample_value("proxy_agent_displacement_total"), 2
        )

    def test_noTakeoverByName(self) -> None:
        """
        With the port open, a shared token, or a group identity, an agent
        copying the holder's name (another launch) only waits; the holder
        keeps the path while the rogue is there and after it leaves.
        """
        group = Identity("team_a", "group-token")
        for settings, token in [
            (ProxySettings(), ""),
            (ProxySettings(agent_token="shared"), "shared"),
            (ProxySettings(identities=(group,)), "group-token"),
        ]:
            proxy = Ownership(settings)
            holder = proxy.connect("prod", launchId="L1", token=token, host="h")
            rogue = proxy.connect("prod", launchId="L2", token=token, host="h")
            self.assertEqual(proxy.holder(), holder.link, settings)
            self.assertTrue(rogue.standing().startswith("standby #1"))
            rogue.connection.transport.loseConnection()
            proxy.flush()
            self.assertEqual(proxy.holder(), holder.link)
            self.assertTrue(holder.standing().startswith("held by this agent"))
            self.assertIsNone(proxy.changes("takeover"))

    def test_perAgentIdentityDisplaces(self) -> None:
        """
        An identity declared per agent proves the agent: a restart under a
        new name and launch takes its paths at once.
        """
        mine = Identity("db1", "db1-token", perAgent=True)
        proxy = Ownership(ProxySettings(identities=(mine,)))
        old = proxy.connect("Unnamed-pod-a", token="db1-token")
        new = proxy.connect("Unnamed-pod-b", token="db1-token")
        self.assertEqual(proxy.holder(), new.link)
        self.assertTrue(old.standing().startswith("standby #1 behind agent 'Unnamed-pod-b'"))


class AgentFrameTests(SynchronousTestCase):
    def test_pathStatusBeforeWelcomeRefused(self) -> None:
        """
        A PathStatus is a frame of an established link: before the Welcome
        it is a protocol error that closes the link.
        """
        settings = AgentSettings(name="a1", path_configs=PATHS)
        clock = Clock()
        http = MemoryTargets(Target())
        factory = ProxyConnectionFactory(settings, Scraper(settings, http.pool, clock), clock)
        connection = factory.buildProtocol(None)
        connection.makeConnection(TCPStringTransport())
        with capturedLogs() as events:
            connection.dataReceived(encode(Frame(path_status=PathStatus(path="fast", role=HOLDER))))
        self.assertIs(connection.state, LinkState.CLOSED)
        self.assertIn("path_status frame before the handshake completed", text(events[-1]))

    def test_statusWithAnUnknownRole(self) -> None:
        """
        A status naming a role this agent does not know is warned about and
        changes nothing: the agent keeps what it was last told.
        """
        proxy = Ownership()
        agent = proxy.connect("a1")
        with capturedLogs() as events:
            agent.connection.frameReceived(
                Frame(path_status=PathStatus(path="fast", role=7))  # type: ignore[arg-type]
            )
        (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("no known role (7)", text(warning))
        self.assertTrue(agent.standing().startswith("held by this agent"))

    def test_statusForAnUnregisteredPath(self) -> None:
        """
        A status for a path this agent did not register is warned about
        (clipped), and changes nothing.
        """
        proxy = Ownership()
        agent = proxy.connect("a1")
        status = PathStatus(path="x" * 10_000, role=HOLDER, holder=Holder(agent_name="a1"))
        with capturedLogs() as events:
            agent.connection.frameReceived(Frame(path_status=status))
        (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertLess(len(text(warning)), 400)
        self.assertNotIn("x" * 10_000, agent.connection.standings)
        self.assertIs(agent.connection.state, LinkState.ESTABLISHED)
