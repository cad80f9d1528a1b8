"""
The proxy and the agent as classic Unix daemons: C{twistd} without C{-n},
with C{--pidfile} and C{--logfile}, the way C{docs/deployment.md} runs them
outside systemd.

One test walks the whole life of a pair of daemons: start (the pidfiles
appear), serve a scrape, reload the agent with SIGHUP (it survives, says so
in its log, and serves a path added to its config file), then SIGTERM (both
processes go, remove their pidfiles, and end their logs with twistd's normal
shutdown lines, without a traceback anywhere).

A daemon is not the test's child: the C{twistd} the test spawns forks the
daemon and exits once the daemon has started its services. The test knows
the daemon only by the pid in its pidfile, so it polls for it and always
SIGKILLs a daemon that is still there when the test ends.
"""

from __future__ import annotations

import os
import signal
import socket
import time

from twisted.trial.unittest import TestCase

from promtwist.test.processes import (
    AGENT_NAME,
    TWISTD,
    Child,
    Cluster,
    freePort,
    sleep,
    writeFile,
)

# Everything the test waits for, together, stays well inside trial's timeout.
START_BOUND = 8.0
SERVE_BOUND = 8.0
STOP_BOUND = 8.0

SHUTDOWN_LINES = ("Main loop terminated.", "Server Shut Down.")


def _pidAlive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie (a daemon reparented to
    an init that does not reap would otherwise look alive forever).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return True  # no /proc: trust kill(0)
    # "pid (comm) state ...": comm may contain spaces and parentheses.
    return stat[stat.rfind(")") + 2 :].split(" ", 1)[0] != "Z"


