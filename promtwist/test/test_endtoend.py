"""
End to end: a real Prometheus server discovers and scrapes targets through a
promtwist proxy and agent, each run as its own C{twistd} process exactly as a
user runs them (see L{promtwist.test.processes}).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from promtwist.test import grafana
from promtwist.test.processes import (
    AGENT_METRICS_PATH,
    AGENT_NAME,
    PROXY_METRICS_PATH,
    Child,
    Cluster,
    freePort,
    writeFile,
)

# ---------------------------------------------------------------------------
# Prometheus.


def prometheusBinary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )


PROMETHEUS_MISSING = (
    "the real Prometheus server is needed and 'prometheus' is not on PATH: "
    "install the Debian package 'prometheus' "
    "(apt-get install --no-install-recommends prometheus; scripts/test does it when run as root)"
)


# The jobs that scrape the proxy's and the agent's metrics ports directly, as
# docs/deployment.md names them.
PROXY_JOB = "promtwist-proxy"
AGENT_JOB = "promtwist-agent"

# What the test gives the dashboard's $__rate_interval: Grafana's is at least
# four scrape intervals, and Prometheus here scrapes every second.
RATE_INTERVAL = "4s"

# The dashboard's agent panels that read 0 rather than nothing when the agent
# is down.
ZERO_WHEN_AGENT_DOWN = (
    "Agent link up",
    "Agent scrapes/s by type",
    "Agent results/s by type",
    "Agent backlog and scrapes in flight",
)


# The relabelling docs/deployment.md gives for a distinct instance per path
# (what proxy.service.discovery.perPathInstance does in the proxy): the
# instance <host:port>/<path>, unless the path has an instance of its own.
PER_PATH_INSTANCE = """\
    relabel_configs:
      - source_labels: [instance, __address__, __metrics_path__]
        regex: ";(.+);(.+)"
        replacement: "${1}${2}"
        target_label: instance
"""


def compatJob(job: str) -> str:
    """
    The job that scrapes one discovered path with nothing relabelled but
    the choice of path, as a prometheus-proxy user's http_sd job does.
    """
    return job + "_compat"


def prometheusConfig(cluster: Cluster, job: str, promPort: int) -> str:
    # Every label but the instance comes from the proxy's discovery document
    # as a user would get it; the instance from the documented relabelling,
    # since the paths export the same names. The compat job keeps the
    # default instance, which must be the proxy's host:port, as from
    # prometheus-proxy. Prometheus scrapes itself too: the dashboard must not
    # select its process metrics.
    return f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: {job}
    http_sd_configs:
      - url: http://127.0.0.1:{cluster.scrapePort}/discovery
        refresh_interval: 1s
{PER_PATH_INSTANCE}\
  - job_name: {compatJob(job)}
    http_sd_configs:
      - url: http://127.0.0.1:{cluster.scrapePort}/discovery
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__metrics_path__]
        regex: /e2e_one
        action: keep
  - job_name: {PROXY_JOB}
    static_configs: [{{targets: ["127.0.0.1:{cluster.proxyMetricsPort}"]}}]
  - job_name: {AGENT_JOB}
    static_configs: [{{targets: ["127.0.0.1:{cluster.agentMetricsPort}"]}}]
  - job_name: prometheus
    static_configs: [{{targets: ["127.0.0.1:{promPort}"]}}]
"""


async def runPrometheus(
    case: TestCase, cluster: Cluster, binary: str, port: int, config: str
) -> Callable[[str], Awaitable[Any]]:
    """
    Start Prometheus with C{config} on C{port}, as one of C{cluster}'s
    children, and wait until it is ready.

    @return: what gets one answer of its HTTP API (C{targets?state=active},
        C{query?query=...}), failing unless it says success.
    """
    prometheus = Child(
        case,
        "prometheus",
        [
            binary,
            f"--config.file={writeFile(os.path.join(cluster.workdir, 'prometheus.yml'), config)}",
            f"--storage.tsdb.path={os.path.join(cluster.workdir, 'tsdb')}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=info",
        ],
        cluster.workdir,
    )
    cluster.children.append(prometheus)
    prometheus.start()

    async def ready() -> bool:
        response = await cluster.http.get(f"http://127.0.0.1:{port}/-/ready", timeout=2)
        await treq.content(response)
        return bool(response.code == 200)

    await cluster.eventually(ready, "Prometheus ready", 30)

    async def apiGet(what: str) -> Any:
        response = await cluster.http.get(f"http://127.0.0.1:{port}/api/v1/{what}", timeout=2)
        document = await treq.json_content(response)
        if document.get("status") != "success":
            raise AssertionError(f"{what}: {document}")
        return document["data"]

    return apiGet


