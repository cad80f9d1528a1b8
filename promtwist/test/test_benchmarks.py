"""
The benchmark's set-up (C{benchmarks/}, beside the package in the source
tree): for each routing, what the bench agent declares and what the load
generator sends, checked against the proxy's own routing rules and the
agent's own configuration loader. The measurements themselves never run
here: they are timed, and belong to C{benchmarks/} (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.load import loadAgentSettings
from promtwist.config.settings import AgentSettings
from promtwist.hostkeys import hostKey
from promtwist.proxy.proxyurl import proxyRoute
from promtwist.test.helpers import sourceTreeFile

TARGET_PORT = 8123
PROXY = "127.0.0.1:9000"


def benchmarkModules(case: SynchronousTestCase) -> tuple[ModuleType, ModuleType]:
    """
    C{benchmarks/parties.py} and C{benchmarks/bench.py}, imported from the
    source tree as bench.py imports its neighbours (by name, from its own
    directory); they leave C{sys.modules} and C{sys.path} as they were
    when C{case} ends.
    """
    directory = os.path.dirname(sourceTreeFile("benchmarks/bench.py"))
    case.patch(sys, "path", [directory, *sys.path])
    names = ("parties", "openloop", "bench")
    for name in names:
        case.addCleanup(sys.modules.pop, name, None)
    return importlib.import_module("parties"), importlib.import_module("bench")


class BenchRoutingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.parties, self.bench = benchmarkModules(self)
        self.workdir = self.mktemp()
        os.makedirs(self.workdir)
        self.party = self.parties.Parties(self.workdir)
        self.party.targetPort = TARGET_PORT

    def agent(self, routing: str, settings: str = "") -> AgentSettings:
        """
        The bench agent's settings for C{routing}, through the loader
        C{promproxy-agent -c} uses.
        """
        path = os.path.join(self.workdir, f"agent-{routing}.conf")
        with open(path, "w") as f:
            f.write(self.parties.agentConfig(TARGET_PORT, ["small", "large"], settings, routing))
        return loadAgentSettings({"config": path}, {}, warn=self.fail)

    def routed(self, route: Any) -> str | None:
        """
        The claim promtwist's proxy routes C{route}'s requests to: a host
        key for a proxy_url request, else L{None} (path routing).
        """
        found = proxyRoute(route.target.encode(), b"")
        return None if found is None else found.shown

    def test_hostRouting(self) -> None:
        """
        With host routing the agent declares the target's C{127.0.0.1:port}
        and no paths, and every route asks for the target's own URL as an
        absolute URI, which the proxy routes to that declaration; wrk is
        pointed at the proxy and sends the absolute URI from its script.
        """
        agent = self.agent(self.parties.HOST)
        self.assertEqual(agent.path_configs, ())
        self.assertEqual(
            [(t.path, t.url) for t in agent.targets],
            [(hostKey("127.0.0.1", TARGET_PORT), f"http://127.0.0.1:{TARGET_PORT}/")],
        )
        routes = self.party.routesThrough(
            "promtwist", PROXY, (1, 2), ["small", "large"], self.parties.HOST
        )
        for name, route in routes.items():
            self.assertEqual(self.routed(route), agent.targets[0].path)
            self.assertEqual(route.target, f"http://127.0.0.1:{TARGET_PORT}/{name}")
            self.assertEqual(route.host, f"127.0.0.1:{TARGET_PORT}")
            self.assertEqual(route.proxy(), f"http://{PROXY}")
            self.assertEqual(route.wrkUrl(), f"http://{PROXY}/")
            option, script = self.bench.wrkScript(self.workdir, route)
            self.assertEqual(option, "-s")
            with open(script) as f:
                self.assertEqual(
                    f.read(),
                    f'wrk.path = "{route.target}"\nwrk.headers["Host"] = "{route.host}"\n',
                )

    def test_pathRouting(self) -> None:
        """
        With path routing the agent serves C{bench_<name>} from the
        target's C{/<name>} and declares no target; the routes ask the
        proxy for those paths in origin form, which it does not host-route.
        """
        agent = self.agent(self.parties.PATH)
        self.assertEqual(agent.targets, ())
        self.assertEqual(
            [(p.path, p.url) for p in agent.path_configs],
            [
                ("bench_small", f"http://127.0.0.1:{TARGET_PORT}/small"),
                ("bench_large", f"http://127.0.0.1:{TARGET_PORT}/large"),
            ],
        )
        routes = self.party.routesThrough(
            "promtwist", PROXY, (1, 2), ["small", "large"], self.parties.PATH
        )
        for name, route in routes.items():
            self.assertIsNone(self.routed(route))
            self.assertEqual(route.target, f"/bench_{name}")
            self.assertIsNone(route.proxy())
            self.assertEqual(route.wrkUrl(), f"http://{PROXY}/bench_{name}")
            self.assertEqual(self.bench.wrkScript(self.workdir, route), [])

    def test_settings(self) -> None:
        """
        The settings a mode adds (bigbody's size limit) reach the agent in
        both routings.
        """
        for routing in self.parties.ROUTINGS:
            agent = self.agent(routing, "  http { maxContentLengthMBytes = 116 }\n")
            self.assertEqual(agent.max_content_length_mbytes, 116)
