"""
End to end: a real Prometheus server discovers and scrapes targets through a
promtwist proxy and agent, each run as its own C{twistd} process exactly as a
user runs them (see L{promtwist.test.processes}).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from promtwist.test.processes import AGENT_NAME, Child, Cluster, freePort, writeFile

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


def prometheusConfig(cluster: Cluster, job: str) -> str:
    # No relabelling: every label, the instance included, must come from the
    # proxy's discovery document as a user would get it.
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
"""


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
        # e2e_broken's target answers 404: Prometheus must show why.
        cluster = Cluster(
            self, paths={"e2e_one": "metrics", "e2e_two": "metrics", "e2e_broken": "missing"}
        )
        await cluster.start()
        proxyAndAgentReady = time.monotonic()

        promPort = freePort()
        promConfig = writeFile(
            os.path.join(cluster.workdir, "prometheus.yml"), prometheusConfig(cluster, job)
        )
        prometheus = Child(
            self,
            "prometheus",
            [
                binary,
                f"--config.file={promConfig}",
                f"--storage.tsdb.path={os.path.join(cluster.workdir, 'tsdb')}",
                f"--web.listen-address=127.0.0.1:{promPort}",
                "--log.level=info",
            ],
            cluster.workdir,
        )
        cluster.children.append(prometheus)
        prometheus.start()
        api = f"http://127.0.0.1:{promPort}/api/v1"

        async def ready() -> bool:
            response = await cluster.http.get(f"http://127.0.0.1:{promPort}/-/ready", timeout=2)
            await treq.content(response)
            return bool(response.code == 200)

        await cluster.eventually(ready, "Prometheus ready", 30)

        expected = {
            path: f"127.0.0.1:{cluster.scrapePort}/{path}"
            for path in cluster.paths
            if path != "e2e_broken"
        }
        broken = f"127.0.0.1:{cluster.scrapePort}/e2e_broken"
        state: dict[str, Any] = {}

        async def apiGet(what: str) -> Any:
            response = await cluster.http.get(f"{api}/{what}", timeout=2)
            document = await treq.json_content(response)
            if document.get("status") != "success":
                raise AssertionError(f"{what}: {document}")
            return document["data"]

        async def allUp() -> bool:
            targets = (await apiGet("targets?state=active"))["activeTargets"]
            up = (await apiGet("query?query=" + _q(f'up{{job="{job}"}}')))["result"]
            samples = (await apiGet("query?query=" + _q(f'promtwist_e2e_sample{{job="{job}"}}')))[
                "result"
            ]
            state.update(targets=targets, up=up, samples=samples)
            healthy = {t["labels"].get("instance") for t in targets if t["health"] == "up"}
            upOnes = {s["metric"].get("instance") for s in up if s["value"][1] == "1"}
            arrived = {s["metric"].get("instance") for s in samples if s["value"][1] == "42"}
            want = set(expected.values())
            failing = [t for t in targets if t["labels"].get("instance") == broken]
            reasoned = bool(failing) and "answered HTTP 404" in failing[0]["lastError"]
            return want <= healthy and want <= upOnes and want <= arrived and reasoned

        try:
            await cluster.eventually(allUp, "every target up in Prometheus", 60, interval=0.5)
        except self.failureException as e:
            raise self.failureException(
                f"{e}\n\nlast Prometheus API answers:\n{json.dumps(state, indent=1)[:8000]}"
            ) from None
        allScraped = time.monotonic()

        try:
            self._checkTargets(cluster, job, expected, state)
        except self.failureException as e:
            raise cluster.fail(
                f"{e}\n\nlast Prometheus API answers:\n{json.dumps(state, indent=1)[:8000]}"
            ) from None
        print(
            f"\n  e2e timings: proxy+agent serving after {proxyAndAgentReady - started:.2f}s, "
            f"Prometheus saw every target up {allScraped - proxyAndAgentReady:.2f}s later"
        )

    def _checkTargets(
        self, cluster: Cluster, job: str, expected: dict[str, str], state: dict[str, Any]
    ) -> None:
        targets = {t["labels"]["instance"]: t for t in state["targets"]}
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
            self.assertEqual(discovered.get("instance"), instance, "instance from discovery")
        for series in ("up", "samples"):
            byInstance = {s["metric"]["instance"]: s for s in state[series]}
            if series == "up":
                self.assertEqual(byInstance.pop(broken["labels"]["instance"])["value"][1], "0")
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


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