class EndToEndTests(TestCase):
    """
    Prometheus → http_sd from the proxy → scrapes through proxy and agent.
    """

    timeout = 120

    async def test_prometheusScrapesThroughPromtwist(self) -> None:
        binary = prometheusBinary()
        if binary is None:
            self.fail(PROMETHEUS_MISSING)
        job = "promtwist_e2e"
        started = time.monotonic()
        # e2e_broken's target answers 404: Prometheus must show why. The
        # proxy's and agent's own metrics are served through the proxy too.
        cluster = Cluster(
            self,
            paths={"e2e_one": "metrics", "e2e_two": "metrics", "e2e_broken": "missing"},
            metrics=True,
        )
        await cluster.start()
        proxyAndAgentReady = time.monotonic()

        promPort = freePort()
        apiGet = await runPrometheus(
            self, cluster, binary, promPort, prometheusConfig(cluster, job, promPort)
        )

        expected = {
            path: f"127.0.0.1:{cluster.scrapePort}/{path}"
            for path, targetPath in cluster.paths.items()
            if targetPath == "metrics"
        }
        ownMetrics = {
            f"127.0.0.1:{cluster.scrapePort}/{path}"
            for path in (PROXY_METRICS_PATH, AGENT_METRICS_PATH)
        }
        broken = f"127.0.0.1:{cluster.scrapePort}/e2e_broken"
        state: dict[str, Any] = {}

        async def allUp() -> bool:
            targets = (await apiGet("targets?state=active"))["activeTargets"]
            up = (await apiGet("query?query=" + _q(f'up{{job="{job}"}}')))["result"]
            samples = (await apiGet("query?query=" + _q(f'promtwist_e2e_sample{{job="{job}"}}')))[
                "result"
            ]
            compat = (
                await apiGet("query?query=" + _q(f'promtwist_e2e_sample{{job="{compatJob(job)}"}}'))
            )["result"]
            state.update(targets=targets, up=up, samples=samples, compat=compat)
            healthy = {t["labels"].get("instance") for t in targets if t["health"] == "up"}
            upOnes = {s["metric"].get("instance") for s in up if s["value"][1] == "1"}
            arrived = {s["metric"].get("instance") for s in samples if s["value"][1] == "42"}
            want = set(expected.values())
            if not ownMetrics <= healthy:
                return False
            failing = [t for t in targets if t["labels"].get("instance") == broken]
            reasoned = bool(failing) and "answered HTTP 404" in failing[0]["lastError"]
            # The targets were asked before the samples: the compat
            # target's first scrape may fall between the two answers.
            compatUp = [t["health"] for t in targets if t["labels"].get("job") == compatJob(job)]
            compatArrived = [s["value"][1] for s in compat] == ["42"] and compatUp == ["up"]
            seen = want <= healthy and want <= upOnes and want <= arrived
            return seen and reasoned and compatArrived

        try:
            await cluster.eventually(allUp, "every target up in Prometheus", 60, interval=0.5)
        except self.failureException as e:
            raise self.failureException(
                f"{e}\n\nlast Prometheus API answers:\n{json.dumps(state, indent=1)[:8000]}"
            ) from None
        allScraped = time.monotonic()

        try:
            self._checkTargets(cluster, job, expected, ownMetrics, state)
        except self.failureException as e:
            raise cluster.fail(
                f"{e}\n\nlast Prometheus API answers:\n{json.dumps(state, indent=1)[:8000]}"
            ) from None

        dashboard: dict[str, Any] = {}
        try:
            await self._checkDashboard(cluster, job, apiGet, dashboard)
        except self.failureException as e:
            raise cluster.fail(
                f"{e}\n\nlast dashboard answers:\n{json.dumps(dashboard, indent=1)[:8000]}"
            ) from None
        dashboardDone = time.monotonic()
        print(
            f"\n  e2e timings: proxy+agent serving after {proxyAndAgentReady - started:.2f}s, "
            f"Prometheus saw every target up {allScraped - proxyAndAgentReady:.2f}s later, "
            f"the dashboard checked in {dashboardDone - allScraped:.2f}s more"
        )

    async def _checkDashboard(
        self,
        cluster: Cluster,
        job: str,
        apiGet: Callable[[str], Awaitable[Any]],
        state: dict[str, Any],
    ) -> None:
        """
        Every query of the example dashboard returns data, for every choice
        of its job variables, with each process counted once: Prometheus
        scrapes the proxy and the agent both directly and through the proxy.
        Then the agent is killed, and its panels read 0 rather than nothing.
        """
        dashboard = grafana.load(grafana.dashboardFile())
        queries = grafana.panelQueries(dashboard)
        variables = grafana.variables(dashboard)

        async def choices() -> list[dict[str, str]]:
            # As Grafana resolves them: in order, each query seeing the values
            # chosen before it; single-valued ones take each option in turn,
            # multi-valued ones are All.
            combos = [{"__rate_interval": RATE_INTERVAL}]
            options: dict[str, set[str]] = {}
            for variable in variables:
                following = []
                for values in combos:
                    selector = grafana.substitute(variable.selector, values)
                    found = sorted(
                        await apiGet(f"label/{variable.label}/values?match[]={_q(selector)}")
                    )
                    options.setdefault(variable.name, set()).update(found)
                    if variable.multi:
                        following.append({**values, variable.name: grafana.regexValue(found)})
                    else:
                        following.extend({**values, variable.name: value} for value in found)
                combos = following
            state["options"] = {name: sorted(found) for name, found in options.items()}
            return combos

        async def everyQueryAnswers() -> list[tuple[dict[str, str], dict[str, Any]]] | None:
            answers = []
            empty = []
            for values in await choices():
                results = {}
                for query in queries:
                    expr = grafana.substitute(query.expr, values)
                    result = (await apiGet("query?query=" + _q(expr)))["result"]
                    if not any(not math.isnan(float(s["value"][1])) for s in result):
                        empty.append(f"{query} for {values}: {expr} -> {result}")
                    results[query.panel + "/" + query.refId] = result
                answers.append((values, results))
            state["no data"] = empty
            return None if empty else answers

        answers = await cluster.eventually(
            everyQueryAnswers, "every dashboard query returns data", 30, interval=0.5
        )
        self.assertEqual(
            state["options"]["proxy_job"], sorted([job, PROXY_JOB]), "the proxy under two jobs"
        )
        self.assertEqual(
            state["options"]["agent_job"], sorted([job, AGENT_JOB]), "the agent under two jobs"
        )
        for values, results in answers:
            chosen = f"{values['proxy_job']} and {values['agent_job']}"
            self.assertEqual(_only(results["Connected agents/A"]), "1", chosen)
            self.assertEqual(_only(results["Paths served/A"]), str(len(cluster.paths)), chosen)
            self.assertEqual(_only(results["Agent link up/A"]), "1", chosen)
            for panel in ("CPU", "Resident memory", "Open file descriptors", "Uptime"):
                # The proxy and the agent, each once; not Prometheus.
                jobs = sorted(s["metric"]["job"] for s in results[panel + "/A"])
                self.assertEqual(
                    jobs, sorted([values["proxy_job"], values["agent_job"]]), (panel, chosen)
                )

        # The agent dies: scraped directly, its panels read 0, not nothing,
        # once its last samples leave the rate window.
        await cluster.agent.kill()
        [direct] = [values for values, _ in answers if values["agent_job"] == AGENT_JOB][:1]
        zeroQueries = [query for query in queries if query.panel in ZERO_WHEN_AGENT_DOWN]
        self.assertEqual(
            {query.panel for query in zeroQueries}, set(ZERO_WHEN_AGENT_DOWN), "panels renamed?"
        )

        async def zeros() -> bool:
            found = {}
            for query in zeroQueries + [q for q in queries if q.panel == "Connected agents"]:
                expr = grafana.substitute(query.expr, direct)
                result = (await apiGet("query?query=" + _q(expr)))["result"]
                found[str(query)] = [sample["value"][1] for sample in result]
            state["agent down"] = found
            return all(values == ["0"] for values in found.values())

        await cluster.eventually(zeros, "0 on the dead agent's panels", 20, interval=0.5)

        # Its discovered paths stay listed, answering 503 with the reason,
        # so that Prometheus shows up == 0 and alerts on up can fire.
        instance = f"127.0.0.1:{cluster.scrapePort}/e2e_one"

        async def departedDown() -> bool:
            query = _q(f'up{{job="{job}",instance="{instance}"}}')
            up = (await apiGet("query?query=" + query))["result"]
            targets = (await apiGet("targets?state=active"))["activeTargets"]
            mine = [t for t in targets if t["labels"].get("instance") == instance]
            state["departed"] = {"up": up, "target": mine}
            return (
                [sample["value"][1] for sample in up] == ["0"]
                and len(mine) == 1
                and f"agent '{AGENT_NAME}' disconnected" in mine[0]["lastError"]
            )

        await cluster.eventually(
            departedDown, "the dead agent's path down in Prometheus", 20, interval=0.5
        )

    def _checkTargets(
        self,
        cluster: Cluster,
        job: str,
        expected: dict[str, str],
        ownMetrics: set[str],
        state: dict[str, Any],
    ) -> None:
        targets = {
            t["labels"]["instance"]: t for t in state["targets"] if t["labels"]["job"] == job
        }
        for instance in ownMetrics:
            self.assertEqual(targets.pop(instance)["health"], "up", instance)
        broken = targets.pop(f"127.0.0.1:{cluster.scrapePort}/e2e_broken")
        # promtwist's reason reaches the targets page through the status
        # line: Prometheus reads no error body.
        self.assertEqual(broken["health"], "down", broken)
        self.assertIn(
            f"target {cluster.target.url('missing')} answered HTTP 404", broken["lastError"]
        )
        self.assertEqual(set(targets), set(expected.values()), "exactly the agent's paths")
        for path, instance in expected.items():
            target = targets[instance]
            self.assertEqual(target["health"], "up", target)
            self.assertEqual(target["lastError"], "", target)
            self.assertEqual(target["scrapeUrl"], cluster.url(path), target)
            labels = target["labels"]
            self.assertEqual(labels["job"], job)
            self.assertEqual(labels["team"], "a")
            self.assertEqual(labels["n"], "2")
            self.assertEqual(labels["agentName"], AGENT_NAME)
            discovered = target["discoveredLabels"]
            self.assertEqual(discovered["__metrics_path__"], "/" + path)
            self.assertEqual(discovered["__address__"], f"127.0.0.1:{cluster.scrapePort}")
            # Its instance is the relabelling's (the keys of targets); this
            # Prometheus shows relabelled labels among the discovered ones.
        for series in ("up", "samples"):
            byInstance = {s["metric"]["instance"]: s for s in state[series]}
            if series == "up":
                self.assertEqual(byInstance.pop(broken["labels"]["instance"])["value"][1], "0")
                for instance in ownMetrics:
                    self.assertEqual(byInstance.pop(instance)["value"][1], "1", instance)
            self.assertEqual(set(byInstance), set(expected.values()), series)
            for sample in byInstance.values():
                metric = sample["metric"]
                self.assertEqual(metric["team"], "a", sample)
                self.assertEqual(metric["n"], "2", sample)
                self.assertEqual(metric["job"], job, sample)
                if series == "samples":
                    self.assertEqual(metric["kind"], "x", sample)
                    self.assertEqual(sample["value"][1], "42", sample)
                else:
                    self.assertEqual(sample["value"][1], "1", sample)
        self._checkCompatTarget(cluster, job, state)

    def _checkCompatTarget(self, cluster: Cluster, job: str, state: dict[str, Any]) -> None:
        """
        Without relabelling, a discovered target's instance is the proxy's
        C{host:port}, as from prometheus-proxy, so a migrating user's series
        keep their identity.
        """
        proxy = f"127.0.0.1:{cluster.scrapePort}"
        [target] = [t for t in state["targets"] if t["labels"]["job"] == compatJob(job)]
        self.assertEqual(target["health"], "up", target)
        self.assertEqual(target["scrapeUrl"], cluster.url("e2e_one"), target)
        self.assertEqual(target["labels"]["instance"], proxy, target)
        self.assertNotIn("instance", target["discoveredLabels"], target)
        self.assertEqual(target["labels"]["agentName"], AGENT_NAME, target)
        [sample] = state["compat"]
        self.assertEqual(sample["metric"]["instance"], proxy, sample)
        self.assertEqual(sample["metric"]["team"], "a", sample)


def _only(result: list[dict[str, Any]]) -> str:
    """
    The value of a query result that must be exactly one sample.
    """
    [sample] = result
    return str(sample["value"][1])


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
