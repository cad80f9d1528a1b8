"""
The console scripts C{promtwist-proxy} and C{promtwist-agent}
(L{promtwist.console}): their command line, and the installed scripts run as
processes the way a container runs them.
"""

from __future__ import annotations

import io
import json
import os
import signal

import treq
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from promtwist.console import main, twistdArguments
from promtwist.test.processes import (
    AGENT_NAME,
    Child,
    Cluster,
    ProcessGroup,
    consoleChild,
    freePort,
    twistdChild,
    writeFile,
)
from twisted.plugins.promtwist_plugins import promproxyAgent, promproxyProxy

# Generous bounds for a loaded machine; they fail a hung process, they do not
# measure anything.
SERVE_BOUND = 30.0
EXIT_BOUND = 20.0


class TwistdArgumentsTests(SynchronousTestCase):
    """
    L{twistdArguments}: the twistd command line a console script stands for.
    """

    def test_fixedOptions(self) -> None:
        """
        The plugin's options follow the plugin name, after the foreground
        and no-pidfile options.
        """
        self.assertEqual(
            twistdArguments("promtwist-proxy", ["-c", "proxy.conf", "--port", "9"]),
            ["--nodaemon", "--pidfile=", "promtwist-proxy", "-c", "proxy.conf", "--port", "9"],
        )

    def test_leadingLogger(self) -> None:
        """
        Leading C{--logger} options, in either spelling, go to twistd.
        """
        self.assertEqual(
            twistdArguments("p", ["--logger=a.b", "--logger", "c.d", "-c", "x"]),
            ["--nodaemon", "--pidfile=", "--logger=a.b", "--logger", "c.d", "p", "-c", "x"],
        )

    def test_laterLoggerIsThePlugins(self) -> None:
        """
        A C{--logger} after the first plugin option stays with the plugin
        (which rejects it): it may be another option's value.
        """
        self.assertEqual(
            twistdArguments("p", ["--name", "--logger"]),
            ["--nodaemon", "--pidfile=", "p", "--name", "--logger"],
        )

    def test_loggerWithoutValue(self) -> None:
        """
        A trailing C{--logger} without its value is a usage error.
        """
        self.assertRaises(usage.UsageError, twistdArguments, "p", ["--logger"])


class MainTests(SynchronousTestCase):
    """
    L{main}'s errors: one line and status 1, before anything starts.
    """

    def _fails(self, argv: list[str]) -> str:
        stderr = io.StringIO()
        with self.assertRaises(SystemExit) as caught:
            main("promtwist-proxy", promproxyProxy, argv, stderr=stderr)
        self.assertEqual(caught.exception.code, 1)
        return stderr.getvalue()

    def test_unknownOption(self) -> None:
        """
        An unknown option is named in one line, with where to look; not
        twistd's whole usage text.
        """
        self.assertEqual(
            self._fails(["--bogus"]),
            "promtwist-proxy: option --bogus not recognized (see promtwist-proxy --help)\n",
        )

    def test_loggerWithoutValue(self) -> None:
        """
        So is a C{--logger} without its value.
        """
        self.assertEqual(
            self._fails(["--logger"]),
            "promtwist-proxy: option --logger requires an argument (see promtwist-proxy --help)\n",
        )

    def test_helpNamesTheScript(self) -> None:
        """
        C{--help} is the plugin's help under the script's name.
        """
        stdout = io.StringIO()
        self.patch(promproxyAgent.options, "_stdout", stdout)
        with self.assertRaises(SystemExit) as caught:
            main("promtwist-agent", promproxyAgent, ["--usage"])
        self.assertEqual(caught.exception.code, 0)
        text = stdout.getvalue()
        self.assertTrue(text.startswith("Usage: promtwist-agent [options]\n"), text[:200])
        self.assertIn("--proxy", text)


def _lines(child: Child) -> list[str]:
    assert child.protocol is not None
    return child.protocol.output.decode("utf-8", "replace").splitlines()


