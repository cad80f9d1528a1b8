# -*- test-case-name: promtwist.test.test_agent_targets -*-
"""
Host-routed scrapes at the agent: which declared target a C{proxy_url}
scrape is for, and the URL the agent fetches for it.

An agent fetches only the hosts and ports it declared (C{agent.targets}),
whatever the proxy asks: PushProx's "strict mode", here unconditional, so a
proxy that was taken over still cannot point the agent at anything else on
its network. Each refusal says what was asked and why it is not served.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from promtwist.config.settings import PathConfig
from promtwist.hostkeys import BadTarget, hostKey, hostPort, parseHostPort
from promtwist.logs import clip
from promtwist.protocol.promtwist_pb2 import Outcome

# What a request path from the proxy may hold: printable ASCII, no spaces,
# and no fragment (the proxy refuses these first; the agent does not rely
# on it).
_PATH = re.compile(r"/[\x21-\x22\x24-\x7e]*\Z")


class NotServed(Exception):
    """
    A host-routed scrape this agent refuses; the message says why.

    @ivar outcome: how the agent answers: C{PATH_NOT_FOUND} (Prometheus
        sees 404) for a target not declared, else C{AGENT_ERROR}.
    """

    def __init__(self, reason: str, outcome: int = Outcome.AGENT_ERROR) -> None:
        super().__init__(reason)
        self.outcome = outcome


def targetFetch(
    agentName: str,
    target: str,
    scheme: str,
    path: str,
    declared: Callable[[str], PathConfig | None],
) -> PathConfig:
    """
    What to fetch for a scrape of C{target} (C{host:port}): the declared
    target's entry with the URL of exactly the requested path (the query is
    added by the fetch, as for every scrape).

    @param scheme: C{http} or C{https} if the scrape asked for one, else
        C{""}.
    @param declared: the entry this agent declared for a host key, if any.
    @raise NotServed: the target is not declared, is declared with another
        scheme, or the path is not one a request can carry.
    """
    try:
        host, port = parseHostPort(target)
    except BadTarget as e:
        raise NotServed(f"bad target from the proxy: {e}") from None
    config = declared(hostKey(host, port))
    if config is None:
        raise NotServed(
            f"agent {agentName!r} does not serve target {clip(target)}: it fetches only the"
            " targets it declared (agent.targets)",
            Outcome.PATH_NOT_FOUND,
        )
    own = urlsplit(config.url).scheme
    if scheme and scheme != own:
        raise NotServed(
            f"target {clip(target)} is declared as {own} at agent {agentName!r}, and the scrape"
            f" asks for {scheme} (_scheme); declare it as {scheme}://{clip(target)}"
        )
    if not _PATH.match(path):
        raise NotServed(f"bad request path from the proxy: {clip(path)!r}")
    return PathConfig(
        config.name, config.path, f"{own}://{hostPort(host, port)}{path}", config.labels
    )
