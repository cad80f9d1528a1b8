"""
prometheus-proxy's example configuration files start promtwist's proxy and
agent as they start prometheus-proxy's, and so do the files prometheus-proxy
is lenient with; each leniency is told once.

The examples are in C{data/}, copied unchanged from pambrose/prometheus-proxy
(C{examples/*.conf}, and C{nginx/nginx-proxy.conf}; C{data/SOURCES.md}).
Each runs as a user runs it: C{twistd -n promproxy-proxy -c FILE} and
C{twistd -n promproxy-agent -c FILE} from the directory holding the file,
with options moving its listeners to free ports on 127.0.0.1. The agent
registers every path the file names, which the proxy's C{/discovery} lists,
and a scrape of one of them goes through the proxy to the agent and its
target.

The targets of C{myapps.conf}, C{agent-filters.conf} and
C{discovery-targets.conf} are hosts of the examples' own network
(C{app1.local}, C{app1}); there the scrape comes back as the agent's
failure to reach the target (503), not as the proxy's unknown path (404).
C{simple.conf}, C{federate.conf} and C{nginx-proxy.conf} scrape the
processes' own metrics at C{localhost:8082} and C{localhost:8083}, their
default ports; so that other tests and suites on the machine cannot hold
those ports, each run moves the processes' metrics to free ports and
writes those port numbers into its copy of the file's URLs, the only
change made to it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from promtwist.test.certs import makeCertificates
from promtwist.test.processes import (
    SAMPLE,
    ProcessGroup,
    TargetServer,
    freePort,
    hoconString,
    twistdChild,
    writeFile,
)

DATA = FilePath(__file__).sibling("data")
# Where simple.conf, federate.conf and nginx-proxy.conf expect the proxy's
# and the agent's own metrics: their default metrics ports, as the files'
# URLs spell them.
DEFAULT_METRICS_PORTS = {"proxy": ":8082/", "agent": ":8083/"}
# How long a process may take to start and an agent to register; generous
# for a loaded two-core machine, and only reached when something is wrong.
WITHIN = 30.0


@dataclass(frozen=True)
class Example:
    """
    One configuration to start proxy and agent with.

    @ivar config: what C{-c} names, for the proxy and (unless
        C{agentConfig} says otherwise) the agent.
    @ivar paths: the paths the agent must register.
    @ivar scraped: the path scraped through the proxy.
    @ivar served: what its body holds when the target answers; empty when
        the example's target is not on this machine, and the agent's
        failure to reach it comes back instead.
    @ivar agentConfig: the agent's file, when not C{config} (a file of the
        user's that includes the example, say).
    @ivar files: the files the run's directory holds: name to text.
    @ivar ownMetrics: which of C{proxy} and C{agent} serve their own
        metrics, which the example's URLs expect on their default ports.
    """

    config: str
    paths: frozenset[str]
    scraped: str
    served: bytes = b""
    agentConfig: str = ""
    files: dict[str, str] = field(default_factory=dict)
    ownMetrics: frozenset[str] = frozenset()


def upstream(
    name: str,
    paths: Sequence[str],
    scraped: str,
    served: bytes = b"",
    agentConfig: str = "",
    files: Mapping[str, str] | None = None,
    ownMetrics: Sequence[str] = (),
) -> Example:
    """
    An L{Example} run with prometheus-proxy's example C{name}, copied from
    C{data/} unchanged, beside C{files}.
    """
    return Example(
        name,
        frozenset(paths),
        scraped,
        served,
        agentConfig,
        {name: DATA.child(name).getContent().decode("utf-8"), **(files or {})},
        frozenset(ownMetrics),
    )


class ExampleRun(ProcessGroup):
    """
    A proxy and an agent started with one L{Example}, in a directory of
    their own holding its files, the ports moved to free ones by options.
    """

    def __init__(self, case: TestCase, example: Example, workdir: str | None = None) -> None:
        """
        @param workdir: the directory to run in (it may hold more files, such
            as certificates); a fresh one by default.
        """
        super().__init__(case)
        self.example = example
        if workdir is None:
            workdir = os.path.abspath(case.mktemp())
            os.makedirs(workdir)
        self.workdir = workdir
        metricsPorts = {process: freePort() for process in DEFAULT_METRICS_PORTS}
        for name, text in example.files.items():
            for process in example.ownMetrics:
                text = text.replace(DEFAULT_METRICS_PORTS[process], f":{metricsPorts[process]}/")
            writeFile(os.path.join(workdir, name), text)
        self.scrapePort = freePort()
        agentPort = freePort()

        def loopback(port: int) -> str:
            return f"tcp:{port}:interface=127.0.0.1"

        def ports(process: str) -> list[str]:
            # Every listener on a free port (simple.conf enables the admin
            # port too): other tests share the machine.
            return [
                *(["--metrics"] if process in example.ownMetrics else []),
                "--metrics_listen",
                loopback(metricsPorts[process]),
                "--admin_listen",
                loopback(freePort()),
            ]

        self.proxy = twistdChild(
            case,
            "proxy",
            "promproxy-proxy",
            [
                "-c",
                example.config,
                "--listen",
                loopback(self.scrapePort),
                "--agent_listen",
                loopback(agentPort),
                "--sd_enabled",
                *ports("proxy"),
            ],
            workdir,
        )
        self.agent = twistdChild(
            case,
            "agent",
            "promproxy-agent",
            [
                "-c",
                example.agentConfig or example.config,
                f"-Dagent.proxy.port={agentPort}",
                *ports("agent"),
            ],
            workdir,
        )
        self.children.extend([self.proxy, self.agent])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.scrapePort}/{path}"

    async def discovery(self) -> list[dict[str, Any]]:
        """
        The proxy's C{/discovery} document.
        """
        document: list[dict[str, Any]] = json.loads(await self.text(self.url("discovery")))
        return document

    async def start(self) -> None:
        """
        Start both; return once the agent has registered every path.
        """
        self.proxy.start()
        await self.eventually(self.discovery, "the proxy's scrape port", WITHIN, interval=0.05)
        self.agent.start()
        paths = self.example.paths

        async def registered() -> bool:
            listed = {group["labels"]["__metrics_path__"][1:] for group in await self.discovery()}
            return listed == paths

        await self.eventually(registered, f"the agent's paths {sorted(paths)}", WITHIN)

    async def get(self, path: str) -> tuple[int, bytes]:
        """
        Scrape C{path} through the proxy: status and body.
        """
        response = await self.http.get(self.url(path), timeout=WITHIN)
        return response.code, await treq.content(response)

    async def check(self) -> None:
        """
        Start, then scrape the example's path: its target's body, or the
        agent's word that the target is out of reach.
        """
        await self.start()
        example = self.example
        code, body = await self.get(example.scraped)
        if example.served:
            if code != 200 or example.served not in body:
                raise self.fail(f"/{example.scraped}: {code} {body[:300]!r}")
        elif code != 503 or b"unreachable" not in body:
            # prometheus-proxy's status for a target the agent cannot
            # reach, not the proxy's 404 for a path nobody serves.
            raise self.fail(f"/{example.scraped}: {code} {body[:300]!r}")
        for child in self.children:
            if "Traceback" in child.log():
                raise self.fail(f"{child.name} logged a traceback")


def certificatesWhereExpected(case: TestCase) -> str:
    """
    A fresh directory with test certificates where prometheus-proxy's TLS
    examples expect them: C{testing/certs/}, under the names
    prometheus-proxy's own test certificates have. Its server certificate
    is for C{*.test.google.fr}, which the examples' C{overrideAuthority}
    expects.
    """
    workdir: str = os.path.abspath(case.mktemp())
    certs = os.path.join(workdir, "testing", "certs")
    os.makedirs(certs)
    issued = os.path.join(workdir, "issued")
    os.makedirs(issued)
    made = makeCertificates(issued)
    for source, name in [
        (made.ca, "ca.pem"),
        (made.googleServer.cert, "server1.pem"),
        (made.googleServer.key, "server1.key"),
        (made.client.cert, "client.pem"),
        (made.client.key, "client.key"),
    ]:
        shutil.copyfile(source, os.path.join(certs, name))
    return workdir


def concurrently(runs: Sequence[ExampleRun]) -> Deferred[list[None]]:
    return gatherResults([Deferred.fromCoroutine(run.check()) for run in runs])


class ExampleTests(TestCase):
    """
    Each example starts proxy and agent, registers its paths and scrapes.
    """

    async def test_ownMetricsExamples(self) -> None:
        """
        C{simple.conf}, C{federate.conf} and C{nginx-proxy.conf}: their
        paths scrape the proxy's and the agent's own metrics where the files
        say (on the run's ports).
        """
        examples = [
            upstream(
                "simple.conf",
                ["proxy_metrics", "agent_metrics"],
                "proxy_metrics",
                b"# TYPE proxy_",
                ownMetrics=["proxy", "agent"],
            ),
            upstream(
                "federate.conf",
                ["federate_metrics", "agent_metrics"],
                "agent_metrics",
                b"# TYPE agent_",
                ownMetrics=["agent"],
            ),
            upstream(
                "nginx-proxy.conf",
                ["app1_metrics", "app2_metrics", "app3_metrics"],
                "app1_metrics",
                b"# TYPE proxy_",
                ownMetrics=["proxy"],
            ),
        ]
        await concurrently([ExampleRun(self, example) for example in examples])

    async def test_remoteTargetExamples(self) -> None:
        """
        C{myapps.conf}, C{agent-filters.conf} and an agent reading
        C{discovery-targets.conf}: every path registers, and a scrape
        reaches the agent, which answers that it could not reach the target.
        """
        discovering = (
            "// The agent's own file, as discovery-targets.conf says to write it.\n"
            "agent {\n"
            "  discovery {\n"
            "    enabled = true\n"
            '    file.path = "discovery-targets.conf"\n'
            "  }\n"
            "}\n"
        )
        examples = [
            upstream(
                "myapps.conf", ["app1_metrics", "app2_metrics", "app3_metrics"], "app2_metrics"
            ),
            upstream("agent-filters.conf", ["app1_metrics"], "app1_metrics"),
            upstream(
                "discovery-targets.conf",
                ["app1_metrics", "app2_metrics"],
                "app1_metrics",
                agentConfig="discovering.conf",
                files={"discovering.conf": discovering},
            ),
        ]
        await concurrently([ExampleRun(self, example) for example in examples])

    async def test_tlsExamples(self) -> None:
        """
        C{tls-no-mutual-auth.conf} and C{tls-with-mutual-auth.conf}, with
        test certificates where the files expect them (C{testing/certs/}
        under the directory they run in). The files name no paths: the
        agent's file includes the example and adds one.
        """
        target = TargetServer(self)
        url = hoconString(target.url("metrics"))
        runs = []
        for name in ("tls-no-mutual-auth.conf", "tls-with-mutual-auth.conf"):
            withPath = (
                f"include {hoconString(name)}\n"
                f"agent.pathConfigs = [{{name: app, path: app_metrics, url: {url}}}]\n"
            )
            example = upstream(
                name,
                ["app_metrics"],
                "app_metrics",
                SAMPLE,
                agentConfig="with-path.conf",
                files={"with-path.conf": withPath},
            )
            runs.append(ExampleRun(self, example, certificatesWhereExpected(self)))
        await concurrently(runs)
        # The proxy served TLS on its agent port: the agents' links are TLS.
        for run in runs:
            self.assertIn("(TLS)", run.proxy.log())


# The leniencies of LENIENT, each told in one line that names the file and
# the entry, as promtwist.config words them.
LENIENCIES = {
    "extensionless -c": "lenient: no such file; read lenient.conf, as prometheus-proxy does",
    "labels": "lenient.conf: agent.pathConfigs[1].labels: ",
    "scheme": "lenient.conf: agent.pathConfigs[2].url: ",
    "duplicate": "lenient.conf: agent.pathConfigs[3].path: duplicate path ",
}


class LenientTests(TestCase):
    """
    What prometheus-proxy starts with although it is not quite right starts
    promtwist too, each leniency with one warning, which a reload of the
    unchanged file does not repeat.
    """

    async def test_lenientFile(self) -> None:
        """
        A file with labels that are not JSON, a URL without a scheme and a
        path listed twice, named by C{-c} without its extension: proxy and
        agent start, every path is served as prometheus-proxy serves it,
        and each warning appears once, also after C{SIGHUP}.
        """
        target = TargetServer(self)
        metrics = hoconString(target.url("metrics"))
        schemeless = hoconString(target.url("metrics").removeprefix("http://"))
        lenient = (
            "agent {\n"
            "  pathConfigs = [\n"
            f"    {{name: replaced, path: twice, url: {hoconString(target.url('nothing'))}}}\n"
            f'    {{name: labels, path: badlabels, labels: "{{not json", url: {metrics}}}\n'
            f"    {{name: schemeless, path: schemeless, url: {schemeless}}}\n"
            f"    {{name: kept, path: twice, url: {metrics}}}\n"
            "  ]\n"
            "}\n"
        )
        example = Example(
            "lenient",
            frozenset({"twice", "badlabels", "schemeless"}),
            "twice",
            SAMPLE,
            files={"lenient.conf": lenient},
        )
        run = ExampleRun(self, example)
        await run.check()
        # The last entry of a path listed twice serves it; the others too.
        for path in ("badlabels", "schemeless"):
            code, body = await run.get(path)
            if code != 200 or SAMPLE not in body:
                raise run.fail(f"/{path}: {code} {body[:300]!r}")
        labels = {g["labels"]["__metrics_path__"]: g["labels"] for g in await run.discovery()}
        # Served without labels: the labels of a path that has none.
        self.assertEqual(set(labels["/badlabels"]), set(labels["/twice"]))
        self.assertWarnedOnce(run)
        run.agent.signalProcess(signal.SIGHUP)
        run.proxy.signalProcess(signal.SIGHUP)

        async def reloaded() -> bool:
            return (
                "configuration reloaded from" in run.agent.log()
                and "reloaded agent identities" in run.proxy.log()
            )

        await run.eventually(reloaded, "both reloads", WITHIN)
        self.assertWarnedOnce(run)

    def assertWarnedOnce(self, run: ExampleRun) -> None:
        agent, proxy = run.agent.log(), run.proxy.log()
        counts = {what: agent.count(line) for what, line in LENIENCIES.items()}
        counts["proxy: extensionless -c"] = proxy.count(LENIENCIES["extensionless -c"])
        if set(counts.values()) != {1}:
            raise run.fail(f"each leniency warned once: {counts}")
