"""
One request on the scrape port and its answer, as the code answering it
sees them: exactly what the relay, the text answers, the credentials check
and discovery use, and no more.

L{promtwist.proxy.httpserver} implements it; tests may implement it too.
"""

from __future__ import annotations

from collections.abc import Callable
from mmap import mmap
from typing import Protocol, TypeAlias

from twisted.internet.interfaces import IAddress, IPushProducer

RequestBody: TypeAlias = bytes | mmap
"""
A request body: C{b""} when there is none; a small one as bytes; a large
one the anonymous mapping the server read it into, which goes back to the
system, whatever the allocator's thresholds, once the last reference to it
goes (L{promtwist.proxy.httpserver.MAPPED_BODY_BYTES}).
"""


class Exchange(Protocol):
    """
    A request and the answer being made to it.

    Request headers are the few the proxy reads (L{READ_HEADERS}), by
    lower-case name, each with its last value; C{repeated} names those sent
    more than once. Response headers are set by name as they are to be
    written; the framing headers (C{Transfer-Encoding}, C{Connection}) are
    the server's business.

    @ivar method: the request method, such as C{GET}.
    @ivar path: the request target up to its first C{?}, as it came
        (still percent-encoded): for an origin-form target (C{/metrics})
        its path, for an absolute-form one (C{http://host/metrics}) the
        scheme and authority too; a C{#fragment} stays in the path, or in
        the query when there is one.
    @ivar query: what follows the request target's first C{?}, or
        C{b""}.
    @ivar headers: the request headers the proxy reads.
    @ivar repeated: the names of those that came more than once.
    @ivar body: the request body, whole: empty unless the server's body
        policy took one for this method and path.
    @ivar code: the response status so far.
    @ivar started: whether the status and headers have gone out.
    """

    method: bytes
    path: bytes
    query: bytes
    headers: dict[bytes, bytes]
    repeated: frozenset[bytes]
    body: RequestBody
    code: int
    started: bool

    @property
    def client(self) -> IAddress:
        """
        The client's address.
        """

    @property
    def host(self) -> IAddress:
        """
        The address the client reached.
        """

    def setStatus(self, code: int, phrase: bytes = b"") -> None:
        """
        Set the status and its reason phrase (the standard one if empty).
        """

    def setHeader(self, name: bytes, value: bytes) -> None: ...

    def addHeader(self, name: bytes, value: bytes) -> None:
        """
        Add a header line beside any others of the same name.
        """

    def removeHeader(self, name: bytes) -> None: ...

    def hasHeader(self, name: bytes) -> bool: ...

    def write(self, data: bytes) -> None:
        """
        Send body bytes; the first write commits the status and headers.
        """

    def finish(self) -> None:
        """
        The body is complete.
        """

    def finishWith(self, body: bytes) -> None:
        """
        Send C{body} as the whole answer, with its length, and finish.
        """

    def abort(self) -> None:
        """
        Break the answer off: the connection is dropped, so nothing on it
        can be read as the rest of this answer or as another.
        """

    def notifyGone(self, gone: Callable[[], None]) -> None:
        """
        Call C{gone} if the client goes away before the answer is finished.
        """

    def registerProducer(self, producer: IPushProducer) -> None:
        """
        Pause C{producer} while the client reads slower than it produces.
        """

    def unregisterProducer(self) -> None: ...


# The request headers an exchange keeps, by lower-case name: what the proxy
# forwards or reads, and the two the server refuses a body by (llhttp reads
# Connection itself, for keep-alive).
READ_HEADERS = frozenset(
    {
        b"accept",
        b"accept-encoding",
        b"authorization",
        b"proxy-authorization",
        b"host",
        b"x-prometheus-scrape-timeout-seconds",
        b"content-length",
        b"transfer-encoding",
        b"expect",
    }
)
