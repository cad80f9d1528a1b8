#!/usr/bin/env python3
"""
What one C{GET /discovery} costs with many registered paths, in-process:

    .venv/bin/python benchmarks/discovery.py               # 10,000 paths
    .venv/bin/python benchmarks/discovery.py --paths 50000 --agents 50

Registers C{--paths} paths (spread over C{--agents} agents, each path with a
few labels) in a proxy's registry, then times the discovery document's
C{render}, which is what the reactor runs for each request (the scrape
port's server then writes the bytes it returns):

- cold: the first request, which builds every target group;
- warm: requests with nothing changed (the cached document);
- after a change: one path re-registered with new labels before each
  request (only that group is rebuilt);
- other Host: a request naming an address not seen before (every group is
  reused, the document is joined again).

Not part of CI; the figures of a real run are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

from promtwist.config.settings import Identity, ProxySettings
from promtwist.proxy.auth import ANONYMOUS
from promtwist.proxy.discovery import Document
from promtwist.proxy.registry import Registry


@dataclass(eq=False)
class Agent:
    agentId: str
    name: str
    hostName: str
    launchId: str = ""
    consolidated: bool = False
    identity: Identity = ANONYMOUS


def timed(document: Document, host: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    body = document.render(host)
    return (time.perf_counter() - start) * 1000, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--requests", type=int, default=50, help="per warm measurement")
    args = parser.parse_args()

    perAgent = -(-args.paths // args.agents)
    registry = Registry(limits=ProxySettings(max_paths_per_agent=perAgent))
    agents = [
        Agent(f"id{n}", f"agent-{n}", f"host-{n}.example.internal") for n in range(args.agents)
    ]
    for agent in agents:
        registry.addAgent(agent)
    start = time.perf_counter()
    for n in range(args.paths):
        labels = {"team": f"team{n % 7}", "env": "production", "app": f"app{n}"}
        registry.registerPath(agents[n % args.agents], f"app{n}_metrics", f"App {n}", labels)
    registerMs = (time.perf_counter() - start) * 1000
    # With per-path instances, the dearer shape (one more cut per group) and
    # the one docs/benchmarks.md recorded.
    resource = Document(registry, perPathInstance=True)

    cold, body = timed(resource, "proxy.example:8080")
    groups = json.loads(body)
    assert len(groups) == args.paths, len(groups)
    warm = [timed(resource, "proxy.example:8080")[0] for _ in range(args.requests)]
    changed = []
    for n in range(args.requests):
        agent = agents[0]
        registry.registerPath(agent, "app0_metrics", "App 0", {"team": "t", "change": str(n)})
        changed.append(timed(resource, "proxy.example:8080")[0])
    others = [timed(resource, f"other{n}.example:8080")[0] for n in range(args.requests)]

    def line(label: str, values: list[float]) -> str:
        return (
            f"{label:<22} median {statistics.median(values):7.2f} ms   "
            f"max {max(values):7.2f} ms   ({len(values)} requests)"
        )

    print(f"paths:      {args.paths} over {args.agents} agents, registered in {registerMs:.0f} ms")
    print(f"registered: {registry.registeredBytes} bytes (proxy.internal.maxRegisteredBytes)")
    print(f"document:   {len(body)} bytes")
    print(f"{'cold (first request)':<22} {cold:7.2f} ms")
    print(line("warm (no change)", warm))
    print(line("after one change", changed))
    print(line("other Host each time", others))


if __name__ == "__main__":
    main()
