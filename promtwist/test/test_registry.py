"""
Tests for L{promtwist.proxy.registry}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import LEGACY_TOKEN_IDENTITY, Identity, ProxySettings
from promtwist.proxy.auth import ANONYMOUS
from promtwist.proxy.registration import PATH_OVERHEAD, RegistrationRefused, checkPath
from promtwist.proxy.registry import AgentHandle, HolderChange, Registry, provesSameAgent


@dataclass(eq=False)
class FakeAgent:
    """
    An agent handle that records what the registry tells it.

    @ivar told: C{(path, role, reason, holder id, since, position)} per
        L{pathRoleChanged} call.
    """

    agentId: str
    name: str = "agent"
    hostName: str = "host"
    launchId: str = "launch"
    consolidated: bool = False
    identity: Identity = ANONYMOUS
    kind: str = "agent"
    told: list[tuple[str, str, str, str, float, int]] = field(default_factory=list)

    def pathRoleChanged(
        self,
        path: str,
        role: str,
        reason: str,
        holder: AgentHandle,
        since: float,
        position: int = 0,
    ) -> None:
        self.told.append((path, role, reason, holder.agentId, since, position))


def connected(registry: Registry, *agents: FakeAgent) -> None:
    for agent in agents:
        registry.addAgent(agent)


class PathRuleTests(SynchronousTestCase):
    def test_multiSegmentAllowed(self) -> None:
        checkPath("team/app1/metrics")

    def test_refused(self) -> None:
        for path, why in [
            ("", "empty path"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a b", "contains ' '"),
            ("a?b", "contains '?'"),
            ("a/../b", "dot segment"),
        ]:
            with self.assertRaises(RegistrationRefused) as raised:
                checkPath(path)
            self.assertIn(why, str(raised.exception), path)


class RegistryTests(SynchronousTestCase):
    def test_registerAndLookup(self) -> None:
        registry = Registry()
        a = FakeAgent("1")
        connected(registry, a)
        registry.registerPath(a, "app/metrics", "App", {"k": "v"})
        self.assertEqual(registry.lookup("app/metrics"), (a,))
        self.assertEqual(registry.lookup("app"), ())
        (entry,) = registry.snapshot()
        self.assertEqual(
            (entry.path, entry.name, dict(entry.labels)), ("app/metrics", "App", {"k": "v"})
        )

    def test_disconnectedAgentRefused(self) -> None:
        registry = Registry()
        self.assertRaises(RegistrationRefused, registry.registerPath, FakeAgent("1"), "p", "", {})

    def test_reservedPath(self) -> None:
        registry = Registry(reservedPaths=["discovery"])
        a = FakeAgent("1")
        connected(registry, a)
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(a, "discovery", "", {})
        self.assertIn("reserved", str(raised.exception))

    def test_identityGlobs(self) -> None:
        """
        The registry asks whether the agent's identity may serve the path.
        """
        team = Identity("team_a", "ta", ("team_a_*",))
        registry = Registry(mayServe=lambda identity, path: path.startswith("team_a_"))
        agent = FakeAgent("1", identity=team)
        connected(registry, agent)
        registry.registerPath(agent, "team_a_metrics", "", {})
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(agent, "team_b_metrics", "", {})
        self.assertEqual(
            str(raised.exception),
            "agent identity 'team_a' is not authorized to serve /team_b_metrics",
        )
        self.assertEqual(raised.exception.kind, "unauthorized")
        self.assertEqual(registry.lookup("team_b_metrics"), ())

    def test_pathsPerAgentLimit(self) -> None:
        registry = Registry(limits=ProxySettings(max_paths_per_agent=2))
        agent = FakeAgent("1")
        connected(registry, agent)
        registry.registerPath(agent, "p1", "", {})
        registry.registerPath(agent, "p2", "", {})
        registry.registerPath(agent, "p2", "again", {})
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(agent, "p3", "", {})
        self.assertIn("proxy.internal.maxPathsPerAgent", str(raised.exception))
        self.assertEqual(raised.exception.kind, "limit")

    def test_consolidated(self) -> None:
        """
        Consolidated agents share a path; removing one keeps the others, and
        exclusive and consolidated registrations do not mix.
        """
        registry = Registry(limits=NO_RETENTION)
        a, b = FakeAgent("1", consolidated=True), FakeAgent("2", consolidated=True)
        c = FakeAgent("3")
        connected(registry, a, b, c)
        registry.registerPath(a, "p", "", {})
        registry.registerPath(b, "p", "", {})
        self.assertEqual(registry.lookup("p"), (a, b))
        self.assertRaises(RegistrationRefused, registry.registerPath, c, "p", "", {})
        registry.removeAgent(a)
        self.assertEqual(registry.lookup("p"), (b,))
        registry.registerPath(c, "q", "", {})
        d = FakeAgent("4", consolidated=True)
        connected(registry, d)
        self.assertRaises(RegistrationRefused, registry.registerPath, d, "q", "", {})

    def test_unregister(self) -> None:
        registry = Registry()
        a, b = FakeAgent("1"), FakeAgent("2")
        connected(registry, a, b)
        registry.registerPath(a, "p", "", {})
        self.assertRaises(RegistrationRefused, registry.unregisterPath, b, "p")
        registry.unregisterPath(a, "p")
        self.assertEqual(registry.lookup("p"), ())
        other = FakeAgent("3", name="other")
        connected(registry, other)
        registry.registerPath(other, "p", "", {})
        self.assertEqual(registry.lookup("p"), (other,))

    def test_removeAgentSweepsPaths(self) -> None:
        registry = Registry()
        a = FakeAgent("1")
        connected(registry, a)
        for path in ("p1", "p2"):
            registry.registerPath(a, path, "", {})
        registry.removeAgent(a)
        self.assertEqual(registry.snapshot(), [])
        self.assertEqual(registry.agents(), [])

    def test_forgotten(self) -> None:
        """
        The observers hear of each key the registry forgets: unregistered at
        once, left by its last agent only once its retention is over (or at
        once without one), and a path taken over by a standby never.
        """
        clock = Clock()
        registry = Registry(limits=ProxySettings(departed_path_retention_secs=10), clock=clock)
        forgotten: list[str] = []
        registry.forgottenObservers.append(forgotten.append)
        a, b = FakeAgent("1"), FakeAgent("2")
        connected(registry, a)
        connected(registry, b)
        for path in ("p1", "p2", "//node1:9100"):
            registry.registerPath(a, path, "", {})
        registry.registerPath(b, "p2", "", {})
        registry.unregisterPath(a, "p1")
        self.assertEqual(forgotten, ["p1"])
        registry.removeAgent(a)
        self.assertEqual(forgotten, ["p1"])
        clock.advance(11)
        registry.expireDeparted()
        self.assertEqual(forgotten, ["p1", "//node1:9100"])
        gone = Registry(limits=NO_RETENTION)
        gone.forgottenObservers.append(forgotten.append)
        connected(gone, a)
        gone.registerPath(a, "p3", "", {})
        gone.removeAgent(a)
        self.assertEqual(forgotten[-1], "p3")


# Where a test is about what leaving frees, departed paths are not kept.
NO_RETENTION = ProxySettings(departed_path_retention_secs=0)


def cost(agent: FakeAgent, path: str, name: str, labels: dict[str, str]) -> int:
    """
    What the registry charges for one registration, by its documented rule.
    """
    texts = [path, name, agent.name, agent.hostName, *labels, *labels.values()]
    return PATH_OVERHEAD + sum(len(text.encode("utf-8")) for text in texts)


class LimitTests(SynchronousTestCase):
    """
    Each part of a registration is bounded by a setting, and a refusal names
    the setting.
    """

    def refused(self, limits: ProxySettings, path: str, name: str, labels: dict[str, str]) -> str:
        """
        Register with C{limits} and return the reason of the refusal, which
        must leave the registry as it was.
        """
        registry = Registry(limits=limits)
        agent = FakeAgent("1")
        connected(registry, agent)
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(agent, path, name, labels)
        self.assertEqual((registry.snapshot(), registry.registeredBytes), ([], 0))
        return f"{raised.exception.kind}: {raised.exception}"

    def test_pathLength(self) -> None:
        why = self.refused(ProxySettings(max_path_length=8), "p" * 9, "", {})
        self.assertEqual(
            why,
            "long_path: path /ppppppppp has 9 characters, more than the 8 allowed "
            "(proxy.internal.maxPathLength)",
        )

    def test_hugePathClipped(self) -> None:
        """
        A refusal quotes at most a clipped path, so a megabyte path makes a
        short reason.
        """
        why = self.refused(ProxySettings(), "p" * 1_000_000, "", {})
        self.assertIn("(1000000 characters)", why)
        self.assertLess(len(why), 400)

    def test_nameLength(self) -> None:
        why = self.refused(ProxySettings(max_path_name_length=3), "p", "name", {})
        self.assertEqual(
            why,
            "long_name: the name of path /p has 4 characters, more than the 3 allowed "
            "(proxy.internal.maxPathNameLength)",
        )

    def test_labelCount(self) -> None:
        why = self.refused(ProxySettings(max_labels_per_path=1), "p", "", {"a": "1", "b": "2"})
        self.assertEqual(
            why,
            "labels: path /p has 2 labels, more than the 1 allowed "
            "(proxy.internal.maxLabelsPerPath)",
        )

    def test_labelNameLength(self) -> None:
        why = self.refused(ProxySettings(max_label_name_length=2), "p", "", {"abc": ""})
        self.assertIn("label_name: a label name of path /p has 3 characters", why)
        self.assertIn("(proxy.internal.maxLabelNameLength)", why)

    def test_labelNameSyntax(self) -> None:
        for key in ("1a", "a-b", "", "é", "a b"):
            why = self.refused(ProxySettings(), "p", "", {key: "v"})
            self.assertIn("is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)", why)
            self.assertTrue(why.startswith("label_name: "), why)

    def test_labelValueLength(self) -> None:
        why = self.refused(ProxySettings(max_label_value_length=2), "p", "", {"k": "abc"})
        self.assertEqual(
            why,
            "label_value: label k of path /p has 3 characters, more than the 2 allowed "
            "(proxy.internal.maxLabelValueLength)",
        )

    def test_labelValueNotUnicode(self) -> None:
        why = self.refused(ProxySettings(), "p", "", {"k": "\udcff"})
        self.assertEqual(why, "invalid: label k of path /p is not valid UTF-8")

    def test_budget(self) -> None:
        agent = FakeAgent("1")
        limit = cost(agent, "p1", "", {}) + cost(agent, "p2", "", {})
        registry = Registry(limits=ProxySettings(max_registered_bytes=limit))
        connected(registry, agent)
        registry.registerPath(agent, "p1", "", {})
        registry.registerPath(agent, "p2", "", {})
        self.assertEqual(registry.registeredBytes, limit)
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(agent, "p3", "", {})
        self.assertIn(
            f"over its budget of {limit} (proxy.internal.maxRegisteredBytes)",
            str(raised.exception),
        )
        self.assertEqual(raised.exception.kind, "budget")
        # Growing a path's labels is charged too, and refused the same way.
        self.assertRaises(RegistrationRefused, registry.registerPath, agent, "p1", "", {"k": "v"})
        self.assertEqual(registry.snapshot()[0].labels, {})
        registry.unregisterPath(agent, "p2")
        registry.registerPath(agent, "p3", "", {})
        self.assertEqual(registry.lookup("p3"), (agent,))


class AccountingTests(SynchronousTestCase):
    """
    L{Registry.registeredBytes} is what the registered paths cost, exactly,
    through every change.
    """

    def test_everyChange(self) -> None:
        registry = Registry()
        a = FakeAgent("1", name="prod", hostName="h1", identity=PER_AGENT)
        connected(registry, a)
        registry.registerPath(a, "p", "App", {"k": "v"})
        self.assertEqual(registry.registeredBytes, cost(a, "p", "App", {"k": "v"}))
        # Re-registering with other labels charges the difference.
        registry.registerPath(a, "p", "", {"key": "välue", "x": "y"})
        self.assertEqual(registry.registeredBytes, cost(a, "p", "", {"key": "välue", "x": "y"}))
        # Displacement by the same launch under another host name: the
        # displaced claim is dropped and freed at once.
        b = FakeAgent("2", name="prod", hostName="a-longer-host", identity=PER_AGENT)
        connected(registry, b)
        registry.registerPath(b, "p", "", {})
        self.assertEqual(registry.registeredBytes, cost(b, "p", "", {}))
        # A per-agent identity's other process displaces it: the displaced
        # claim waits, and is paid for, until its agent leaves.
        c = FakeAgent("3", name="prod", launchId="other", identity=PER_AGENT)
        connected(registry, c)
        registry.registerPath(c, "p", "", {})
        self.assertEqual(registry.lookup("p"), (c,))
        self.assertEqual(registry.registeredBytes, cost(b, "p", "", {}) + cost(c, "p", "", {}))
        registry.removeAgent(c)
        self.assertEqual(registry.registeredBytes, cost(b, "p", "", {}))
        registry.unregisterPath(b, "p")
        self.assertEqual(registry.registeredBytes, 0)

    def test_consolidated(self) -> None:
        """
        Each agent joining a consolidated path pays its name and host name;
        the path itself is paid once, and freed with its last agent.
        """
        registry = Registry(limits=NO_RETENTION)
        a = FakeAgent("1", name="a", hostName="h1", consolidated=True)
        b = FakeAgent("2", name="bb", hostName="h22", consolidated=True)
        connected(registry, a, b)
        registry.registerPath(a, "p", "App", {"k": "v"})
        registry.registerPath(b, "p", "ignored", {"other": "labels"})
        registry.registerPath(b, "p", "ignored", {})
        joined = cost(a, "p", "App", {"k": "v"}) + len("bb") + len("h22")
        self.assertEqual(registry.registeredBytes, joined)
        registry.removeAgent(a)
        self.assertEqual(registry.registeredBytes, joined - len("a") - len("h1"))
        registry.removeAgent(b)
        self.assertEqual(registry.registeredBytes, 0)

    def test_refusedChangesNothing(self) -> None:
        registry = Registry()
        owner, other = FakeAgent("1", name="prod"), FakeAgent("2", consolidated=True)
        connected(registry, owner, other)
        registry.registerPath(owner, "p", "", {})
        before = (registry.registeredBytes, registry.generation)
        self.assertRaises(RegistrationRefused, registry.registerPath, other, "p", "x", {})
        self.assertEqual((registry.registeredBytes, registry.generation), before)

    def test_throughPromotions(self) -> None:
        """
        Every claim, served or waiting, is paid for exactly, through
        queueing, relabelling a standby claim, promotion on every kind of
        departure, and a takeover.
        """
        registry = Registry(limits=NO_RETENTION)
        a = FakeAgent("1", name="a", hostName="h1", launchId="la")
        b = FakeAgent("2", name="bb", hostName="h22", launchId="lb")
        c = FakeAgent("3", name="ccc", hostName="h333", launchId="lc")
        connected(registry, a, b, c)
        registry.registerPath(a, "p", "A", {"k": "v"})
        registry.registerPath(b, "p", "B", {})
        registry.registerPath(c, "p", "C", {"x": "y"})
        claims = {
            a: cost(a, "p", "A", {"k": "v"}),
            b: cost(b, "p", "B", {}),
            c: cost(c, "p", "C", {"x": "y"}),
        }
        self.assertEqual(registry.registeredBytes, sum(claims.values()))
        # A standby claiming again with other labels pays the difference.
        registry.registerPath(b, "p", "B", {"longer": "labels"})
        claims[b] = cost(b, "p", "B", {"longer": "labels"})
        self.assertEqual(registry.registeredBytes, sum(claims.values()))
        registry.unregisterPath(a, "p")
        del claims[a]
        self.assertEqual(registry.registeredBytes, sum(claims.values()))
        # The same agent (c's launch) comes back on a new link and takes over.
        c2 = FakeAgent("4", name="ccc", hostName="h333", launchId="lc")
        connected(registry, c2)
        registry.registerPath(c2, "p", "C2", {})
        claims[c2] = cost(c2, "p", "C2", {})
        self.assertEqual(registry.registeredBytes, sum(claims.values()))
        registry.removeAgent(c2, "evicted")
        del claims[c2]
        self.assertEqual(registry.registeredBytes, sum(claims.values()))
        registry.removeAgent(b, "goodbye")
        del claims[b]
        self.assertEqual(registry.registeredBytes, sum(claims.values()))
        registry.removeAgent(c, "lost")
        self.assertEqual((registry.registeredBytes, registry.snapshot()), (0, []))

    def test_standbysCountAgainstTheBudget(self) -> None:
        """
        A standby claim is refused when the budget cannot hold it, like any
        other registration, and the holder is untouched.
        """
        a, b = FakeAgent("1", name="a"), FakeAgent("2", name="b")
        registry = Registry(limits=ProxySettings(max_registered_bytes=cost(a, "p", "", {})))
        connected(registry, a, b)
        registry.registerPath(a, "p", "", {})
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(b, "p", "", {})
        self.assertIn("proxy.internal.maxRegisteredBytes", str(raised.exception))
        (entry,) = registry.snapshot()
        self.assertEqual((entry.agents, entry.standbys), ((a,), ()))

    def test_standbysCountAgainstPathsPerAgent(self) -> None:
        registry = Registry(limits=ProxySettings(max_paths_per_agent=1))
        a, b = FakeAgent("1", name="a"), FakeAgent("2", name="b")
        connected(registry, a, b)
        registry.registerPath(a, "p", "", {})
        registry.registerPath(b, "p", "", {})
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(b, "q", "", {})
        self.assertIn("proxy.internal.maxPathsPerAgent", str(raised.exception))


class GenerationTests(SynchronousTestCase):
    """
    L{Registry.generation} moves with every change discovery shows, and only
    then; L{PathEntry.changed} says which entries changed.
    """

    def test_changes(self) -> None:
        registry = Registry()
        a = FakeAgent("1", consolidated=True)
        b = FakeAgent("2", consolidated=True)
        seen = [registry.generation]

        def moved() -> bool:
            seen.append(registry.generation)
            return seen[-1] != seen[-2]

        connected(registry, a, b)
        self.assertFalse(moved())
        registry.registerPath(a, "p", "", {})
        self.assertTrue(moved())
        registry.registerPath(a, "p", "", {})
        self.assertFalse(moved())
        registry.registerPath(a, "q", "", {})
        self.assertTrue(moved())
        (p, q) = registry.snapshot()
        self.assertLess(p.changed, q.changed)
        registry.registerPath(b, "p", "", {})
        self.assertTrue(moved())
        self.assertEqual(registry.snapshot()[0].changed, registry.generation)
        registry.removeAgent(b)
        self.assertTrue(moved())
        registry.unregisterPath(a, "q")
        self.assertTrue(moved())
        self.assertEqual([e.path for e in registry.snapshot()], ["p"])

    def test_exclusiveRelabel(self) -> None:
        registry = Registry()
        a = FakeAgent("1")
        connected(registry, a)
        registry.registerPath(a, "p", "", {"k": "v"})
        before = registry.generation
        registry.registerPath(a, "p", "", {"k": "v"})
        self.assertEqual(registry.generation, before)
        registry.registerPath(a, "p", "", {"k": "w"})
        self.assertGreater(registry.generation, before)


GROUP = Identity("team_a", "ta")
PER_AGENT = Identity("db1", "secret-of-db1", perAgent=True)
# Every credential under which several agents prove the same identity: the
# open port, the legacy shared token, and a proxy.auth group identity (by
# token or by a client certificate naming it).
SHARED_CREDENTIALS = [ANONYMOUS, Identity(LEGACY_TOKEN_IDENTITY, "shared"), GROUP]


class RegistryCase(SynchronousTestCase):
    """
    A registry with a fake clock, recording every holder change.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000)
        self.registry = Registry(limits=NO_RETENTION, clock=self.clock)
        self.changes: list[HolderChange] = []
        self.registry.holderObservers.append(self.changes.extend)

    def agents(self, *agents: FakeAgent) -> None:
        connected(self.registry, *agents)

    def standbys(self, path: str = "p") -> list[str]:
        (entry,) = [e for e in self.registry.snapshot() if e.path == path]
        return [claim.agent.agentId for claim in entry.standbys]

    def changed(self) -> list[tuple[str, str, str]]:
        return [(c.old.agentId, c.new.agentId, c.reason) for c in self.changes]


