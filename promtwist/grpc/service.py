# -*- test-case-name: promtwist.test.test_grpc_connection,promtwist.test.test_grpc_interop -*-
"""
The four kinds of gRPC method, each as a L{Method} built from a handler
that reads like Twisted:

  - L{unary}: C{handler(request, call)} returns the response or a Deferred
    of it;
  - L{serverStreaming}: C{handler(request, call)} sends with C{call.send}
    and returns a Deferred that fires when the stream is done;
  - L{clientStreaming}: C{handler(call)} takes messages with
    C{call.receive()} (L{None} at the end) and returns a Deferred of the
    response;
  - L{bidirectional}: C{handler(call)} does both and returns a Deferred
    that fires when it is done.

A method may have an C{authorize(call)}: it is asked on the call's
HEADERS, before any message is read or the handler runs, and refuses the
call by raising L{promtwist.grpc.status.GrpcError} (the stream then ends
at once with that status and what the client sends on it is dropped
unread), so an unauthenticated client costs no message buffers. What it
returns is the call's C{authority}, for the handler; anything but L{None}
proves the connection, while L{None} leaves the call undecided (admitted,
the connection not proven by it) for its handler to settle, refusing it or
calling C{call.prove()}.

A handler ends a call with a status other than OK by raising, or failing
its Deferred with, L{promtwist.grpc.status.GrpcError}. Its Deferred is
cancelled when the client resets the stream, the connection is lost or the
deadline passes: its canceller is where a handler stops what it started.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from promtwist.grpc.call import ServerCall
from promtwist.grpc.status import GrpcError, StatusCode

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")


#: Asked on a call's headers; raises GrpcError to refuse it, returns the
#: call's C{authority} otherwise.
Authorizer = Callable[[ServerCall[Any, Any]], object]


@dataclass(frozen=True)
class Method:
    """
    One method the server answers.

    @ivar path: as on the wire, C{/Service/method}.
    @ivar kind: C{unary}, C{server-streaming}, C{client-streaming} or
        C{bidirectional}.
    @ivar decode: request bytes to a message.
    @ivar encode: a response message to bytes.
    @ivar run: runs the handler on a call; fires when it is done.
    @ivar authorize: asked on each call's headers (see the module
        docstring); L{None} admits every call without proving anything.
    """

    path: str
    kind: str
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]
    run: Callable[[ServerCall[Any, Any]], Deferred[None]]
    authorize: Authorizer | None = None


async def _settled(result: T | Deferred[T]) -> T:
    """
    What a handler returned, or what its Deferred gave. (A handler that
    raises fails the coroutine that called it, which ends the call.)
    """
    if isinstance(result, Deferred):
        return await result
    return result


async def _onlyRequest(call: ServerCall[Req, Any]) -> Req:
    """
    The one request of a unary or server-streaming call, once the client
    half-closed after it (grpc-java's checks and words).
    """
    request = await call.receive()
    if request is None:
        raise GrpcError(StatusCode.INTERNAL, "half-closed without a request")
    if await call.receive() is not None:
        raise GrpcError(StatusCode.INTERNAL, "too many requests for a unary request")
    return request


def unary(
    path: str,
    handler: Callable[[Req, ServerCall[Req, Resp]], Resp | Deferred[Resp]],
    decode: Callable[[bytes], Req],
    encode: Callable[[Resp], bytes],
    authorize: Authorizer | None = None,
) -> Method:
    """
    A method taking one request and answering one response.
    """

    async def run(call: ServerCall[Req, Resp]) -> None:
        request = await _onlyRequest(call)
        await call.send(await _settled(handler(request, call)))

    return Method(
        path, "unary", decode, encode, lambda call: Deferred.fromCoroutine(run(call)), authorize
    )


def serverStreaming(
    path: str,
    handler: Callable[[Req, ServerCall[Req, Resp]], Deferred[None] | None],
    decode: Callable[[bytes], Req],
    encode: Callable[[Resp], bytes],
    authorize: Authorizer | None = None,
) -> Method:
    """
    A method taking one request and sending any number of responses.
    """

    async def run(call: ServerCall[Req, Resp]) -> None:
        request = await _onlyRequest(call)
        await _settled(handler(request, call))

    return Method(
        path,
        "server-streaming",
        decode,
        encode,
        lambda call: Deferred.fromCoroutine(run(call)),
        authorize,
    )


def clientStreaming(
    path: str,
    handler: Callable[[ServerCall[Req, Resp]], Resp | Deferred[Resp]],
    decode: Callable[[bytes], Req],
    encode: Callable[[Resp], bytes],
    authorize: Authorizer | None = None,
) -> Method:
    """
    A method taking any number of requests and answering one response.
    """

    async def run(call: ServerCall[Req, Resp]) -> None:
        await call.send(await _settled(handler(call)))

    return Method(
        path,
        "client-streaming",
        decode,
        encode,
        lambda call: Deferred.fromCoroutine(run(call)),
        authorize,
    )


def bidirectional(
    path: str,
    handler: Callable[[ServerCall[Req, Resp]], Deferred[None] | None],
    decode: Callable[[bytes], Req],
    encode: Callable[[Resp], bytes],
    authorize: Authorizer | None = None,
) -> Method:
    """
    A method whose requests and responses flow independently.
    """

    async def run(call: ServerCall[Req, Resp]) -> None:
        await _settled(handler(call))

    return Method(
        path,
        "bidirectional",
        decode,
        encode,
        lambda call: Deferred.fromCoroutine(run(call)),
        authorize,
    )
