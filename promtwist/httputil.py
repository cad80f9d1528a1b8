"""
Small HTTP helpers both processes use.
"""

from __future__ import annotations


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
