# -*- test-case-name: promtwist.test.test_scraper -*-
"""
L{buckStops}: where a bug in the agent's scrape code stops, so that it
costs one scrape and nothing else. Shared by L{promtwist.agent.fetch.Fetch}
and L{promtwist.agent.scraper.Scrape}.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar
from typing import Protocol as TypingProtocol

from twisted.python.failure import Failure

_Self = TypeVar("_Self", bound="_Guarded")
_P = ParamSpec("_P")


class _Guarded(TypingProtocol):
    def _bug(self, failure: Failure) -> None: ...


def buckStops(
    method: Callable[Concatenate[_Self, _P], None],
) -> Callable[Concatenate[_Self, _P], None]:
    """
    For a method called from outside its object (by the link, the HTTP
    client, a timer): a bug in it fails that scrape with AGENT_ERROR (its
    object's C{_bug}) instead of escaping into the link (which would drop
    every scrape on it), the HTTP client (which would drop the target
    connection and have the target blamed for breaking off) or the reactor
    (which would leave the scrape to the proxy's deadline).
    """

    @functools.wraps(method)
    def guarded(self: _Self, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:  # noqa: BLE001
            self._bug(Failure())

    return guarded
