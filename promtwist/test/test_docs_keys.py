"""
Tests that the configuration keys the documents name are keys promtwist
knows: a doc telling operators to set a key that does not exist costs them a
startup refused (strict keys) and a search.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.keys import AGENT, PROXY
from promtwist.test.helpers import sourceTreeFile

DOCS = (
    "docs/benchmarks.md",
    "docs/deployment.md",
    "docs/grpc.md",
    "docs/grpc-link.md",
    "docs/metrics.md",
    "docs/migrating.md",
    "docs/protocol.md",
    "docs/proxy-url.md",
    "docs/pushprox.md",
    "docs/security.md",
)
# A key as the docs quote one: `proxy.http.port`; a group ends in .* or
# names an entry's key with [], and is not matched whole.
_QUOTED = re.compile(r"`((?:proxy|agent)(?:\.[A-Za-z][A-Za-z0-9_]*)+)`")
# File names that look like keys (`proxy.yaml`, `proxy.log.1`).
_FILE = re.compile(r"\.(ya?ml|conf|json|pem|log)\b")


def unknownKeys(text: str) -> list[str]:
    """
    The quoted keys in C{text} that are neither known keys nor sections of
    known keys.
    """
    known = PROXY.known | AGENT.known
    return sorted(
        {
            key
            for key in _QUOTED.findall(text)
            if not _FILE.search(key)
            and key not in known
            and not any(k.startswith(key + ".") for k in known)
        }
    )


class DocumentedKeysTests(SynchronousTestCase):
    def test_known(self) -> None:
        for doc in DOCS:
            with open(sourceTreeFile(doc), encoding="utf-8") as f:
                self.assertEqual(unknownKeys(f.read()), [], doc)

    def test_unknownNoticed(self) -> None:
        """
        A key that is not one is noticed; a section and a file name are not.
        """
        self.assertEqual(
            unknownKeys("set `proxy.forwardAuthorization`, `proxy.http`, `proxy.yaml`"),
            ["proxy.forwardAuthorization"],
        )
