"""
Small helpers several test modules share.
"""

from __future__ import annotations

MiB = 1024 * 1024


def rss() -> int:
    """
    This process's resident memory in bytes, for the attack tests' bounds
    on what an attacker can make the proxy hold.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")
