"""
Small HTTP helpers both processes use.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

# The Content-Encoding values that mean gzip (RFC 9110 section 8.4.1.3).
GZIP_ENCODINGS = frozenset({"gzip", "x-gzip"})

# The Cache-Control of an answer no cache may keep: a cached health check
# or metric is a wrong one. prometheus-proxy's admin servlets' value.
UNCACHEABLE = b"must-revalidate,no-cache,no-store"


def acceptsGzip(acceptEncoding: str) -> bool:
    """
    Whether an C{Accept-Encoding} value admits gzip (explicitly or by C{*}).
    """
    for item in acceptEncoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            try:
                return not (q.startswith("q=") and float(q[2:] or 0) == 0)
            except ValueError:
                return False
    return False


def redacted(url: str) -> str:
    """
    C{url} fit for a log line: user info and query values masked.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{item.partition('=')[0]}=***" if "=" in item else item
        for item in parts.query.split("&")
        if item
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