def _isTwistd(pid: int) -> bool:
    """
    Whether C{pid} still looks like a twistd process (so cleanup never
    signals an unrelated process that reused the pid).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"twistd" in f.read()
    except OSError:
        return True  # no /proc: the pid came from our own pidfile moments ago


class DaemonChild(Child):
    """
    A daemonised C{twistd <plugin>}: the spawned process is only the launcher;
    the daemon is the pid in L{pidFile}.
    """

    def __init__(
        self, case: TestCase, name: str, plugin: str, args: list[str], workdir: str
    ) -> None:
        self.pidFile = os.path.join(workdir, f"{name}.pid")
        logFile = os.path.join(workdir, f"{name}.log")
        argv = [TWISTD, f"--pidfile={self.pidFile}", f"--logfile={logFile}", plugin, *args]
        super().__init__(case, name, argv, workdir, logFile)
        self.daemonPid: int | None = None
        case.addCleanup(self.killDaemon)

    def readPid(self) -> int | None:
        try:
            with open(self.pidFile, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def pidFileExists(self) -> bool:
        return os.path.exists(self.pidFile)

    def daemonAlive(self) -> bool:
        return self.daemonPid is not None and _pidAlive(self.daemonPid)

    def died(self) -> bool:
        if self.expectedExit:
            return False
        launcher = self.protocol
        if launcher is not None and not launcher.running and launcher.exitCode != 0:
            return True  # twistd could not start the daemon
        return self.daemonPid is not None and not self.daemonAlive()

    def signalDaemon(self, sig: int) -> None:
        assert self.daemonPid is not None, f"{self.name}: no daemon pid"
        os.kill(self.daemonPid, sig)

    def killDaemon(self) -> None:
        """
        Cleanup: SIGKILL the daemon if it is still there.
        """
        for pid in {self.daemonPid, self.readPid()}:
            if pid is not None and _pidAlive(pid) and _isTwistd(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def describe(self, tail: int = 60) -> str:
        state = "unknown"
        if self.daemonPid is not None:
            state = "alive" if self.daemonAlive() else "gone"
        pidFile = "present" if self.pidFileExists() else "absent"
        return (
            f"{super().describe(tail)}\n"
            f"      daemon pid {self.daemonPid} ({state}), pidfile {self.pidFile} {pidFile}"
        )


def _nonEmptyLines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


class DaemonTests(TestCase):
    # The whole life of two daemons; under 30 s even on a slow machine.
    timeout = 30

    async def _startDaemon(self, cluster: Cluster, child: DaemonChild) -> None:
        child.start()
        launcher = child.protocol
        assert launcher is not None
        deadline = time.monotonic() + START_BOUND
        while launcher.running and time.monotonic() < deadline:
            await sleep(0.05)
        if launcher.running:
            raise cluster.fail(f"twistd did not daemonise {child.name} within {START_BOUND:g}s")
        if launcher.exitCode != 0:
            raise cluster.fail(f"twistd could not start {child.name}")

        async def pidfile() -> int | None:
            return child.readPid()

        child.daemonPid = await cluster.eventually(
            pidfile, f"{child.name}'s pidfile", START_BOUND, interval=0.05
        )
        if child.daemonPid == child.pid:
            raise cluster.fail(f"{child.name} did not fork a daemon")
        if not child.daemonAlive():
            raise cluster.fail(f"{child.name}'s daemon (pid {child.daemonPid}) is not running")

    async def _stopDaemon(self, cluster: Cluster, child: DaemonChild) -> None:
        child.expectedExit = True
        child.signalDaemon(signal.SIGTERM)
        deadline = time.monotonic() + STOP_BOUND
        while child.daemonAlive() and time.monotonic() < deadline:
            await sleep(0.05)
        if child.daemonAlive():
            raise cluster.fail(f"{child.name} still running {STOP_BOUND:g}s after SIGTERM")

    async def test_daemonLifecycle(self) -> None:
        """
        Daemonised proxy and agent: pidfiles, a scrape, SIGHUP reload of the
        agent, SIGTERM shutdown with pidfiles removed and clean logs.
        """
        cluster = Cluster(self, paths={"e2e_one": "metrics"}, sd=False)
        # The daemons run from their own empty directory: nothing they write
        # may depend on it (pidfile and logfile are absolute).
        rundir = os.path.join(cluster.workdir, "rundir")
        os.makedirs(rundir)
        proxy = DaemonChild(
            self,
            "proxy",
            "promproxy-proxy",
            ["--port", str(cluster.scrapePort), "--agent_port", str(cluster.agentPort)],
            cluster.workdir,
        )
        agent = DaemonChild(
            self,
            "agent",
            "promproxy-agent",
            [
                "-c",
                cluster.agentConfig,
                "--proxy",
                f"127.0.0.1:{cluster.agentPort}",
                "--name",
                AGENT_NAME,
            ],
            cluster.workdir,
        )
        proxy.cwd = agent.cwd = rundir
        cluster.proxy, cluster.agent = proxy, agent
        cluster.children = [proxy, agent]
        daemons = [proxy, agent]

        await self._startDaemon(cluster, proxy)
        await self._startDaemon(cluster, agent)
        await cluster.eventually(cluster.servedOnce, "a scrape through the daemons", SERVE_BOUND)

        # SIGHUP: the agent re-reads its config file. A path added there is
        # served after the reload, the old one still is, and the log says so.
        logBefore = len(agent.log())
        cluster.paths = {"e2e_one": "metrics", "e2e_reloaded": "metrics"}
        writeFile(cluster.agentConfig, cluster.agentConf())
        agent.signalDaemon(signal.SIGHUP)
        await sleep(0.5)
        if not agent.daemonAlive():
            raise cluster.fail("the agent did not survive SIGHUP")
        await cluster.eventually(
            lambda: cluster.servedOnce("e2e_reloaded"),
            "a path added to the agent's config file, after SIGHUP",
            SERVE_BOUND,
        )
        await cluster.eventually(cluster.servedOnce, "the original path, after SIGHUP", 2.0)
        reloadLog = agent.log()[logBefore:]
        if "reload" not in reloadLog.lower():
            raise cluster.fail("the agent's log does not mention the reload after SIGHUP")

        # SIGTERM: both go, quickly and cleanly (the agent first, as a host
        # shutting down would usually order them).
        for child in (agent, proxy):
            await self._stopDaemon(cluster, child)
        for child in daemons:
            if child.pidFileExists():
                raise cluster.fail(f"{child.name} left its pidfile {child.pidFile}")
            log = child.log()
            lines = _nonEmptyLines(log)
            ending = tuple(line.rstrip().rsplit("] ", 1)[-1] for line in lines[-2:])
            if ending != SHUTDOWN_LINES:
                raise cluster.fail(
                    f"{child.name}'s log does not end with twistd's shutdown lines "
                    f"{SHUTDOWN_LINES}: {ending}"
                )
            if "Traceback" in log:
                raise cluster.fail(f"a traceback in {child.name}'s log")
        leftovers = sorted(os.listdir(rundir))
        self.assertEqual(leftovers, [], "the daemons wrote into their working directory")


class StartupErrorTests(TestCase):
    """
    What an operator sees when twistd cannot start: one line naming the
    address or file and the fix, and exit status 1, never a traceback.
    """

    timeout = 30

    def directory(self) -> str:
        path = os.path.abspath(str(self.mktemp()))
        os.makedirs(path)
        return path

    async def twistd(self, args: list[str]) -> tuple[int | None, str]:
        child = Child(self, "twistd", [TWISTD, *args], self.directory())
        child.start()
        assert child.protocol is not None
        code = await child.protocol.ended
        return code, child.protocol.output.decode("utf-8", "replace")

    async def test_portInUse(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = await self.twistd(
            [
                "-n",
                "--pidfile=",
                "promproxy-proxy",
                "--port",
                str(port),
                "--agent_port",
                str(freePort()),
            ]
        )
        self.assertEqual(code, 1, output)
        self.assertNotIn("Traceback", output)
        (line,) = [line for line in output.splitlines() if "promtwist: " in line]
        self.assertIn(f"cannot listen on [::]:{port} for the scrape port", line)
        self.assertIn("proxy.http.port", line)

    async def test_portInUseDaemon(self) -> None:
        """
        Daemonising, twistd would cut an error after the fork to 100 bytes:
        the port is checked before, and the whole line reaches the terminal.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        directory = self.directory()
        code, output = await self.twistd(
            [
                f"--pidfile={directory}/proxy.pid",
                f"--logfile={directory}/proxy.log",
                "promproxy-proxy",
                "--port",
                str(port),
                "--agent_port",
                str(freePort()),
            ]
        )
        self.assertEqual(code, 1, output)
        (line,) = [line for line in output.splitlines() if "promtwist: " in line]
        self.assertIn(f"cannot listen on [::]:{port} for the scrape port", line)
        self.assertIn("choose another port with proxy.http.port", line)
        self.assertNotIn("proxy.pid", os.listdir(directory))

    async def test_logDirectoryMissing(self) -> None:
        """
        The deployment guide's daemon command before its directories exist.
        """
        missing = f"{self.directory()}/log/promtwist"
        code, output = await self.twistd(
            [f"--logfile={missing}/proxy.log", "--pidfile=", "promproxy-proxy"]
        )
        self.assertEqual(code, 1, output)
        self.assertEqual(
            output.strip().splitlines()[-1:],
            [
                f"promtwist: cannot write the log file {missing}/proxy.log: the directory"
                f" {missing} does not exist; create it (mkdir -p {missing}) or choose another"
                " with --logfile"
            ],
        )
        self.assertNotIn("Traceback", output)