class OwnershipTests(RegistryCase):
    """
    An exclusive path has a holder and an ordered standby queue: claims for
    a held path wait, the first standby is promoted as soon as the holder
    leaves, and only proof of being the same agent displaces a connected
    holder.
    """

    def test_claimForHeldPathWaits(self) -> None:
        """
        A claim for a held path is accepted as a standby, told its place and
        who holds the path since when; standbys queue in claim order and
        get no scrapes.
        """
        a, b, c = FakeAgent("1", "a"), FakeAgent("2", "b"), FakeAgent("3", "c")
        self.agents(a, b, c)
        held = self.registry.registerPath(a, "p", "A", {"k": "a"})
        self.assertEqual((held.position, held.holder, held.since), (0, a, 1_000))
        self.clock.advance(5)
        first = self.registry.registerPath(b, "p", "B", {"k": "b"})
        second = self.registry.registerPath(c, "p", "C", {})
        self.assertEqual((first.position, first.holder, first.since), (1, a, 1_000))
        self.assertEqual((second.position, second.holder), (2, a))
        # Claiming again keeps the place in line; the same claim again
        # changes nothing.
        self.assertEqual(self.registry.registerPath(b, "p", "B", {"k": "b2"}).position, 1)
        before = (self.registry.generation, self.registry.registeredBytes)
        self.assertEqual(self.registry.registerPath(b, "p", "B", {"k": "b2"}).position, 1)
        self.assertEqual((self.registry.generation, self.registry.registeredBytes), before)
        self.assertEqual(self.registry.lookup("p"), (a,))
        self.assertEqual(self.standbys(), ["2", "3"])
        (entry,) = self.registry.snapshot()
        self.assertEqual((entry.name, dict(entry.labels)), ("A", {"k": "a"}))
        self.assertEqual(entry.standbys[0].since, 1_005)
        self.assertEqual(self.changes, [])

    def promoted(self, leave: str) -> None:
        """
        The holder leaves by C{leave} (a removal reason or C{unregistered}):
        the first standby holds the path at once, with its own name and
        labels, is told so, and one change is announced with that reason.
        """
        a, b, c = FakeAgent("1", "a"), FakeAgent("2", "b"), FakeAgent("3", "c")
        self.agents(a, b, c)
        self.registry.registerPath(a, "p", "A", {"k": "a"})
        self.registry.registerPath(b, "p", "B", {"k": "b"})
        self.registry.registerPath(c, "p", "C", {})
        before = self.registry.generation
        self.clock.advance(7)
        if leave == "unregistered":
            self.registry.unregisterPath(a, "p")
        else:
            self.registry.removeAgent(a, leave)
        self.assertEqual(self.registry.lookup("p"), (b,))
        self.assertEqual(self.standbys(), ["3"])
        (entry,) = self.registry.snapshot()
        self.assertEqual((entry.name, dict(entry.labels), entry.since), ("B", {"k": "b"}, 1_007))
        self.assertGreater(entry.changed, before)
        self.assertEqual(self.changed(), [("1", "2", leave)])
        self.assertEqual(b.told, [("p", "holder", leave, "2", 1_007, 0)])
        # The remaining standby learns its new holder and place.
        self.assertEqual(c.told, [("p", "standby", leave, "2", 1_007, 1)])
        self.assertEqual(a.told, [])

    def test_promotionOnUnregister(self) -> None:
        self.promoted("unregistered")

    def test_promotionOnGoodbye(self) -> None:
        self.promoted("goodbye")

    def test_promotionOnLoss(self) -> None:
        self.promoted("lost")

    def test_promotionOnEviction(self) -> None:
        self.promoted("evicted")

    def test_standbyLeavesQuietly(self) -> None:
        """
        A standby that unregisters or leaves changes no holder and frees its
        place; the path goes when its last claim does.
        """
        a, b, c = FakeAgent("1", "a"), FakeAgent("2", "b"), FakeAgent("3", "c")
        self.agents(a, b, c)
        for agent in (a, b, c):
            self.registry.registerPath(agent, "p", "", {})
        self.registry.unregisterPath(b, "p")
        self.assertRaises(RegistrationRefused, self.registry.unregisterPath, b, "p")
        self.registry.removeAgent(c)
        self.assertEqual((self.registry.lookup("p"), self.standbys()), ((a,), []))
        self.assertEqual(self.changes, [])
        self.registry.removeAgent(a)
        self.assertEqual((self.registry.snapshot(), self.registry.registeredBytes), ([], 0))

    def test_chainOfPromotions(self) -> None:
        """
        Standbys are promoted in the order they queued.
        """
        agents = [FakeAgent(str(i), f"a{i}") for i in range(4)]
        self.agents(*agents)
        for agent in agents:
            self.registry.registerPath(agent, "p", "", {})
        for agent in agents[:3]:
            self.registry.removeAgent(agent)
        self.assertEqual(
            self.changed(), [("0", "1", "lost"), ("1", "2", "lost"), ("2", "3", "lost")]
        )

    def test_takeoverBySameLaunch(self) -> None:
        """
        The same agent process (same identity, name and launch id) back on a
        new link takes its paths over at once. It gave its old link up: the
        old claim is dropped, its cost freed, and the old link told; a
        healthy standby stays first in line, told its new holder.
        """
        for identity in SHARED_CREDENTIALS:
            registry = Registry(clock=self.clock)
            changes: list[HolderChange] = []
            registry.holderObservers.append(changes.extend)
            old = FakeAgent("1", "prod", "h", "launch-1", identity=identity)
            new = FakeAgent("2", "prod", "h", "launch-1", identity=identity)
            waiting = FakeAgent("3", "other", identity=identity)
            connected(registry, old, waiting, new)
            registry.registerPath(old, "p", "", {})
            registry.registerPath(waiting, "p", "", {})
            placement = registry.registerPath(new, "p", "", {})
            self.assertEqual((placement.position, placement.holder), (0, new), identity)
            self.assertEqual(registry.lookup("p"), (new,))
            (entry,) = registry.snapshot()
            self.assertEqual([c.agent for c in entry.standbys], [waiting])
            self.assertEqual([(c.old, c.new, c.reason) for c in changes], [(old, new, "takeover")])
            now = self.clock.seconds()
            self.assertEqual(old.told, [("p", "released", "takeover", "2", now, 0)])
            self.assertEqual(waiting.told, [("p", "standby", "takeover", "2", now, 1)])
            self.assertEqual(new.told, [])
            # The old claim no longer counts; the old link's leaving changes nothing.
            registry.removeAgent(old)
            self.assertEqual(registry.lookup("p"), (new,))
            self.assertEqual(len(changes), 1)

    def test_perAgentTakeoverByAnotherProcessKeepsOldFirst(self) -> None:
        """
        A per-agent identity's new process displaces its still-connected old
        one, which may be alive: the old claim waits first in line, told so.
        """
        identity = Identity("db1", "t", perAgent=True)
        registry = Registry(clock=self.clock)
        old = FakeAgent("1", "db1", "h", "launch-1", identity=identity)
        waiting = FakeAgent("3", "other")
        new = FakeAgent("2", "db1", "h", "launch-2", identity=identity)
        connected(registry, old, waiting, new)
        registry.registerPath(old, "p", "", {})
        registry.registerPath(waiting, "p", "", {})
        registry.registerPath(new, "p", "", {})
        (entry,) = registry.snapshot()
        self.assertEqual([c.agent for c in entry.standbys], [old, waiting])
        now = self.clock.seconds()
        self.assertEqual(old.told, [("p", "standby", "takeover", "2", now, 1)])
        self.assertEqual(waiting.told, [("p", "standby", "takeover", "2", now, 2)])

    def test_noTakeoverByName(self) -> None:
        """
        Under every shared credential, an agent presenting the holder's name
        from another launch, host or identity waits as a standby: the
        holder keeps the path, and still holds it after the rogue leaves.
        """
        for identity in SHARED_CREDENTIALS:
            rogues = [
                FakeAgent("r1", "prod", "h", "launch-2", identity=identity),
                FakeAgent("r2", "prod", "elsewhere", "", identity=identity),
                FakeAgent("r3", "prod", "h", "launch-1", identity=Identity("team_b", "tb")),
            ]
            for rogue in rogues:
                registry = Registry(clock=self.clock)
                changes: list[HolderChange] = []
                registry.holderObservers.append(changes.extend)
                holder = FakeAgent("1", "prod", "h", "launch-1", identity=identity)
                connected(registry, holder, rogue)
                registry.registerPath(holder, "p", "", {})
                placement = registry.registerPath(rogue, "p", "", {})
                self.assertEqual((placement.position, placement.holder), (1, holder))
                self.assertEqual(registry.lookup("p"), (holder,), (identity, rogue))
                registry.removeAgent(rogue)
                self.assertEqual(registry.lookup("p"), (holder,))
                self.assertEqual((changes, holder.told), ([], []))

    def test_emptyLaunchIdProvesNothing(self) -> None:
        holder = FakeAgent("1", "prod", launchId="")
        self.assertFalse(provesSameAgent(holder, FakeAgent("2", "prod", launchId="")))

    def test_perAgentIdentityAloneProves(self) -> None:
        """
        An identity declared per agent proves being the same agent whatever
        the name, host or launch (a restarted pod under a new name); a group
        identity does not, and another identity never does.
        """
        holder = FakeAgent("1", "Unnamed-pod-a", "pod-a", "l1", identity=PER_AGENT)
        restarted = FakeAgent("2", "Unnamed-pod-b", "pod-b", "l2", identity=PER_AGENT)
        self.assertTrue(provesSameAgent(holder, restarted))
        groupHolder = FakeAgent("1", "a", "h", "l1", identity=GROUP)
        self.assertFalse(
            provesSameAgent(groupHolder, FakeAgent("2", "a", "h", "l2", identity=GROUP))
        )
        other = Identity("db2", "secret-of-db2", perAgent=True)
        self.assertFalse(provesSameAgent(holder, FakeAgent("3", "a", "h", "l1", identity=other)))
        self.agents(holder, restarted)
        self.registry.registerPath(holder, "p", "", {})
        self.assertEqual(self.registry.registerPath(restarted, "p", "", {}).holder, restarted)
        self.assertEqual(self.changed(), [("1", "2", "takeover")])

    def test_standbyProvingItselfTakesOver(self) -> None:
        """
        A queued claim from the holder's own agent, claimed again, takes the
        path over and leaves the queue (no claim is kept twice).
        """
        holder = FakeAgent("1", "a", identity=PER_AGENT)
        other = FakeAgent("2", "b")
        self.agents(holder, other)
        self.registry.registerPath(holder, "p", "", {})
        self.registry.registerPath(other, "p", "", {})
        again = FakeAgent("3", "a", launchId="another", identity=PER_AGENT)
        self.agents(again)
        self.registry.registerPath(again, "p", "", {})
        self.assertEqual(self.standbys(), ["1", "2"])
        self.registry.registerPath(holder, "p", "", {})
        self.assertEqual(self.registry.lookup("p"), (holder,))
        self.assertEqual(self.standbys(), ["3", "2"])

    def test_mixedStillRefused(self) -> None:
        """
        Mixing consolidated and exclusive claims on one path is refused with
        the reason, never queued.
        """
        exclusive, joining = FakeAgent("1"), FakeAgent("2", consolidated=True)
        self.agents(exclusive, joining)
        self.registry.registerPath(exclusive, "p", "", {})
        with self.assertRaises(RegistrationRefused) as raised:
            self.registry.registerPath(joining, "p", "", {})
        self.assertIn(
            "is exclusive on this proxy; a consolidated agent cannot join it",
            str(raised.exception),
        )
        self.assertEqual((self.standbys(), raised.exception.kind), ([], "mixed"))

    def test_clearPromotesNobody(self) -> None:
        a, b = FakeAgent("1", "a"), FakeAgent("2", "b")
        self.agents(a, b)
        self.registry.registerPath(a, "p", "", {})
        self.registry.registerPath(b, "p", "", {})
        self.registry.clear()
        self.assertEqual((self.registry.snapshot(), self.registry.registeredBytes), ([], 0))
        self.assertEqual((self.changes, b.told), ([], []))