class ConsoleProcessTests(TestCase):
    """
    The installed console scripts as child processes: configured by options
    and by upstream's environment variables, serving a scrape end to end,
    reloading on SIGHUP, exiting 0 on SIGTERM; a bad configuration exits 1
    with one line.
    """

    timeout = 120

    async def test_serveReloadStop(self) -> None:
        """
        A proxy (with the JSON logger) and an agent (configured through
        C{AGENT_CONFIG}, logging text) serve a scrape; the agent applies a
        new path on SIGHUP; both exit 0 on SIGTERM.
        """
        cluster = Cluster(self, paths={"e2e_one": "metrics"}, sd=False)
        proxy = consoleChild(
            self,
            "proxy",
            "promproxy-proxy",
            ["--logger=promtwist.logs.jsonLogger", "--agent_port", str(cluster.agentPort)],
            cluster.workdir,
            environ={"PROXY_PORT": str(cluster.scrapePort)},
        )
        agent = consoleChild(
            self,
            "agent",
            "promproxy-agent",
            ["--proxy", f"127.0.0.1:{cluster.agentPort}", "--name", AGENT_NAME],
            cluster.workdir,
            environ={"AGENT_CONFIG": cluster.agentConfig},
        )
        cluster.proxy, cluster.agent = proxy, agent
        cluster.children = [proxy, agent]
        await cluster.start(within=SERVE_BOUND)

        # SIGHUP: the agent re-reads AGENT_CONFIG's file and serves the path
        # added there.
        cluster.paths = {"e2e_one": "metrics", "e2e_reloaded": "metrics"}
        writeFile(cluster.agentConfig, cluster.agentConf())
        agent.signalProcess(signal.SIGHUP)
        await cluster.eventually(
            lambda: cluster.servedOnce("e2e_reloaded"),
            "a path added to the agent's config file, after SIGHUP",
            SERVE_BOUND,
        )

        for child in (agent, proxy):
            code = await child.stop(grace=EXIT_BOUND)
            assert child.protocol is not None
            if code != 0:
                raise cluster.fail(
                    f"{child.name} ended with code {code}, signal {child.protocol.signal}"
                    " after SIGTERM; expected exit status 0"
                )

        # The proxy's standard output is JSON lines; the agent's is text.
        records = [json.loads(line) for line in _lines(proxy) if line.strip()]
        self.assertTrue(
            any("proxy listening" in str(r.get("message")) for r in records),
            cluster.describe(),
        )
        agentText = "\n".join(_lines(agent))
        self.assertIn("reload", agentText.lower())
        self.assertFalse(agentText.lstrip().startswith("{"), agentText[:200])

    def _workdir(self) -> str:
        path = os.path.abspath(str(self.mktemp()))
        os.makedirs(path)
        return path

    async def _runToEnd(self, child: Child) -> int | None:
        child.start()
        child.expectedExit = True
        assert child.protocol is not None
        return await child.protocol.ended

    async def test_badConfiguration(self) -> None:
        """
        A configuration file that does not exist (named in C{PROXY_CONFIG},
        as upstream's image reads it) ends the proxy with status 1 and one
        line naming it, no traceback.
        """
        missing = "/nonexistent/promtwist/proxy.conf"
        child = consoleChild(
            self,
            "proxy",
            "promproxy-proxy",
            [],
            self._workdir(),
            environ={"PROXY_CONFIG": missing},
        )
        code = await self._runToEnd(child)
        lines = _lines(child)
        self.assertEqual(code, 1, lines)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("promtwist: "), lines)
        self.assertIn(missing, lines[0])

    async def test_badOption(self) -> None:
        """
        An unknown option ends the agent with status 1 and one line.
        """
        child = consoleChild(
            self, "agent", "promproxy-agent", ["--no-such-option"], self._workdir()
        )
        code = await self._runToEnd(child)
        lines = _lines(child)
        self.assertEqual(code, 1, lines)
        self.assertEqual(
            lines,
            [
                "promtwist-agent: option --no-such-option not recognized"
                " (see promtwist-agent --help)"
            ],
        )


# Lines twistd and Twisted log at info level on every start and stop, none
# of them promtwist's.
_TWISTD_LINES = ("starting up", "reactor class", "starting on", "Server Shut Down")


class LogLevelProcessTests(TestCase):
    """
    C{--log_level} (C{PROXY_LOG_LEVEL}) is the level of every event of the
    process, twistd's and Twisted's own included, as upstream's is its root
    logger's: for the console scripts and C{twistd -n} alike.
    """

    timeout = 120

    async def _startStop(self, child: Child, scrapePort: int) -> str:
        """
        Start C{child}, wait until its scrape port answers, stop it, and
        return what it logged.
        """
        group = ProcessGroup(self)
        group.children.append(child)
        child.start()

        async def listening() -> bool:
            response = await group.http.get(f"http://127.0.0.1:{scrapePort}/", timeout=2.0)
            await treq.content(response)
            return True

        await group.eventually(listening, f"{child.name}'s scrape port", SERVE_BOUND, 0.05)
        self.assertEqual(await child.stop(grace=EXIT_BOUND), 0, child.describe())
        return child.log() if child.logFile else "\n".join(_lines(child))

    def _workdir(self) -> str:
        path = os.path.abspath(str(self.mktemp()))
        os.makedirs(path)
        return path

    def _proxyArgs(self) -> tuple[int, list[str]]:
        scrape, agent = freePort(), freePort()
        return scrape, ["--port", str(scrape), "--agent_port", str(agent)]

    async def test_levels(self) -> None:
        """
        At the default level twistd's lines are there; with
        C{--log_level off} the console script logs nothing at all, and
        C{twistd -n} with C{PROXY_LOG_LEVEL=warn} no line below a warning.
        """
        workdir = self._workdir()
        port, args = self._proxyArgs()
        default = await self._startStop(
            consoleChild(self, "default", "promproxy-proxy", args, workdir), port
        )
        for line in _TWISTD_LINES:
            self.assertIn(line, default)
        port, args = self._proxyArgs()
        off = await self._startStop(
            consoleChild(self, "off", "promproxy-proxy", [*args, "--log_level", "off"], workdir),
            port,
        )
        self.assertEqual(off, "")
        port, args = self._proxyArgs()
        warn = twistdChild(self, "warn", "promproxy-proxy", args, workdir)
        warn.environ["PROXY_LOG_LEVEL"] = "warn"
        logged = await self._startStop(warn, port)
        for line in _TWISTD_LINES:
            self.assertNotIn(line, logged)
        self.assertNotIn("#info]", logged)
