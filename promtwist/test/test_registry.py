"""
Tests for L{promtwist.proxy.registry}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.trial.unittest import SynchronousTestCase

from promtwist.config import Identity, ProxySettings
from promtwist.proxy.auth import ANONYMOUS
from promtwist.proxy.registration import RegistrationRefused, checkPath
from promtwist.proxy.registry import Registry


@dataclass(eq=False)
class FakeAgent:
    agentId: str
    name: str = "agent"
    hostName: str = "host"
    launchId: str = "launch"
    consolidated: bool = False
    identity: Identity = ANONYMOUS


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

    def test_otherAgentCannotTakeOver(self) -> None:
        """
        An exclusive path held by a connected agent is not handed to an agent
        of another name; the owner keeps it.
        """
        registry = Registry()
        owner, intruder = FakeAgent("1", name="prod"), FakeAgent("2", name="laptop")
        connected(registry, owner, intruder)
        registry.registerPath(owner, "p", "", {})
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(intruder, "p", "", {})
        self.assertIn("served by agent 'prod'", str(raised.exception))
        self.assertEqual(registry.lookup("p"), (owner,))

    def test_otherIdentityCannotTakeOver(self) -> None:
        """
        An agent that copies the owner's name but proves another identity
        does not get the path.
        """
        registry = Registry()
        owner = FakeAgent("1", name="prod", identity=Identity("team_a", "ta"))
        impostor = FakeAgent("2", name="prod", identity=Identity("team_b", "tb"))
        connected(registry, owner, impostor)
        registry.registerPath(owner, "p", "", {})
        self.assertRaises(RegistrationRefused, registry.registerPath, impostor, "p", "", {})
        self.assertEqual(registry.lookup("p"), (owner,))
        self.assertEqual(registry.refusals["taken"], 1)

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
        self.assertEqual(registry.refusals["unauthorized"], 1)
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
        self.assertEqual(registry.refusals, {"limit": 1})

    def test_sameAgentTakesOver(self) -> None:
        """
        The same agent reconnecting before its old link was found dead takes
        its path over, and the old link no longer owns it.
        """
        registry = Registry()
        old, new = FakeAgent("1", name="prod"), FakeAgent("2", name="prod")
        connected(registry, old, new)
        self.assertIsNone(registry.registerPath(old, "p", "", {}))
        self.assertIs(registry.registerPath(new, "p", "", {}), old)
        self.assertEqual(registry.lookup("p"), (new,))
        registry.removeAgent(old)
        self.assertEqual(registry.lookup("p"), (new,))

    def test_consolidated(self) -> None:
        """
        Consolidated agents share a path; removing one keeps the others, and
        exclusive and consolidated registrations do not mix.
        """
        registry = Registry()
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
        # Only a path nobody holds goes to an agent of another name.
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


def cost(agent: FakeAgent, path: str, name: str, labels: dict[str, str]) -> int:
    """
    What the registry charges for one registration, by its documented rule.
    """
    texts = [path, name, agent.name, agent.hostName, *labels, *labels.values()]
    return sum(len(text.encode("utf-8")) for text in texts)


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
        self.assertEqual(sum(registry.refusals.values()), 1)
        (kind,) = registry.refusals
        return f"{kind}: {raised.exception}"

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
        self.assertEqual(registry.refusals, {"budget": 1})
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
        a = FakeAgent("1", name="prod", hostName="h1")
        connected(registry, a)
        registry.registerPath(a, "p", "App", {"k": "v"})
        self.assertEqual(registry.registeredBytes, cost(a, "p", "App", {"k": "v"}))
        # Re-registering with other labels charges the difference.
        registry.registerPath(a, "p", "", {"key": "välue", "x": "y"})
        self.assertEqual(registry.registeredBytes, cost(a, "p", "", {"key": "välue", "x": "y"}))
        # Displacement by the same agent under another host name.
        b = FakeAgent("2", name="prod", hostName="a-longer-host")
        connected(registry, b)
        registry.registerPath(b, "p", "", {})
        self.assertEqual(registry.registeredBytes, cost(b, "p", "", {}))
        registry.removeAgent(a)
        self.assertEqual(registry.registeredBytes, cost(b, "p", "", {}))
        registry.unregisterPath(b, "p")
        self.assertEqual(registry.registeredBytes, 0)

    def test_consolidated(self) -> None:
        """
        Each agent joining a consolidated path pays its name and host name;
        the path itself is paid once, and freed with its last agent.
        """
        registry = Registry()
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
        owner, other = FakeAgent("1", name="prod"), FakeAgent("2", name="laptop")
        connected(registry, owner, other)
        registry.registerPath(owner, "p", "", {})
        before = (registry.registeredBytes, registry.generation)
        self.assertRaises(RegistrationRefused, registry.registerPath, other, "p", "x", {})
        self.assertEqual((registry.registeredBytes, registry.generation), before)


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
