"""
promtwist's tests.

grpcio (the interoperability tests' client, a test-only dependency) is told
here, before any test module imports it, not to run its own fork handlers:
with them, a child process the tests start (twistd, Prometheus, nginx)
while grpcio's threads are busy restarts grpcio's threads in the child,
between Twisted's fork and exec, and those die on the descriptors Twisted
closes there ("epoll_wait error: Bad file descriptor"), sometimes taking
the child with them before it runs its program. The tests never use
grpcio in a child.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
