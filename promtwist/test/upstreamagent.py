"""
An unmodified prometheus-proxy 4.0.1 agent, as its code writes it, for the
interoperability tests of the proxy's gRPC agent port.

This is not promtwist's reading of upstream's contract but an emulation of
upstream's agent itself: the call sequence, metadata, deadlines, result
building, gzip and chunking of C{AgentGrpcService.kt} and
C{AgentClientInterceptor.kt} (pambrose/prometheus-proxy at e9b27c94, copied
in C{shared/reference/prometheus-proxy-grpc/}), with the parts that live in
C{Agent.kt} and C{AgentHttpService.kt} taken from that folder's
C{README.md} §A. Each behaviour cites where it comes from: C{AGS:n} is a
line of C{AgentGrpcService.kt}, C{ACI:n} one of C{AgentClientInterceptor.kt},
C{§A.n} a section of the README. It speaks through C{grpcio} (grpc-core),
with messages generated from upstream's C{.proto} verbatim
(L{promtwist.grpc.proxy_service_pb2}), so nothing of promtwist's own
transport is on the client side.

Like the real agent, it runs in threads of its own: a run loop that
connects, registers and reconnects, and per connection a request reader,
scrape workers, a result forwarder, two result writers and a heartbeat
loop; grpcio adds its own. The reactor never waits for any of them: a test
watches the counters and lists below with L{promtwist.test.helpers.eventually},
and L{UpstreamAgent.stop} answers with a Deferred fired in the reactor once
every thread has ended and the channel is closed.

Where the emulation is simpler than the agent (one proxy endpoint, no
retries, no metric filters, no discovery, no dynamic paths), the tests need
no more; the knobs at the end of L{UpstreamOptions} make it misbehave on
purpose.
"""

from __future__ import annotations

import json
import queue
import secrets
import socket
import string
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import grpc
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads

from promtwist.grpc import proxy_service_pb2 as pb

_threads = cast(IReactorThreads, reactor)
T = TypeVar("T")

# Fully-qualified method names: upstream's .proto has no package (§A.1).
_SERVICE = "/ProxyService/"


@dataclass(frozen=True)
class UpstreamPath:
    """
    One entry of the agent's C{agent.pathConfigs}: C{path} as configured
    (with or without its leading C{/}), the target C{url}, its C{labels}.
    """

    name: str
    path: str
    url: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UpstreamOptions:
    """
    The agent options the emulation honours, with upstream's defaults.

    @ivar endpoint: C{host:port} of the proxy's agent port.
    @ivar failureOnChunk: misbehaviour: the 1-based chunk whose
        C{chunk_checksum} is sent wrong (0: none).
    @ivar agentIdOverride: misbehaviour: the C{agent_id} every message
        carries instead of the one the proxy assigned ("": the real one).
    @ivar reconnect: whether the agent connects again after a connection
        ends (upstream always does; a test turns it off to see the proxy
        without it).
    """

    endpoint: str
    paths: tuple[UpstreamPath, ...] = ()
    agentName: str = ""
    consolidated: bool = False
    transportFilterDisabled: bool = False
    agentToken: str = ""
    trustCertCollectionFilePath: str = ""
    certChainFilePath: str = ""
    privateKeyFilePath: str = ""
    overrideAuthority: str = ""
    # agent.minGzipSizeBytes, agent.chunkContentSizeKbs (§A.6 step 7, 8).
    minGzipSizeBytes: int = 512
    chunkContentSizeKbs: int = 32
    # agent.internal.heartbeat* (§A.10).
    heartbeatEnabled: bool = True
    heartbeatCheckPauseMillis: int = 500
    heartbeatMaxInactivitySecs: float = 5.0
    # agent.internal.unaryDeadlineSecs (AGS:122), reconnectPauseSecs (§A.12).
    unaryDeadlineSecs: float = 30.0
    reconnectPauseSecs: float = 3.0
    # agent.scrapeTimeoutSecs, agent.http.maxConcurrentClients,
    # agent.maxContentLengthMBytes, the backlog's size (§A.6 step 5-7).
    scrapeTimeoutSecs: float = 15.0
    maxConcurrentClients: int = 1
    maxContentLengthMBytes: int = 10
    scrapeRequestBacklogUnhealthySize: int = 25
    # Misbehaviour.
    failureOnChunk: int = 0
    agentIdOverride: str = ""
    reconnect: bool = True


