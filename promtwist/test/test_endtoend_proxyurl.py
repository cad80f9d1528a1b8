"""
End to end, PushProx style: a real Prometheus whose jobs set C{proxy_url} to
promtwist's scrape port scrapes targets by their own C{host:port}, served by
a promtwist agent that declared them (C{agent.targets}); the proxy and the
agent run as C{twistd} processes, as a user runs them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from promtwist.test.certs import certificates
from promtwist.test.processes import AGENT_NAME, Cluster, TargetServer, freePort
from promtwist.test.test_endtoend import PROMETHEUS_MISSING, _q, prometheusBinary, runPrometheus

# The scrape port's basic-auth credentials: a proxy_url with user info makes
# Prometheus send them as Proxy-Authorization.
USER, PASSWORD = "prom", "s3cret"


def prometheusConfig(cluster: Cluster, plain: str, secure: str, other: str) -> str:
    proxy = f"http://{USER}:{PASSWORD}@127.0.0.1:{cluster.scrapePort}/"
    plainProxy = f"http://127.0.0.1:{cluster.scrapePort}/"
    return f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  # A path of the same agent, scraped the prometheus-proxy way.
  - job_name: path
    metrics_path: /e2e_one
    basic_auth: {{username: {USER}, password: {PASSWORD}}}
    static_configs: [{{targets: ["127.0.0.1:{cluster.scrapePort}"]}}]
  # Without the proxy credentials.
  - job_name: anonymous
    proxy_url: {plainProxy}
    static_configs: [{{targets: ["{plain}"]}}]
  # As a PushProx user's job: the target's own address, through proxy_url.
  - job_name: plain
    proxy_url: {proxy}
    static_configs: [{{targets: ["{plain}"]}}]
  # An https target: scheme http with _scheme, as PushProx users write it.
  - job_name: secure
    proxy_url: {proxy}
    params: {{_scheme: [https]}}
    static_configs: [{{targets: ["{secure}"]}}]
  # The same target without _scheme: the agent's declaration (https://)
  # decides.
  - job_name: declared
    proxy_url: {proxy}
    static_configs: [{{targets: ["{secure}"]}}]
  # The same target found through discovery of the claimed targets.
  - job_name: discovered
    proxy_url: {proxy}
    params: {{_scheme: [https]}}
    http_sd_configs:
      - url: {plainProxy}discovery?routing=host
        refresh_interval: 1s
        basic_auth: {{username: {USER}, password: {PASSWORD}}}
    relabel_configs:
      - source_labels: [__address__]
        regex: "{secure}"
        action: keep
  # scheme: https makes Prometheus send CONNECT, which is refused.
  - job_name: connect
    proxy_url: {proxy}
    scheme: https
    static_configs: [{{targets: ["{secure}"]}}]
  # A port the agent did not declare.
  - job_name: undeclared
    proxy_url: {proxy}
    static_configs: [{{targets: ["{other}"]}}]
"""


def trusting(ca: str) -> list[str]:
    """
    The agent options that make it trust C{ca} for https targets: the path
    made absolute, since the agent runs in another directory.
    """
    return ["--https_truststore", os.path.abspath(ca)]


class ProxyURLEndToEndTests(TestCase):
    timeout = 120

    async def test_prometheusScrapesByTarget(self) -> None:
        binary = prometheusBinary()
        if binary is None:
            self.fail(PROMETHEUS_MISSING)
        certs = certificates(self)
        plainServer = TargetServer(self)
        plain = f"127.0.0.1:{plainServer.portNumber}"
        # The certificate names localhost, which the agent verifies.
        secure = f"localhost:{TargetServer(self, tls=certs.server).portNumber}"
        other = f"127.0.0.1:{freePort()}"
        cluster = Cluster(
            self,
            # The agent serves a path as well, over the same link; a full
            # URL, so that start() does not scrape it without credentials.
            paths={"e2e_one": plainServer.url("metrics")},
            agentArgs=trusting(certs.ca),
            targets=[plain, f"https://{secure}"],
            proxyArgs=[
                f"-Dproxy.http.basicAuth.username={USER}",
                f"-Dproxy.http.basicAuth.password={PASSWORD}",
            ],
        )
        await cluster.start()

        promPort = freePort()
        apiGet = await runPrometheus(
            self, cluster, binary, promPort, prometheusConfig(cluster, plain, secure, other)
        )
        state: dict[str, Any] = {}

        def byJob(targets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            return {t["labels"]["job"]: t for t in targets}

        async def settled() -> bool:
            targets = byJob((await apiGet("targets?state=active"))["activeTargets"])
            samples = (await apiGet("query?query=" + _q("promtwist_e2e_sample")))["result"]
            up = (await apiGet("query?query=" + _q("up")))["result"]
            state.update(targets=targets, samples=samples, up=up)
            stored = {(s["metric"]["job"], s["metric"]["instance"]) for s in samples}
            upOnes = {s["metric"]["job"] for s in up if s["value"][1] == "1"}
            return (
                {
                    ("plain", plain),
                    ("secure", secure),
                    ("declared", secure),
                    ("discovered", secure),
                }
                <= stored
                and {"plain", "secure", "declared", "discovered", "path"} <= upOnes
                and all(
                    targets.get(job, {}).get("lastError")
                    for job in ("connect", "undeclared", "anonymous")
                )
            )

        try:
            await cluster.eventually(settled, "proxy_url targets scraped", 60, interval=0.5)
        except self.failureException as e:
            raise self.failureException(
                f"{e}\n\nlast Prometheus API answers:\n{json.dumps(state, indent=1)[:8000]}"
            ) from None
        targets = state["targets"]
        self.assertEqual(targets["plain"]["labels"]["instance"], plain)
        self.assertEqual(targets["secure"]["labels"]["instance"], secure)
        # Discovery gave the target's own labels and agent.
        self.assertEqual(targets["discovered"]["labels"]["agentName"], AGENT_NAME)
        # Each refusal reaches Prometheus with its reason.
        self.assertEqual(targets["connect"]["health"], "down")
        self.assertIn("method CONNECT not allowed", targets["connect"]["lastError"])
        self.assertIn("_scheme", targets["connect"]["lastError"])
        self.assertEqual(targets["undeclared"]["health"], "down")
        self.assertIn(f"no agent serves target {other}", targets["undeclared"]["lastError"])
        self.assertIn("407", targets["anonymous"]["lastError"])
        response = await cluster.http.get(
            f"http://127.0.0.1:{cluster.scrapePort}/discovery?routing=host",
            auth=(USER, PASSWORD),
            timeout=2,
        )
        listed = await treq.json_content(response)
        self.assertEqual(sorted(t for g in listed for t in g["targets"]), sorted([plain, secure]))