class DepartedTests(SynchronousTestCase):
    """
    A path whose last agent left (not unregistered) stays for the retention:
    listed for discovery with who served it, charged to the budget, and
    taken back at once by a returning agent.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry(
            limits=ProxySettings(departed_path_retention_secs=60), clock=self.clock
        )
        self.agent = FakeAgent("1", name="app", hostName="h1")
        connected(self.registry, self.agent)
        self.registry.registerPath(self.agent, "p", "App", {"team": "a"})
        self.cost = cost(self.agent, "p", "App", {"team": "a"})

    def test_keptAfterLoss(self) -> None:
        self.clock.advance(5)
        self.registry.removeAgent(self.agent, "lost")
        self.assertEqual(self.registry.lookup("p"), ())
        self.assertEqual(self.registry.snapshot(), [])
        gone = self.registry.departed("p")
        assert gone is not None
        self.assertEqual((gone.agentNames, gone.hostNames, gone.leftAt), ("app", "h1", 5))
        (listed,) = self.registry.discoverable()
        self.assertEqual((listed.path, listed.labels), ("p", {"team": "a"}))
        self.assertEqual(self.registry.registeredBytes, self.cost)

    def test_expires(self) -> None:
        self.registry.removeAgent(self.agent, "goodbye")
        self.clock.advance(59)
        self.assertIsNotNone(self.registry.departed("p"))
        generation = self.registry.generation
        self.clock.advance(1)
        self.assertIsNone(self.registry.departed("p"))
        self.assertEqual((self.registry.discoverable(), self.registry.registeredBytes), ([], 0))
        self.assertGreater(self.registry.generation, generation)

    def test_unregisteredIsGone(self) -> None:
        self.registry.unregisterPath(self.agent, "p")
        self.assertIsNone(self.registry.departed("p"))
        self.assertEqual(self.registry.registeredBytes, 0)

    def test_takenBackAtOnce(self) -> None:
        self.registry.removeAgent(self.agent, "lost")
        back = FakeAgent("2", name="other", hostName="h2")
        connected(self.registry, back)
        self.registry.registerPath(back, "p", "App", {})
        self.assertEqual(self.registry.lookup("p"), (back,))
        self.assertIsNone(self.registry.departed("p"))
        self.assertEqual(self.registry.registeredBytes, cost(back, "p", "App", {}))

    def test_givesWayToServedPaths(self) -> None:
        """
        Departed paths hold budget only while nothing served needs it.
        """
        registry = Registry(
            limits=ProxySettings(departed_path_retention_secs=60, max_registered_bytes=self.cost),
            clock=self.clock,
        )
        connected(registry, self.agent)
        registry.registerPath(self.agent, "p", "App", {"team": "a"})
        registry.removeAgent(self.agent, "lost")
        other = FakeAgent("2", name="app", hostName="h1")
        connected(registry, other)
        registry.registerPath(other, "q", "App", {"team": "a"})
        self.assertIsNone(registry.departed("p"))
        self.assertEqual(registry.registeredBytes, self.cost)

    def test_noRetention(self) -> None:
        registry = Registry(limits=NO_RETENTION, clock=self.clock)
        connected(registry, self.agent)
        registry.registerPath(self.agent, "p", "", {})
        registry.removeAgent(self.agent)
        self.assertEqual((registry.discoverable(), registry.registeredBytes), ([], 0))


class OwnerAndEligibilityTests(RegistryCase):
    """
    Whom a leaving holder's path goes to: a standby of its per-agent
    identity first, never one whose identity was revoked; and what a
    per-agent owner that left gets back.
    """

    def test_perAgentIdentityPreferred(self) -> None:
        """
        Two processes of a per-agent identity queued behind another holder
        (a rolling restart): when the first, promoted, leaves, the second
        gets the path ahead of a standby queued before it.
        """
        holder = FakeAgent("0", "y")
        first = FakeAgent("1", "db1", launchId="L1", identity=PER_AGENT)
        other = FakeAgent("2", "other")
        second = FakeAgent("3", "db1", launchId="L2", identity=PER_AGENT)
        self.agents(holder, first, other, second)
        for agent in (holder, first, other, second):
            self.registry.registerPath(agent, "p", "", {})
        self.registry.removeAgent(holder, "goodbye")
        self.assertEqual(self.standbys(), ["2", "3"])
        self.registry.removeAgent(first, "lost")
        self.assertEqual(self.registry.lookup("p"), (second,))
        self.assertEqual(other.told[-1], ("p", "standby", "lost", "3", 1_000, 1))

    def test_returnedOwnerDisplacesInterim(self) -> None:
        """
        A per-agent owner that left (not unregistered) takes its path back
        from the interim holder at once, reason C{returned}; the interim
        holder is told and queued first, paying what it paid.
        """
        owner = FakeAgent("1", "db1", launchId="L1", identity=PER_AGENT)
        interim = FakeAgent("2", "other", identity=Identity("legacy", "t"))
        self.agents(owner, interim)
        self.registry.registerPath(owner, "p", "", {})
        self.registry.registerPath(interim, "p", "", {})
        self.registry.removeAgent(owner, "lost")
        before = self.registry.registeredBytes
        back = FakeAgent("3", "db1", launchId="L2", identity=PER_AGENT)
        self.agents(back)
        placement = self.registry.registerPath(back, "p", "", {})
        self.assertEqual((placement.position, self.registry.lookup("p")), (0, (back,)))
        self.assertEqual(self.standbys(), ["2"])
        self.assertEqual(self.changed(), [("1", "2", "lost"), ("2", "3", "returned")])
        self.assertEqual(interim.told[-1], ("p", "standby", "returned", "3", 1_000, 1))
        self.assertEqual(self.registry.registeredBytes, before + cost(back, "p", "", {}))
        # Back with its owner, the path is no longer remembered as taken.
        self.registry.removeAgent(back, "lost")
        another = FakeAgent("4", "db1", launchId="L3", identity=PER_AGENT)
        self.agents(another)
        self.assertEqual(self.registry.registerPath(another, "p", "", {}).position, 0)

    def test_revokedStandbySkipped(self) -> None:
        """
        On a reload that revokes an identity, its standbys are not promoted,
        and the change says C{reload}; with none eligible, the path goes
        and so do their claims.
        """
        x, y = Identity("x", "tx"), Identity("y", "ty")
        a, b, c = (
            FakeAgent(n, launchId=f"L{n}", identity=identity)
            for n, identity in [("1", x), ("2", x), ("3", y)]
        )
        self.agents(a, b, c)
        for agent in (a, b, c):
            self.registry.registerPath(agent, "p", "", {})
        self.registry.stillHolds = lambda identity: identity != x
        self.registry.removeAgent(a, "reload")
        self.assertEqual(self.registry.lookup("p"), (c,))
        self.assertEqual(self.changed(), [("1", "3", "reload")])
        self.assertEqual(b.told, [("p", "standby", "reload", "3", 1_000, 1)])
        self.registry.stillHolds = lambda identity: False
        self.registry.removeAgent(c, "reload")
        self.assertEqual(self.registry.lookup("p"), ())
        self.assertEqual(self.registry.registeredBytes, 0)
        self.registry.removeAgent(b, "reload")
        self.assertEqual(len(self.changes), 1)