class RequestFailure(Exception):
    """
    upstream's C{RequestFailureException}: the proxy answered C{valid=false}
    (AGS:361, AGS:398), which ends the connection attempt (§A.3 step 4, 5).
    """


@dataclass(frozen=True)
class StreamEnd:
    """
    How one of a connection's calls ended: its name, and the gRPC status
    code and details when it failed (C{None}, "" when it completed).
    """

    name: str
    code: grpc.StatusCode | None
    details: str


@dataclass(frozen=True)
class _ScrapeResult:
    """
    upstream's C{ScrapeResults}: what one fetch produced (§A.6 step 7).
    """

    validResponse: bool
    scrapeId: int
    statusCode: int
    failureReason: str = ""
    url: str = ""
    contentType: str = ""
    zipped: bool = False
    text: str = ""
    zippedBytes: bytes = b""


def _resultFields(agentId: str, result: _ScrapeResult, prefix: str = "") -> dict[str, Any]:
    """
    The fields C{ScrapeResponse} and C{HeaderData} share, the latter's
    names with C{header_} before them (§A.1).
    """
    fields = {
        "valid_response": result.validResponse,
        "agent_id": agentId,
        "scrape_id": result.scrapeId,
        "status_code": result.statusCode,
        "failure_reason": result.failureReason,
        "url": result.url,
        "content_type": result.contentType,
        "zipped": result.zipped,
    }
    return {prefix + name: value for name, value in fields.items()}


