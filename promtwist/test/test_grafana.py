"""
The example dashboard's shape, and L{promtwist.test.grafana}, which reads
it for the end-to-end test (where Prometheus runs every query).
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from promtwist.test import grafana


class DashboardTests(SynchronousTestCase):
    """
    The choices that keep the dashboard from counting a process twice or
    selecting what is not promtwist's.
    """

    def setUp(self) -> None:
        self.dashboard = grafana.load(grafana.dashboardFile())
        self.variables = {v.name: v for v in grafana.variables(self.dashboard)}

    def test_jobsSingleValued(self) -> None:
        """
        A job variable takes one job: a process scraped under two jobs
        (directly and through the proxy) is then counted once.
        """
        self.assertFalse(self.variables["proxy_job"].multi)
        self.assertFalse(self.variables["agent_job"].multi)
        self.assertTrue(self.variables["proxy_instance"].multi)
        self.assertTrue(self.variables["agent_instance"].multi)

    def test_noMatchAllValue(self) -> None:
        """
        No variable's All is ".*": All is the listed values, so "All" cannot
        widen a selector to every job in Prometheus.
        """
        for entry in self.dashboard["templating"]["list"]:
            self.assertNotIn("allValue", entry, entry["name"])

    def test_everyQuerySelectsByJobAndInstance(self) -> None:
        """
        Every selector in every panel names one job exactly and the
        instances by the matching variable, so no query reads another
        job's series.
        """
        selector = re.compile(r"\{([^}]*)\}")
        queries = grafana.panelQueries(self.dashboard)
        self.assertGreater(len(queries), 20)
        for query in queries:
            matchers = selector.findall(query.expr)
            self.assertTrue(matchers, query)
            for matcher in matchers:
                self.assertRegex(
                    matcher,
                    r'^job="\$(proxy|agent)_job", instance=~"\$\1_instance"',
                    f"{query}: {query.expr}",
                )

    def test_everyVariableDefined(self) -> None:
        """
        Every variable a query uses is one of the dashboard's, or Grafana's
        C{$__rate_interval}.
        """
        values = {name: "x" for name in self.variables}
        values["__rate_interval"] = "1m"
        for query in grafana.panelQueries(self.dashboard):
            self.assertNotIn("$", grafana.substitute(query.expr, values), query)


class SubstitutionTests(SynchronousTestCase):
    def test_substitute(self) -> None:
        self.assertEqual(
            grafana.substitute(
                'rate(x{job="$job"}[${__rate_interval}])', {"job": "j", "__rate_interval": "4s"}
            ),
            'rate(x{job="j"}[4s])',
        )

    def test_unknownVariable(self) -> None:
        """
        A variable without a value is an error, not left in the query.
        """
        self.assertRaises(KeyError, grafana.substitute, 'x{job="$nope"}', {})

    def test_regexValue(self) -> None:
        """
        Several values become escaped alternatives, with backslashes doubled
        for a PromQL string.
        """
        self.assertEqual(
            grafana.regexValue(["127.0.0.1:80/a", "h:1"]), r"(127\\.0\\.0\\.1:80/a|h:1)"
        )
