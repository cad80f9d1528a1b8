"""
A real nginx in front of the proxy, for the tests that need one (PushProx
clients behind a front end that adds their tokens, agents behind
C{grpc_pass}): the Debian package's binary, run in the foreground as a
child process of the test with a configuration written for it.
"""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import TestCase

from promtwist.test.processes import Child, writeFile


def startNginx(case: TestCase, servers: str) -> Child:
    """
    Start nginx for C{case}, its files in a new directory of the test's,
    with C{servers} (server blocks, or an C{include} of them) in its http
    context; it is stopped when the test ends.

    @return: the running child, whose log says what nginx did.
    """
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        case.fail("nginx is needed (Debian package 'nginx'; scripts/test installs it as root)")
    prefix = os.path.abspath(str(case.mktemp()))
    os.makedirs(os.path.join(prefix, "logs"))
    config = writeFile(
        os.path.join(prefix, "nginx.conf"),
        f"""\
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
{servers}
}}
""",
    )
    child = Child(case, "nginx", [binary, "-p", prefix, "-c", config], prefix)
    child.start()
    return child