def javaGzip(data: bytes) -> bytes:
    """
    C{data} as Java's C{GZIPOutputStream} writes it (§A.8): a header with
    no name, time or OS (ten bytes, the last ones zero), raw deflate at
    the default level 6, CRC32 and size little-endian.
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = compressor.compress(data) + compressor.flush()
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x00" + body + trailer


def _launchId() -> str:
    # A random 15-character id per agent process (§A.1, launch_id).
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(15))


def _code(error: BaseException) -> tuple[grpc.StatusCode | None, str]:
    if isinstance(error, grpc.RpcError):
        call = cast(grpc.Call, error)
        return call.code(), call.details() or ""
    return None, f"{type(error).__name__}: {error}"


class _Connection:
    """
    One connection to the proxy and everything upstream launches on it
    (§A.3 step 6): when any of its tasks ends, all of it is torn down.
    """

    def __init__(self, agent: UpstreamAgent) -> None:
        self.agent = agent
        self.options = agent.options
        self.channel = agent.makeChannel()
        self.ended = threading.Event()
        self._threads: list[threading.Thread] = []
        # connectionContext's scrape-request channel, capacity
        # 2 x scrapeRequestBacklogUnhealthySize (§A.6 step 5).
        self.requests: queue.Queue[pb.ScrapeRequest] = queue.Queue(
            2 * self.options.scrapeRequestBacklogUnhealthySize
        )
        self.results: queue.Queue[_ScrapeResult] = queue.Queue()
        # The two UNLIMITED channels of AGS:564-565.
        self.nonChunked: queue.Queue[pb.ScrapeResponse] = queue.Queue()
        self.chunked: queue.Queue[pb.ChunkedScrapeResponse] = queue.Queue()

    # -- calls

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        # AgentTokenClientInterceptor, added whatever the mode (AGS:303-306).
        token = self.options.agentToken
        return (("agent-token", token),) if token else ()

    def unary(self, method: str, request: Any, responseType: Any) -> Any:
        """
        One unary call with upstream's deadline (AGS:124-125), the token
        (AGS:305), and the agent-id capture of C{AgentClientInterceptor}
        (ACI:681-699) in the default mode (AGS:301-302).
        """
        stub = self.channel.unary_unary(
            _SERVICE + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=responseType.FromString,
        )
        deadline = self.options.unaryDeadlineSecs
        response, call = stub.with_call(
            request, timeout=deadline if deadline > 0 else None, metadata=self._metadata()
        )
        if not self.options.transportFilterDisabled:
            self.agent.captureAgentId(dict(call.initial_metadata() or ()))
        return response

    def agentId(self) -> str:
        # require(agent.agentId.isNotEmpty()) before every message (AGS:340,
        # 369, 385, 404, 449).
        agentId = self.options.agentIdOverride or self.agent.agentId
        if not agentId:
            raise RequestFailure("Empty agentId")
        return agentId

    def connect(self) -> bool:
        """
        C{connectAgent} (AGS:312-335): the mode's own call; a failure is a
        failed connect, not an exception.
        """
        try:
            if self.options.transportFilterDisabled:
                info = self.unary(
                    "connectAgentWithTransportFilterDisabled", pb.Empty(), pb.AgentInfo
                )
                self.agent.agentId = info.agent_id  # AGS:316
                self.agent.agentIds.append(info.agent_id)
            else:
                self.unary("connectAgent", pb.Empty(), pb.Empty)  # AGS:318
        except Exception as e:  # noqa: BLE001  # AGS:323: any failure is a failed connect
            self.agent.connectFailures.append(_code(e))
            return False
        return True

    def register(self) -> None:
        """
        C{registerAgent} (AGS:337-364), then every static path in order
        (§A.3 step 5) with C{registerPath} (AGS:377-399).
        """
        request = pb.RegisterAgentRequest(
            agent_id=self.agentId(),
            launch_id=self.agent.launchId,
            agent_name=self.agent.agentName,
            host_name=socket.gethostname(),  # the agent's own host (AGS:344-350)
            consolidated=self.options.consolidated,
            proxy_endpoints=[self.options.endpoint],  # AGS:354-355
            current_endpoint_index=0,
        )
        response = self.unary("registerAgent", request, pb.RegisterAgentResponse)
        self.agent.markMsgSent()  # AGS:359
        if not response.valid:
            raise RequestFailure(f"registerAgent() - {response.reason}")
        answers = []
        for config in self.options.paths:
            answer = self.unary(
                "registerPath",
                pb.RegisterPathRequest(
                    agent_id=self.agentId(),
                    # One leading / stripped (§A.1, RegisterPathRequest.path).
                    path=config.path.removeprefix("/"),
                    labels=json.dumps(config.labels) if config.labels else "{}",
                    target_url=config.url,
                    path_source="STATIC",
                ),
                pb.RegisterPathResponse,
            )
            self.agent.markMsgSent()  # AGS:396
            answers.append(answer)
            if not answer.valid:
                self.agent.registrations.append(answers)
                raise RequestFailure(f"registerPathOnProxy() - {answer.reason}")  # AGS:398
        self.agent.registrations.append(answers)

    def unregisterPath(self, path: str) -> pb.UnregisterPathResponse:
        """
        C{unregisterPathOnProxy} (AGS:401-413), for a test to call from a
        thread of its own.
        """
        response = self.unary(
            "unregisterPath",
            pb.UnregisterPathRequest(agent_id=self.agentId(), path=path.removeprefix("/")),
            pb.UnregisterPathResponse,
        )
        self.agent.markMsgSent()
        return cast(pb.UnregisterPathResponse, response)

    def pathMapSize(self) -> int:
        """
        C{pathMapSize} (AGS:366-375).
        """
        response = self.unary(
            "pathMapSize", pb.PathMapSizeRequest(agent_id=self.agentId()), pb.PathMapSizeResponse
        )
        self.agent.markMsgSent()
        return int(response.path_count)

    def forge(self, message: pb.ScrapeResponse) -> None:
        """
        Misbehaviour: send C{message} on the results stream as it is,
        whatever was asked.
        """
        self.nonChunked.put(message)

    # -- the connection's tasks

    def launch(self) -> None:
        """
        Everything upstream runs for the connection's life (§A.3 step 6).
        """
        self._start("readRequestsFromProxy", self._readRequests)
        self._start("heartbeat", self._heartbeats)
        for i in range(self.options.maxConcurrentClients):
            self._start(f"scrape worker {i}", self._worker)
        self._start("processScrapeResults", self._forwardResults)
        self._start("writeResponsesToProxy", self._write, "writeResponsesToProxy", self.nonChunked)
        self._start(
            "writeChunkedResponsesToProxy",
            self._write,
            "writeChunkedResponsesToProxy",
            self.chunked,
        )

    def _start(self, name: str, task: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                task(*args)
            except BaseException as e:  # noqa: BLE001  # noted, then the connection ends
                if not self.ended.is_set():
                    self.agent.streamEnds.append(StreamEnd(name, *_code(e)))
            else:
                if not self.ended.is_set():
                    self.agent.streamEnds.append(StreamEnd(name, None, ""))
            # Any task's end closes the whole connection (§A.3 step 6).
            self.close()

        thread = threading.Thread(target=run, name=f"upstream agent: {name}")
        self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        """
        Tear the connection down: every call is cancelled (AGS:208-217),
        every task ends.
        """
        if not self.ended.is_set():
            self.ended.set()
            self.channel.close()

    def join(self) -> None:
        self.close()
        for thread in self._threads:
            thread.join(30)

    def _readRequests(self) -> None:
        # readRequestsFromProxy(AgentInfo) without a deadline (AGS:443-464),
        # each request into the bounded backlog (§A.6 step 5): a full one
        # stops reading, and HTTP/2 flow control pushes back on the proxy.
        stub = self.channel.unary_stream(
            _SERVICE + "readRequestsFromProxy",
            request_serializer=pb.AgentInfo.SerializeToString,
            response_deserializer=pb.ScrapeRequest.FromString,
        )
        for request in stub(pb.AgentInfo(agent_id=self.agentId()), metadata=self._metadata()):
            self.agent.received.append(request)
            while not self.ended.is_set():
                try:
                    self.requests.put(request, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _taken(self, source: queue.Queue[T]) -> Iterator[T]:
        """
        What C{source} gives, until the connection ends.
        """
        while not self.ended.is_set():
            try:
                yield source.get(timeout=0.1)
            except queue.Empty:
                continue

    def _worker(self) -> None:
        # The scrape worker, maxConcurrentClients at a time (§A.6 step 5).
        for request in self._taken(self.requests):
            self.results.put(self.agent.fetch(request))

    def _forwardResults(self) -> None:
        # processScrapeResults (AGS:466-485): one consumer, so one scrape's
        # messages are never interleaved with another's.
        for result in self._taken(self.results):
            self._forward(result)
            self.agent.markMsgSent()  # AGS:483

    def _forward(self, result: _ScrapeResult) -> None:
        # forwardScrapeResult (AGS:487-558).
        agentId = self.options.agentIdOverride or self.agent.agentId
        if not result.zipped:
            self.nonChunked.put(self._response(agentId, result))  # AGS:495-498
            self.agent.resultCounts["non-gzipped"] += 1
            return
        zipped = result.zippedBytes
        chunkSize = self.options.chunkContentSizeKbs * 1024
        if len(zipped) < chunkSize:  # AGS:505: strictly less
            self.nonChunked.put(self._response(agentId, result))
            self.agent.resultCounts["gzipped"] += 1
            return
        self.chunked.put(  # toScrapeResponseHeader (AGS:510-514)
            pb.ChunkedScrapeResponse(
                header=pb.HeaderData(**_resultFields(agentId, result, "header_"))
            )
        )
        checksum = 0
        count = 0
        for offset in range(0, len(zipped), chunkSize):  # AGS:516-542
            piece = zipped[offset : offset + chunkSize]
            count += 1
            # java.util.zip.CRC32 over every byte so far, its value an
            # unsigned 32-bit number in an int64 (AGS:518, 528, 535).
            checksum = zlib.crc32(piece, checksum) & 0xFFFFFFFF
            sent = checksum ^ 1 if count == self.options.failureOnChunk else checksum
            self.chunked.put(
                pb.ChunkedScrapeResponse(
                    chunk=pb.ChunkData(
                        chunk_scrape_id=result.scrapeId,
                        chunk_count=count,
                        chunk_byte_count=len(piece),
                        chunk_checksum=sent,
                        chunk_bytes=piece,
                    )
                )
            )
        self.chunked.put(  # AGS:544-555
            pb.ChunkedScrapeResponse(
                summary=pb.SummaryData(
                    summary_scrape_id=result.scrapeId,
                    summary_chunk_count=count,
                    summary_byte_count=len(zipped),
                    summary_checksum=checksum,
                )
            )
        )
        self.agent.resultCounts["chunked"] += 1

    @staticmethod
    def _response(agentId: str, result: _ScrapeResult) -> pb.ScrapeResponse:
        # ScrapeResults.toScrapeResponse: the zipped bytes or the text
        # (§A.1, ScrapeResponse's oneof).
        message = pb.ScrapeResponse(**_resultFields(agentId, result))
        if result.zipped:
            message.content_as_zipped = result.zippedBytes
        else:
            message.content_as_text = result.text
        return message

    def _write(self, method: str, source: queue.Queue[Any]) -> None:
        # The two client streams (AGS:608-619), each fed by its channel; a
        # completed or failed call ends the connection.
        messageType = (
            pb.ScrapeResponse if method == "writeResponsesToProxy" else pb.ChunkedScrapeResponse
        )
        stub = self.channel.stream_unary(
            _SERVICE + method,
            request_serializer=messageType.SerializeToString,
            response_deserializer=pb.Empty.FromString,
        )
        stub(self._taken(source), metadata=self._metadata())

    def _heartbeats(self) -> None:
        # The heartbeat loop (§A.10): every heartbeatCheckPauseMillis, a
        # heartbeat when nothing was sent for heartbeatMaxInactivitySecs;
        # EVICTED tears down at once, 3 transient failures in a row too.
        failures = 0
        pause = self.options.heartbeatCheckPauseMillis / 1000
        while not self.ended.wait(pause):
            if not (self.options.heartbeatEnabled and self.agent.heartbeating):
                continue
            if self.agent.sinceMsgSent() <= self.options.heartbeatMaxInactivitySecs:
                continue
            outcome = self._sendHeartBeat()
            if outcome == "EVICTED":
                self.agent.streamEnds.append(StreamEnd("heartbeat", None, "evicted"))
                return
            failures = failures + 1 if outcome == "TRANSIENT_FAILURE" else 0
            if failures >= 3:
                self.agent.streamEnds.append(StreamEnd("heartbeat", None, "3 failures"))
                return

    def _sendHeartBeat(self) -> str:
        # sendHeartBeat (AGS:420-441): valid=false is EVICTED, any RPC
        # failure TRANSIENT_FAILURE; no id yet is a success.
        agentId = self.options.agentIdOverride or self.agent.agentId
        if not agentId:
            return "SUCCESS"
        try:
            response = self.unary(
                "sendHeartBeat", pb.HeartBeatRequest(agent_id=agentId), pb.HeartBeatResponse
            )
        except Exception:  # noqa: BLE001  # AGS:436: any failure is transient
            self.agent.heartbeats["failed"] += 1
            return "TRANSIENT_FAILURE"
        self.agent.markMsgSent()  # AGS:428
        if response.valid:
            self.agent.heartbeats["valid"] += 1
            return "SUCCESS"
        self.agent.heartbeats["invalid"] += 1
        self.agent.heartbeatReasons.append(response.reason)
        return "EVICTED"


class UpstreamAgent:
    """
    A prometheus-proxy 4.0.1 agent in threads of its own.

    What it did, for tests to watch (appended in its threads, read in the
    reactor's):

    @ivar agentId: the id the proxy assigned this connection ("" between
        connections).
    @ivar agentIds: every id it was assigned, in order.
    @ivar connectFailures: the gRPC status code and details of each failed
        connect.
    @ivar registrations: per connection, the C{RegisterPathResponse}s of its
        paths.
    @ivar registerFailures: why each connection that failed registration
        did (C{registerAgent} or C{registerPath} refused, or its call
        failed).
    @ivar connected: how many connections got through registration.
    @ivar received: every C{ScrapeRequest} the proxy sent.
    @ivar resultCounts: results sent, by upstream's kinds
        (C{non-gzipped}, C{gzipped}, C{chunked}).
    @ivar heartbeats: heartbeats answered C{valid}, C{invalid}, C{failed}.
    @ivar streamEnds: how each connection ended, one entry per task that
        ended it.
    @ivar heartbeating: misbehaviour: set to C{False}, the agent sends no
        more heartbeats (and nothing else when it has no scrapes).
    """

    def __init__(self, options: UpstreamOptions) -> None:
        self.options = options
        self.launchId = _launchId()
        # agent.name, or "Unnamed-<hostname>" (§A.1, agent_name).
        self.agentName = options.agentName or f"Unnamed-{socket.gethostname()}"
        self.agentId = ""
        self.agentIds: list[str] = []
        self.connectFailures: list[tuple[grpc.StatusCode | None, str]] = []
        self.registrations: list[list[pb.RegisterPathResponse]] = []
        self.registerFailures: list[str] = []
        self.connected = 0
        self.received: list[pb.ScrapeRequest] = []
        self.resultCounts: Counter[str] = Counter()
        self.heartbeats: Counter[str] = Counter()
        self.heartbeatReasons: list[str] = []
        self.streamEnds: list[StreamEnd] = []
        self.heartbeating = True
        self._paths = {p.path.removeprefix("/"): p for p in options.paths}
        self._lock = threading.Lock()
        self._lastMsgSent = time.monotonic()
        self._stopping = threading.Event()
        self._connection: _Connection | None = None
        self._stopped: Deferred[None] = Deferred()
        self._thread = threading.Thread(target=self._run, name="upstream agent: run loop")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Deferred[None]:
        """
        Stop for good: the connection is torn down, every thread ends.

        @return: fires in the reactor once the run loop has ended.
        """
        self._stopping.set()
        # Closing a grpcio channel takes its locks: not in the reactor.
        _threads.callInThread(self._closeConnection)
        return self._stopped

    def _closeConnection(self) -> None:
        with self._lock:
            connection = self._connection
        if connection is not None:
            connection.close()

    @property
    def connection(self) -> _Connection | None:
        """
        The current connection, if any, for a test's own calls on it (from
        a thread, never the reactor's).
        """
        return self._connection

    def markMsgSent(self) -> None:
        with self._lock:
            self._lastMsgSent = time.monotonic()

    def sinceMsgSent(self) -> float:
        with self._lock:
            return time.monotonic() - self._lastMsgSent

    def captureAgentId(self, headers: dict[str, Any]) -> None:
        """
        C{AgentClientInterceptor.onHeaders} (ACI:681-699): while the agent
        has no id, take the one in the headers; none there fails the call
        with C{INTERNAL}.
        """
        with self._lock:
            if self.agentId:
                return
            agentId = headers.get("agent-id")
            if not agentId:
                raise _MissingAgentId()
            self.agentId = str(agentId)
            self.agentIds.append(self.agentId)

    def makeChannel(self) -> grpc.Channel:
        """
        The channel of C{resetGrpcStubs} (AGS:255-309): retries on
        (AGS:279), TLS when any TLS file is set (AGS:192-202), with the
        overridden authority (AGS:281).
        """
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            # Each agent its own HTTP/2 connection, as two JVMs have:
            # grpcio otherwise shares one between the process's channels to
            # the same target.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        o = self.options
        if o.overrideAuthority:
            options += [
                ("grpc.ssl_target_name_override", o.overrideAuthority),
                ("grpc.default_authority", o.overrideAuthority),
            ]
        if not (o.trustCertCollectionFilePath or o.certChainFilePath or o.privateKeyFilePath):
            return grpc.insecure_channel(o.endpoint, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(o.trustCertCollectionFilePath),
            private_key=_read(o.privateKeyFilePath),
            certificate_chain=_read(o.certChainFilePath),
        )
        return grpc.secure_channel(o.endpoint, credentials, options=options)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            _threads.callFromThread(self._stopped.callback, None)

    def _loop(self) -> None:
        lastAttempt = -float("inf")
        while not self._stopping.is_set():
            # The reconnect rate limiter: one attempt per reconnectPauseSecs
            # (§A.12).
            wait = lastAttempt + self.options.reconnectPauseSecs - time.monotonic()
            if wait > 0 and self._stopping.wait(wait):
                return
            lastAttempt = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                # A new agent id on every reconnect (§A.12).
                self.agentId = ""
                connection = self._connection = _Connection(self)
            try:
                self._serve(connection)
            finally:
                connection.join()
                with self._lock:
                    self._connection = None
                    self.agentId = ""
            if not self.options.reconnect:
                self._stopping.wait()

    def _serve(self, connection: _Connection) -> None:
        if not connection.connect():
            return
        try:
            connection.register()
        except Exception as e:  # noqa: BLE001  # §A.3 step 4, 5: the attempt ends
            code, details = _code(e)
            self.registerFailures.append(details if code is None else f"{code.name}: {details}")
            return
        self.connected += 1
        connection.launch()
        connection.ended.wait()

    # -- the target side (AgentHttpService, §A.6 step 6, 7)

    def fetch(self, request: pb.ScrapeRequest) -> _ScrapeResult:
        """
        Fetch the target of C{request}'s path as upstream's agent does.
        """
        scrapeId = request.scrape_id
        config = self._paths.get(request.path)
        if config is None:
            return _ScrapeResult(False, scrapeId, 404, failureReason="invalid_path")
        url = config.url
        if request.encodedQueryParams:  # appended verbatim, ? or &
            url += ("&" if "?" in url else "?") + request.encodedQueryParams
        parts = urllib.parse.urlsplit(url)
        handlers: list[urllib.request.BaseHandler] = []
        if parts.username is not None:
            # Basic auth from the URL's userinfo through the client's auth
            # provider, which answers a challenge.
            url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
            passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            passwords.add_password(
                None,
                url,
                urllib.parse.unquote(parts.username),
                urllib.parse.unquote(parts.password or ""),
            )
            handlers.append(urllib.request.HTTPBasicAuthHandler(passwords))
        shownURL = url if request.debug_enabled else ""
        http = urllib.request.Request(url)
        if request.accept:
            http.add_header("Accept", request.accept)
        if request.authHeader.strip():
            http.add_header("Authorization", request.authHeader)
        limit = self.options.maxContentLengthMBytes * 1024 * 1024
        try:
            with urllib.request.build_opener(*handlers).open(
                http, timeout=self.options.scrapeTimeoutSecs
            ) as response:
                status = response.status
                contentType = response.headers.get("Content-Type", "")
                declared = response.headers.get("Content-Length")
                if declared is not None and int(declared) > limit:
                    return _ScrapeResult(False, scrapeId, 413, "Content-Length", shownURL)
                body = response.read(limit + 1)
        except urllib.error.HTTPError as e:
            # Non-2xx: that status, no body.
            return _ScrapeResult(False, scrapeId, e.code, f"HTTP {e.code}", shownURL)
        except TimeoutError as e:
            return _ScrapeResult(False, scrapeId, 408, _reason(e), shownURL)
        except urllib.error.URLError as e:
            timedOut = isinstance(e.reason, TimeoutError)
            return _ScrapeResult(False, scrapeId, 408 if timedOut else 503, _reason(e), shownURL)
        except OSError as e:
            return _ScrapeResult(False, scrapeId, 503, _reason(e), shownURL)
        if not 200 <= status < 300:
            return _ScrapeResult(False, scrapeId, status, f"HTTP {status}", shownURL)
        if len(body) > limit:
            return _ScrapeResult(False, scrapeId, 413, "body too large", shownURL)
        text = body.decode("utf-8", errors="replace")
        encoded = text.encode("utf-8")
        if len(encoded) > self.options.minGzipSizeBytes:  # strictly more (§A.6 step 7)
            return _ScrapeResult(
                True, scrapeId, status, "", shownURL, contentType, True, "", javaGzip(encoded)
            )
        return _ScrapeResult(True, scrapeId, status, "", shownURL, contentType, False, text)


class _MissingAgentId(Exception):
    """
    The interceptor's cancel (ACI:690-697): C{INTERNAL} "Headers missing
    AGENT_ID key".
    """

    def __str__(self) -> str:
        return "INTERNAL: Headers missing AGENT_ID key"


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__} - {error}"


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()
