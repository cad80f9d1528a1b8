"""
The real PushProx client (and proxy), built from the peer sources in the
repository (C{peers/}), for the tests that run them against promtwist.

They are built once into a cache directory (C{PROMTWIST_PUSHPROX_DIR}, else
C{~/.cache/promtwist-test/pushprox}) with C{peers/build-pushprox}, which
installs Debian's Go packages with apt-get when they are missing and it may
(as root; C{scripts/test} does it up front). A test that cannot get them
fails saying why: none is skipped.
"""

from __future__ import annotations

import os
import subprocess

from twisted.trial.unittest import TestCase

from promtwist.test.helpers import sourceTreeFile
from promtwist.test.processes import Child

# Building takes about ten seconds with the Go packages in place, minutes
# when apt-get installs them first.
BUILD_TIMEOUT = 900


def cacheDirectory() -> str:
    return os.environ.get("PROMTWIST_PUSHPROX_DIR") or os.path.expanduser(
        "~/.cache/promtwist-test/pushprox"
    )


def pushproxBinary(name: str) -> str:
    """
    The path of C{pushprox-client} or C{pushprox-proxy}, built first if the
    cache does not have it.

    @raise RuntimeError: saying why it could not be built.
    """
    out = cacheDirectory()
    binary = os.path.join(out, name)
    if os.access(binary, os.X_OK):
        return binary
    script = sourceTreeFile("peers/build-pushprox")
    try:
        built = subprocess.run(
            [script, out],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not run {script} {out}: {e}") from None
    if built.returncode != 0 or not os.access(binary, os.X_OK):
        raise RuntimeError(
            f"{script} {out} failed (exit {built.returncode}); it needs Go (Debian's golang-go"
            f" and the packages it names, installed by apt-get as root):\n"
            f"{built.stdout[-2000:]}{built.stderr[-2000:]}"
        )
    return binary


def pushproxClient(
    case: TestCase,
    name: str,
    proxyURL: str,
    fqdn: str,
    workdir: str,
    metricsPort: int,
    retryWait: float = 0.2,
) -> Child:
    """
    An unmodified C{pushprox-client} (not started) polling C{proxyURL} as
    C{fqdn}, its own metrics on loopback, retrying quickly so the tests'
    waits stay short.
    """
    return Child(
        case,
        name,
        [
            pushproxBinary("pushprox-client"),
            f"--proxy-url={proxyURL}",
            f"--fqdn={fqdn}",
            f"--metrics-addr=127.0.0.1:{metricsPort}",
            f"--proxy.retry.initial-wait={retryWait}s",
            f"--proxy.retry.max-wait={retryWait * 2}s",
            "--log.level=debug",
        ],
        workdir,
    )
