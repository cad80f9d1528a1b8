"""
The Kubernetes examples in C{examples/kubernetes/}, checked offline: every
built-in object against the Kubernetes API schemas bundled with
C{kubernetes-validate} (strict: an unknown field is an error), the
ServiceMonitor against the structure promtwist relies on (its CRD belongs to
the Prometheus Operator and is not bundled), and the objects against each
other and promtwist's settings: selectors that select, named ports that
exist, probes on the admin paths, a configuration the agent accepts.

C{kubernetes-validate} (with PyYAML and jsonschema) is a test-only
dependency: the C{test} extra of setup.cfg, which C{scripts/test} installs.
Without it these tests fail, saying how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import import_module
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.load import loadAgentSettings
from promtwist.config.settings import AgentSettings, ProxySettings
from promtwist.test.helpers import sourceTreeFile

EXAMPLES = os.path.join("examples", "kubernetes")

# The oldest Kubernetes release the examples promise to work with, and the
# newest whose schemas the installed kubernetes-validate bundles.
OLDEST = "1.30.0"

# What promtwist's ServiceMonitor uses of the CRD, as a JSON schema; the
# endpoint's fields are closed, so that a misspelt one is caught.
SERVICE_MONITOR: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            # The CRD's own pattern for durations.
                            "interval": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                                "(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
                            },
                        },
                    },
                },
            },
        },
    },
}


def _need(name: str) -> ModuleType:
    """
    Import a test-only dependency, or fail saying how to install it.
    """
    try:
        return import_module(name)
    except ImportError as e:
        raise AssertionError(
            f"{name} is not installed: pip install '.[test]' (scripts/test does): {e}"
        ) from None


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """
    Every object in the examples, with the file it is in.
    """
    yaml = _need("yaml")
    directory = sourceTreeFile(EXAMPLES)
    for name in sorted(os.listdir(directory)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                for document in yaml.safe_load_all(f):
                    if document is not None:
                        yield name, document


class KubernetesExamplesTests(SynchronousTestCase):
    """
    C{examples/kubernetes/} is valid Kubernetes and fits promtwist.
    """

    def setUp(self) -> None:
        self.objects = list(_documents())
        self.byKind: dict[str, list[dict[str, Any]]] = {}
        for _, document in self.objects:
            self.byKind.setdefault(document["kind"], []).append(document)

    def _named(self, kind: str, name: str) -> dict[str, Any]:
        for document in self.byKind.get(kind, []):
            if document["metadata"]["name"] == name:
                return document
        self.fail(f"no {kind} {name} in {EXAMPLES}")

    def test_expectedObjects(self) -> None:
        """
        The examples hold the proxy's Deployment and Service, the agent's
        ConfigMap and Deployment, and a ServiceMonitor.
        """
        self.assertEqual(
            sorted((d["kind"], d["metadata"]["name"]) for _, d in self.objects),
            [
                ("ConfigMap", "promtwist-agent"),
                ("Deployment", "promtwist-agent"),
                ("Deployment", "promtwist-proxy"),
                ("Service", "promtwist-proxy"),
                ("ServiceMonitor", "promtwist-proxy"),
            ],
        )

    def test_kubernetesSchemas(self) -> None:
        """
        Every built-in object validates, strictly, against the oldest
        supported and the newest bundled Kubernetes schemas.
        """
        kv = _need("kubernetes_validate")
        versions = sorted({OLDEST, kv.latest_version()})
        checked = 0
        for name, document in self.objects:
            if document["apiVersion"].startswith("monitoring.coreos.com/"):
                continue
            for version in versions:
                try:
                    kv.validate(document, version, strict=True)
                except kv.ValidationError as e:
                    self.fail(f"{name}: {document['kind']} invalid for Kubernetes {version}: {e}")
                checked += 1
        self.assertEqual(checked, 4 * len(versions))

    def test_serviceMonitorStructure(self) -> None:
        """
        The ServiceMonitor has the structure the operator's CRD requires of
        what it uses, and selects the proxy's Service by its labels and its
        own metrics port by name.
        """
        jsonschema = _need("jsonschema")
        monitor = self._named("ServiceMonitor", "promtwist-proxy")
        jsonschema.validate(monitor, SERVICE_MONITOR)
        service = self._named("Service", "promtwist-proxy")
        for key, value in monitor["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(service["metadata"]["labels"].get(key), value, key)
        servicePorts = {port["name"]: port for port in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            self.assertIn(endpoint["port"], servicePorts)
        self.assertEqual(servicePorts["metrics"]["port"], ProxySettings().metrics_port)

    def test_structureSchemaRejects(self) -> None:
        """
        The ServiceMonitor schema is not vacuous: a misspelt endpoint field
        and a malformed interval are errors.
        """
        jsonschema = _need("jsonschema")
        monitor = self._named("ServiceMonitor", "promtwist-proxy")
        for endpoint in ({"port": "metrics", "intreval": "30s"}, {"port": "x", "interval": "30"}):
            broken = {**monitor, "spec": {**monitor["spec"], "endpoints": [endpoint]}}
            self.assertRaises(
                jsonschema.ValidationError, jsonschema.validate, broken, SERVICE_MONITOR
            )

    def _container(self, deployment: dict[str, Any]) -> dict[str, Any]:
        containers = deployment["spec"]["template"]["spec"]["containers"]
        self.assertEqual(len(containers), 1)
        container: dict[str, Any] = containers[0]
        return container

    def test_serviceSelectsProxy(self) -> None:
        """
        The proxy's Service selects the proxy's pods, and its target ports
        are the container's named ports on promtwist's default port numbers.
        """
        service = self._named("Service", "promtwist-proxy")
        deployment = self._named("Deployment", "promtwist-proxy")
        podLabels = deployment["spec"]["template"]["metadata"]["labels"]
        for key, value in service["spec"]["selector"].items():
            self.assertEqual(podLabels.get(key), value, key)
        for key, value in deployment["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(podLabels.get(key), value, key)
        ports = {p["name"]: p["containerPort"] for p in self._container(deployment)["ports"]}
        defaults = ProxySettings()
        self.assertEqual(
            ports,
            {
                "scrape": defaults.http_port,
                "agent": defaults.agent_port,
                "metrics": defaults.metrics_port,
                "admin": defaults.admin_port,
            },
        )
        for port in service["spec"]["ports"]:
            self.assertEqual(ports[port["targetPort"]], port["port"], port["name"])

    def test_probes(self) -> None:
        """
        Both Deployments probe liveness on C{/ping} and readiness on
        C{/healthcheck} of the admin port, which their environment enables.
        """
        for name, settings in (
            ("promtwist-proxy", ProxySettings()),
            ("promtwist-agent", AgentSettings()),
        ):
            container = self._container(self._named("Deployment", name))
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            self.assertEqual(ports["admin"], settings.admin_port, name)
            env = {e["name"]: e.get("value") for e in container["env"]}
            self.assertEqual(env["ADMIN_ENABLED"], "true", name)
            for probe, path in (
                ("livenessProbe", settings.admin_ping_path),
                ("readinessProbe", settings.admin_health_check_path),
                ("startupProbe", settings.admin_ping_path),
            ):
                self.assertEqual(
                    container[probe]["httpGet"], {"path": f"/{path}", "port": "admin"}, name
                )

    def test_agentConfiguration(self) -> None:
        """
        The agent's ConfigMap, mounted where C{AGENT_CONFIG} points, with
        the Deployment's plain environment, is a configuration promtwist's
        agent accepts, dialling the proxy's Service on its agent port.
        """
        configMap = self._named("ConfigMap", "promtwist-agent")
        deployment = self._named("Deployment", "promtwist-agent")
        container = self._container(deployment)
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        mount = container["volumeMounts"][0]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(volumes[mount["name"]]["configMap"]["name"], "promtwist-agent")
        self.assertEqual(os.path.dirname(env["AGENT_CONFIG"]), mount["mountPath"])

        directory = self.mktemp()
        os.makedirs(directory)
        for key, text in configMap["data"].items():
            with open(os.path.join(directory, key), "w", encoding="utf-8") as f:
                f.write(text)
        env["AGENT_CONFIG"] = os.path.join(directory, os.path.basename(env["AGENT_CONFIG"]))
        env["AGENT_NAME"] = "pod-name"
        settings = loadAgentSettings({}, env)
        service = self._named("Service", "promtwist-proxy")
        agentPort = {p["name"]: p["port"] for p in service["spec"]["ports"]}["agent"]
        self.assertEqual(
            [(e.host, e.port) for e in settings.proxy_endpoints],
            [(service["metadata"]["name"], agentPort)],
        )
        self.assertEqual([p.path for p in settings.path_configs], ["agent_metrics"])
