"""
Path ownership with real processes (C{twistd} proxy and agents on loopback
ports): standbys take over without a gap when the holder is stopped, and an
agent copying the holder's name never receives its scrapes.

Like L{promtwist.test.test_process}, these run the promtwist installed next
to the running Python, not the source tree.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from functools import partial

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from promtwist.test.processes import (
    AGENT_NAME,
    SAMPLE,
    Child,
    Cluster,
    TargetServer,
    freePort,
    sleep,
    writeFile,
)

# Scrapes of each path are this far apart, as the issue asks.
SCRAPE_INTERVAL = 0.05
PROMOTION_BAR = 1.0


def report(text: str) -> None:
    print(f"\n  {text}", end="")


def adminArgs(port: int) -> list[str]:
    return ["--admin", "--admin_port", str(port), "--debug"]


@dataclass
class Scraping:
    """
    Every path of a cluster scraped every L{SCRAPE_INTERVAL} until stopped:
    each answer as C{(path, status, body)}.
    """

    cluster: Cluster
    paths: list[str]
    answers: list[tuple[str, int, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    running: bool = True

    def __post_init__(self) -> None:
        self._loops = [Deferred.fromCoroutine(self._loop(path)) for path in self.paths]

    async def _loop(self, path: str) -> None:
        while self.running:
            try:
                code, body = await self.cluster.get(path, limit=5)
                self.answers.append((path, code, body))
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(f"/{path}: {type(e).__name__}: {e}")
            await sleep(SCRAPE_INTERVAL)

    async def stop(self) -> None:
        self.running = False
        for loop in self._loops:
            await loop

    def mark(self) -> int:
        return len(self.answers)

    def statuses(self, since: int = 0) -> list[int]:
        return [code for _, code, _ in self.answers[since:]]


class OwnershipProcessTests(TestCase):
    timeout = 120

    async def waitFor(self, cluster: Cluster, url: str, text: str, what: str) -> None:
        async def shows() -> bool:
            return text in await cluster.text(url)

        await cluster.eventually(shows, what, 20, interval=0.05)

    async def stopAndWatch(
        self, cluster: Cluster, holder: Child, successorDebug: str, scraping: Scraping
    ) -> tuple[int, float]:
        """
        SIGTERM C{holder} while C{scraping}; return where the scrapes after
        the signal start, and how long until the successor's /debug page
        says it holds the first path. Returns once the holder has exited and
        the scrapes ran on for a second.
        """
        start = scraping.mark()
        stoppedAt = time.monotonic()
        holder.signalProcess(signal.SIGTERM)
        holder.expectedExit = True
        promotedAt: float | None = None
        assert holder.protocol is not None
        deadline = stoppedAt + 20
        while time.monotonic() < deadline:
            if promotedAt is None and "[held by this agent" in await cluster.text(successorDebug):
                promotedAt = time.monotonic()
            if (
                promotedAt is not None
                and not holder.protocol.running
                and time.monotonic() - stoppedAt > 1.5
            ):
                break
            await sleep(SCRAPE_INTERVAL)
        if promotedAt is None or holder.protocol.running:
            raise cluster.fail("the holder did not leave, or its standby was not promoted")
        return start, promotedAt - stoppedAt

    async def test_standbysTakeOverWithoutAGap(self) -> None:
        """
        Two agents with the same name and config, and a third with another
        name (a rolling update's new pod): the second and third wait as
        standbys. SIGTERM the holder: the second serves within a second and
        no scrape in between is anything but 200. SIGTERM the second: the
        third takes over, every scrape 200 or (only for a scrape in flight
        on the lost link) 502.
        """
        proxyAdmin, firstAdmin, secondAdmin, thirdAdmin = (freePort() for _ in range(4))
        paths = {"own_one": "metrics", "own_two": "metrics"}
        cluster = Cluster(
            self, paths, sd=False, proxyArgs=adminArgs(proxyAdmin), agentArgs=adminArgs(firstAdmin)
        )
        await cluster.start()
        second = cluster.agentChild("agent2", args=adminArgs(secondAdmin))
        third = cluster.agentChild("agent3", "e2e-agent-new", args=adminArgs(thirdAdmin))
        second.start()
        await self.waitFor(
            cluster,
            f"http://127.0.0.1:{secondAdmin}/debug",
            f"[standby #1 behind agent '{AGENT_NAME}'",
            "the second agent waiting as standby",
        )
        third.start()
        await self.waitFor(
            cluster,
            f"http://127.0.0.1:{thirdAdmin}/debug",
            f"[standby #2 behind agent '{AGENT_NAME}'",
            "the third agent waiting as standby",
        )
        proxyDebug = await cluster.text(f"http://127.0.0.1:{proxyAdmin}/debug")
        self.assertIn(f"standby #1: '{AGENT_NAME}'", proxyDebug)
        self.assertIn("standby #2: 'e2e-agent-new'", proxyDebug)

        scraping = Scraping(cluster, list(paths))
        await sleep(0.3)
        start, promoted = await self.stopAndWatch(
            cluster, cluster.agent, f"http://127.0.0.1:{secondAdmin}/debug", scraping
        )
        sameName = scraping.statuses(start)
        report(
            f"same-name standby promoted {promoted * 1000:.0f} ms after SIGTERM; "
            f"{len(sameName)} scrapes meanwhile: {sorted(set(sameName))}"
        )
        self.assertLess(promoted, PROMOTION_BAR)
        self.assertEqual(set(sameName), {200}, scraping.answers[start:])

        start, promoted = await self.stopAndWatch(
            cluster, second, f"http://127.0.0.1:{thirdAdmin}/debug", scraping
        )
        await scraping.stop()
        rolling = scraping.answers[start:]
        report(
            f"rolling update: new agent promoted {promoted * 1000:.0f} ms after SIGTERM; "
            f"{len(rolling)} scrapes meanwhile: {sorted(set(scraping.statuses(start)))}"
        )
        self.assertEqual(scraping.errors, [])
        for path, code, body in rolling:
            self.assertIn(code, (200, 502), (path, body))
            if code == 502:
                self.assertIn(b"agent disconnected", body)
            else:
                self.assertIn(SAMPLE, body)
        thirdDebug = await cluster.text(f"http://127.0.0.1:{thirdAdmin}/debug")
        for path in paths:
            code, body = await cluster.get(path)
            self.assertEqual(code, 200, body)
            self.assertIn(f"/{path} -> ", thirdDebug)
        self.assertEqual(thirdDebug.count("[held by this agent since "), len(paths), thirdDebug)
        proxyLog = cluster.proxy.log()
        # One line per agent leaving, for both its paths.
        self.assertEqual(proxyLog.count("2 path(s) change holder"), 2, proxyLog)
        self.assertEqual(proxyLog.count("the holder said goodbye"), 2)

    async def standbys(self, cluster: Cluster, admin: int, expected: int) -> bool:
        """
        Whether the proxy's /debug page lists C{expected} first standbys.
        """
        debug = await cluster.text(f"http://127.0.0.1:{admin}/debug")
        return debug.count("standby #1: ") == expected

    def lockedProxyConfig(self) -> str:
        """
        A proxy config with the shared token and one group identity.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        return writeFile(
            os.path.join(workdir, "proxy.conf"),
            'proxy {\n  agentToken = "shared-token"\n'
            '  auth = [ { name = "team", token = "group-token" } ]\n}\n',
        )

    async def test_noHijackByName(self) -> None:
        """
        With an open agent port, with the shared C{proxy.agentToken} and
        with a group identity, a rogue agent presenting the holder's name
        (from another process) waits as standby: it never receives a scrape
        while the holder is connected, and the holder keeps serving after
        the rogue leaves.
        """
        proxyConf = self.lockedProxyConfig()
        openAdmin, lockedAdmin = freePort(), freePort()
        opened = Cluster(self, {"hj_open": "metrics"}, sd=False, proxyArgs=adminArgs(openAdmin))
        locked = Cluster(
            self,
            {"hj_shared": "metrics"},
            sd=False,
            proxyArgs=["-c", proxyConf, *adminArgs(lockedAdmin)],
            agentArgs=["--agent_token", "shared-token"],
        )
        groupHolder = locked.agentChild(
            "group-holder",
            "e2e-group",
            writeFile(
                os.path.join(locked.workdir, "group.conf"),
                locked.agentConf({"hj_group": "metrics"}),
            ),
            ["--agent_token", "group-token"],
        )
        # What the rogues serve: a target of their own, so a scrape that
        # reached one would show here.
        rogueTarget = TargetServer(self)

        def rogue(cluster: Cluster, name: str, path: str, args: list[str]) -> Child:
            conf = writeFile(
                os.path.join(cluster.workdir, f"rogue-{path}.conf"),
                cluster.agentConf({path: "metrics"}, rogueTarget),
            )
            return cluster.agentChild(f"rogue-{path}", name, conf, args)

        rogues = [
            (opened, rogue(opened, AGENT_NAME, "hj_open", []), openAdmin),
            (
                locked,
                rogue(locked, AGENT_NAME, "hj_shared", ["--agent_token", "shared-token"]),
                lockedAdmin,
            ),
            (
                locked,
                rogue(locked, "e2e-group", "hj_group", ["--agent_token", "group-token"]),
                lockedAdmin,
            ),
        ]
        await opened.start()
        await locked.start()
        groupHolder.start()
        await locked.eventually(
            lambda: locked.servedOnce("hj_group"), "the group identity's path", 20
        )
        for _, child, _ in rogues:
            child.start()
        for cluster, paths, admin in [
            (opened, ["hj_open"], openAdmin),
            (locked, ["hj_shared", "hj_group"], lockedAdmin),
        ]:
            await cluster.eventually(
                partial(self.standbys, cluster, admin, len(paths)),
                "every rogue waiting as standby",
                20,
                0.05,
            )
        targets = [(opened, "hj_open"), (locked, "hj_shared"), (locked, "hj_group")]

        async def scrapeAll(times: int) -> set[int]:
            codes = set()
            for _ in range(times):
                for cluster, path in targets:
                    code, body = await cluster.get(path)
                    codes.add(code)
                    self.assertIn(SAMPLE, body)
                await sleep(SCRAPE_INTERVAL)
            return codes

        self.assertEqual(await scrapeAll(10), {200})
        self.assertEqual(rogueTarget.metrics.hits, 0, "a rogue received a scrape")
        for _, child, _ in rogues:
            await child.stop()
        self.assertEqual(await scrapeAll(5), {200})
        self.assertEqual(rogueTarget.metrics.hits, 0)
        for cluster in (opened, locked):
            self.assertNotIn("change holder", cluster.proxy.log())
        report("3 rogues (open port, shared token, group identity) received no scrape")
