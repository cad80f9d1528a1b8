# -*- test-case-name: promtwist.test.test_debugpage -*-
"""
The parts of the C{/debug} page laid out as prometheus-proxy lays out its
own (its C{toPlainText}s), so that an operator who reads, greps or diffs
prometheus-proxy's page finds the same head and the same tables; each
process puts promtwist's own sections after them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from twisted.web.http import RESPONSES

from promtwist.config.settings import AgentSettings, ProxySettings
from promtwist.hostkeys import spelled
from promtwist.listen import Listener
from promtwist.web import version


def uptime(seconds: float) -> str:
    """
    A duration as prometheus-proxy's debug page gives its uptime:
    C{d:HH:MM:SS.mmm}.
    """
    millis = round(max(seconds, 0) * 1000)
    secs, ms = divmod(millis, 1000)
    mins, sec = divmod(secs, 60)
    hours, mins = divmod(mins, 60)
    days, hours = divmod(hours, 24)
    return f"{days}:{hours:02d}:{mins:02d}:{sec:02d}.{ms:03d}"


def where(listener: Listener | None, configured: int) -> str:
    """
    Where C{listener} listens, for the debug page: its port number on the
    TCP wildcard, as prometheus-proxy shows it, its address otherwise (an
    interface, a unix socket, an inherited socket, the port it bound when
    configured with 0); the configured port while it is not listening.
    """
    if listener is None or listener.port is None:
        return str(configured)
    address = listener.address
    for wildcard in ("[::]:", "0.0.0.0:"):
        if address.startswith(wildcard):
            return address[len(wildcard) :]
    return address


def _adminPaths(settings: ProxySettings | AgentSettings) -> list[str]:
    paths = [
        settings.admin_ping_path,
        settings.admin_version_path,
        settings.admin_health_check_path,
        settings.admin_thread_dump_path,
    ]
    if settings.admin_debug_enabled:
        paths.append("debug")
    return [f"/{path}" for path in dict.fromkeys(paths) if path]


def head(
    title: str,
    settings: ProxySettings | AgentSettings,
    rows: Sequence[tuple[str, str]],
    listeners: Iterable[Listener] = (),
) -> str:
    """
    The head of prometheus-proxy's page: the version line, C{rows} as
    aligned C{Label: value} lines, and the admin and metrics services.

    @param title: C{Proxy} or C{Agent}.
    @param rows: label and value, in order (C{Uptime} first, as upstream).
    @param listeners: the process's listeners: the admin and metrics
        services show where theirs listen (L{where}), which a C{listen}
        description or port 0 makes differ from the configured port.
    """
    byPurpose = {listener.purpose: listener for listener in listeners}
    adminPort = where(byPurpose.get("admin"), settings.admin_port)
    metricsPort = where(byPurpose.get("metrics"), settings.metrics_port)
    described = version()
    width = max(len(label) for label, _ in rows) + 1
    lines = [
        f"Prometheus {title} Info [Version: {described['version']}"
        f" Release Date: {described['release_date']} Build Date: {described['build_time']}]",
        "",
        *(f"{(label + ':').ljust(width)} {value}" for label, value in rows),
        "",
        "Admin Service:",
        f"ServletService{{port={adminPort}, paths=[{', '.join(_adminPaths(settings))}]}}"
        if settings.admin_enabled
        else "Disabled",
        "",
        "Metrics Service:",
        f"MetricsService{{port={metricsPort}, path=/{settings.metrics_path}}}"
        if settings.metrics_enabled and settings.metrics_path
        else "Disabled",
        "",
    ]
    return "\n".join(lines)


def table(title: str, headings: Sequence[str], rows: Sequence[Sequence[str]], gap: str) -> str:
    """
    One of prometheus-proxy's path tables: a title line, a heading line and
    the rows, every column but the last padded to its widest cell plus one.

    @param gap: what separates rows: C{"\\n"}, or C{"\\n\\n"} as the proxy's
        path map has.
    """
    widths = [
        max(len(cell) for cell in [heading, *(row[i] for row in rows)])
        for i, heading in enumerate(headings[:-1])
    ]

    def line(cells: Sequence[str]) -> str:
        padded = [cell.ljust(width) for cell, width in zip(cells[:-1], widths, strict=True)]
        return " ".join([*padded, cells[-1]])

    return f"{title}:\n{line(headings)}\n" + gap.join(line(row) for row in rows)


def recentLine(at: float, path: str, type: str, status: int, reason: str, seconds: float) -> str:
    """
    One scrape as prometheus-proxy's "most recent requests" lists it:
    C{HH:mm:ss.SSS: /path - type - status phrase [reason: [...]] time: ...}.
    The time of day is UTC. prometheus-proxy ends the line with the target's
    C{url:}, which promtwist's proxy is not told.
    """
    whole, millis = divmod(round(at * 1000), 1000)
    clock = time.strftime("%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}"
    phrase = RESPONSES.get(status, b"").decode("ascii")
    line = f"{clock}: {spelled(path)} - {type} - {status} {phrase}".rstrip()
    if not 200 <= status < 300:
        line += f" reason: [{reason}]"
    return line + f" time: {seconds * 1000:.1f}ms"
