"""
Reading the example Grafana dashboard as Grafana would, so that the
end-to-end test can run every panel's query against a real Prometheus:
its panels' expressions, its variables' C{label_values} queries, and the
substitution of variable values into expressions.

Only what the dashboard uses is implemented: query variables of the form
C{label_values(<selector>, <label>)}, single-valued or multi-valued with
All (All meaning every listed value, as when no C{allValue} is set), and
C{$__rate_interval}.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from promtwist.test.helpers import sourceTreeFile

DASHBOARD = os.path.join("examples", "grafana", "promtwist-dashboard.json")

_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def dashboardFile() -> str:
    """
    The dashboard of the source tree (L{sourceTreeFile}).
    """
    return sourceTreeFile(DASHBOARD)


@dataclass(frozen=True)
class PanelQuery:
    """
    One query of one panel.
    """

    panel: str
    refId: str
    expr: str

    def __str__(self) -> str:
        return f"panel {self.panel!r} query {self.refId}"


@dataclass(frozen=True)
class Variable:
    """
    A query variable: C{label_values(selector, label)}.

    @ivar multi: whether it takes several values (and All).
    """

    name: str
    selector: str
    label: str
    multi: bool


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        document: dict[str, Any] = json.load(f)
    return document


def panelQueries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    """
    Every panel query, rows' nested panels included.
    """
    queries = []
    pending = list(dashboard["panels"])
    while pending:
        panel = pending.pop(0)
        pending.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            queries.append(PanelQuery(panel["title"], target["refId"], target["expr"]))
    return queries


def variables(dashboard: dict[str, Any]) -> list[Variable]:
    """
    The query variables, in the order Grafana resolves them.
    """
    found = []
    for entry in dashboard["templating"]["list"]:
        if entry["type"] != "query":
            continue
        match = _LABEL_VALUES.match(entry["definition"])
        if match is None:
            raise ValueError(f"variable {entry['name']}: not label_values(...)")
        found.append(
            Variable(
                entry["name"],
                match.group("selector"),
                match.group("label"),
                bool(entry.get("multi")),
            )
        )
    return found


def regexValue(values: list[str]) -> str:
    """
    Several values as Grafana writes them for a Prometheus regex matcher:
    each escaped, joined as alternatives, inside a PromQL string (so each
    backslash is doubled).
    """
    alternatives = "|".join(re.escape(value) for value in values)
    return ("(" + alternatives + ")").replace("\\", "\\\\")


def substitute(expr: str, values: dict[str, str]) -> str:
    """
    C{expr} with each C{$name} or C{${name}} in C{values} replaced; an
    unknown variable is an error, not left in the query.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)
