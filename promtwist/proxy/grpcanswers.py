# -*- test-case-name: promtwist.test.test_grpc_answers -*-
"""
Upstream agents' scrape results as promtwist's relay takes them: each
becomes the one answer head (carrying the whole body) of the awaited
L{ScrapeStream}, checked there as any agent's answer is.

A chunked result (C{writeChunkedResponsesToProxy}: a header, chunks with a
running CRC32, a summary with the totals) is validated as upstream
validates it and delivered only once its summary checks out: upstream's
proxy answers a bad chunk with 502, which a body already streaming to
Prometheus could no longer be. Its bytes are held until then, within
C{proxy.internal.maxZippedContentSizeMBytes}, as upstream holds them, and
all transfers' bytes within C{proxy.internal.maxChunkedBufferMBytes}
(L{Transfers}), which upstream does not bound.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from promtwist.grpc import proxy_service_pb2 as pb
from promtwist.logs import clip
from promtwist.protocol.promtwist_pb2 import ScrapeResponse
from promtwist.proxy.bodybudget import BodyBudget
from promtwist.proxy.stream import MAX_REASON, ScrapeStream, TransferMetrics


class AnsweringAgent(Protocol):
    """
    The agent a result came from, as far as results need it.
    """

    name: str
    #: Who the bytes of its chunked results are charged to in the
    #: proxy's budget: its identity on its source address
    #: (L{promtwist.proxy.admission.hostOf}), not
    #: its agent id, which a token holder makes as many of as it likes.
    source: str

    def stream(self, scrapeId: int) -> ScrapeStream | None:
        """
        The stream awaiting this agent's answer to C{scrapeId}, if one does.
        """

    def heard(self) -> None:
        """
        A result came: the agent is alive.
        """


def _failed(status: int, reason: str) -> ScrapeResponse:
    return ScrapeResponse(status=status, reason=clip(reason, MAX_REASON), last=True)


def answer(
    agent: str,
    valid: bool,
    status: int,
    failureReason: str,
    contentType: str,
    zipped: bool,
    body: bytes,
) -> ScrapeResponse:
    """
    One upstream result as promtwist's answer head with the whole body:
    gzip bytes stay gzip (the relay inflates them, bounded, for a client
    that does not take gzip); a target's failure is its status and
    upstream's reason, with no body.
    """
    if status < 0:
        # int32 upstream; promtwist's unsigned field cannot even carry it.
        return _failed(502, f"gRPC agent {agent!r}: status {status} is not an HTTP status")
    if 200 <= status < 300 and not valid:
        # A 2xx that the agent calls invalid is no answer to pass on.
        reason = f": {failureReason}" if failureReason else ""
        return _failed(502, f"gRPC agent {agent!r} marked its HTTP {status} result invalid{reason}")
    if status >= 300:
        reason = failureReason or f"target answered HTTP {status}"
        return _failed(status, f"gRPC agent {agent!r}: {reason}")
    return ScrapeResponse(
        status=status,
        content_type=contentType,
        content_encoding="gzip" if zipped else "",
        content_length=len(body),
        body=body,
        last=True,
    )


def answerOf(agent: str, response: pb.ScrapeResponse) -> ScrapeResponse:
    """
    A C{writeResponsesToProxy} result: text (UTF-8) or gzip bytes.
    """
    zipped = response.zipped
    content = response.WhichOneof("content_one_of")
    if content == ("content_as_text" if zipped else "content_as_zipped"):
        # Either reading would lose the body the agent sent.
        marked = "zipped" if zipped else "not zipped"
        return _failed(502, f"gRPC agent {agent!r}: result marked {marked} and sent as {content}")
    body = response.content_as_zipped if zipped else response.content_as_text.encode("utf-8")
    return answer(
        agent,
        response.valid_response,
        response.status_code,
        response.failure_reason,
        response.content_type,
        zipped,
        body,
    )


@dataclass(eq=False)
class _Transfer:
    agent: AnsweringAgent
    stream: ScrapeStream
    header: pb.HeaderData
    # The call that carries it, and the source its bytes are charged to.
    carrier: ChunkedResults
    source: str
    chunks: int = 0
    checksum: int = 0
    body: bytearray = field(default_factory=bytearray)


class Transfers:
    """
    Every chunked transfer in progress, proxy-wide, by scrape id (scrape
    ids are proxy-wide too): at most one per scrape, whichever call or
    connection its header came on, so sending one scrape's header on many
    calls holds no more than sending it once. A transfer is purged the
    moment its scrape ends (L{purge}, from the agent's C{forget}: Prometheus
    left, the deadline passed, the agent left), and the bytes of them all
    are held within one L{BodyBudget}, shared by source (an identity on an
    address, L{AnsweringAgent.source}) as pushes are.

    @ivar metrics: where validation failures and abandoned transfers count.
    @ivar maxBytes: the most one transfer may hold.
    """

    def __init__(self, metrics: TransferMetrics, maxBytes: int, budget: BodyBudget) -> None:
        self.metrics = metrics
        self.maxBytes = maxBytes
        self.budget = budget
        self._open: dict[int, _Transfer] = {}

    def __len__(self) -> int:
        return len(self._open)

    def get(self, scrapeId: int) -> _Transfer | None:
        return self._open.get(scrapeId)

    def start(self, transfer: _Transfer) -> _Transfer | None:
        """
        Open C{transfer}, unless its scrape has one already: that one is
        then purged and returned.
        """
        scrapeId = transfer.stream.scrapeId
        previous = self.purge(scrapeId)
        if previous is None:
            self._open[scrapeId] = transfer
        return previous

    def take(self, transfer: _Transfer, size: int) -> str | None:
        """
        Charge C{size} more bytes to C{transfer}, or say why not.
        """
        refusal = self.budget.take(size, transfer.source)
        return refusal.reason if refusal is not None else None

    def purge(self, scrapeId: int) -> _Transfer | None:
        """
        C{scrapeId}'s transfer is over, however it ended: its bytes are
        given back.
        """
        transfer = self._open.pop(scrapeId, None)
        if transfer is not None and transfer.body:
            self.budget.give(len(transfer.body), transfer.source)
        return transfer


class ChunkedResults:
    """
    One C{writeChunkedResponsesToProxy} call's transfers. A transfer starts
    with a header for a scrape its agent was sent and takes chunks and its
    summary on the same call; any other chunks and summaries are dropped.
    """

    def __init__(
        self,
        agentOf: Callable[[str], AnsweringAgent | None],
        transfers: Transfers,
        dropped: Callable[[int], None],
    ) -> None:
        """
        @param agentOf: the agent whose results this stream may carry by
            its id, or L{None}.
        @param transfers: the proxy's transfers in progress.
        @param dropped: told the scrape id of every result dropped.
        """
        self._agentOf = agentOf
        self._transfers = transfers
        self._metrics = transfers.metrics
        self._dropped = dropped
        # The scrape ids this call opened transfers for.
        self._mine: set[int] = set()

    def received(self, message: pb.ChunkedScrapeResponse) -> None:
        which = message.WhichOneof("chunk_one_of")
        if which == "header":
            self._header(message.header)
        elif which == "chunk":
            self._chunk(message.chunk)
        elif which == "summary":
            self._summary(message.summary)

    def ended(self) -> None:
        """
        The stream ended: transfers without their summary fail.
        """
        mine, self._mine = self._mine, set()
        for scrapeId in mine:
            transfer = self._transfers.get(scrapeId)
            if transfer is None or transfer.carrier is not self:
                continue
            self._transfers.purge(scrapeId)
            if not transfer.stream.ended:
                self._metrics.transferAbandoned()
                self._fail(
                    transfer,
                    "Chunked transfer abandoned: stream terminated before summary received",
                )

    def _header(self, header: pb.HeaderData) -> None:
        scrapeId = header.header_scrape_id
        agent = self._agentOf(header.header_agent_id)
        stream = agent.stream(scrapeId) if agent is not None else None
        if agent is None or stream is None or stream.ended:
            return self._dropped(scrapeId)
        agent.heard()
        transfer = _Transfer(agent, stream, header, self, agent.source)
        previous = self._transfers.start(transfer)
        if previous is not None:
            # On this call or another: one transfer per scrape, and the
            # agent that sent two gets neither.
            self._metrics.chunkInvalid("chunk")
            return self._fail(previous, "Chunk validation failed: a second header")
        self._mine.add(scrapeId)

    def _open(self, scrapeId: int) -> _Transfer | None:
        """
        The transfer this call opened for C{scrapeId}, if its scrape is
        still awaited; else the message is dropped. Once the scrape is over
        (Prometheus left, its deadline passed) the rest of its transfer is
        dropped as it comes, not held to its summary for nobody as upstream
        holds it.
        """
        transfer = self._transfers.get(scrapeId)
        if transfer is not None and transfer.carrier is not self:
            transfer = None
        elif transfer is not None and transfer.stream.ended:
            self._transfers.purge(scrapeId)
            transfer = None
        if transfer is None:
            self._mine.discard(scrapeId)
            self._dropped(scrapeId)
        return transfer

    def _chunk(self, chunk: pb.ChunkData) -> None:
        scrapeId = chunk.chunk_scrape_id
        transfer = self._open(scrapeId)
        if transfer is None:
            return
        transfer.agent.heard()
        count, data = chunk.chunk_byte_count, chunk.chunk_bytes
        problem = None
        if not 0 <= count <= len(data):
            problem = f"chunk byte count {count} is not within the chunk's {len(data)} bytes"
        elif chunk.chunk_count != transfer.chunks + 1:
            problem = f"chunk {chunk.chunk_count} came where chunk {transfer.chunks + 1} was due"
        elif len(transfer.body) + count > self._transfers.maxBytes:
            problem = (
                f"more than {self._transfers.maxBytes} zipped bytes"
                " (proxy.internal.maxZippedContentSizeMBytes)"
            )
        else:
            checksum = zlib.crc32(data[:count], transfer.checksum)
            if checksum != chunk.chunk_checksum:
                problem = (
                    f"checksum mismatch at chunk {chunk.chunk_count}: the bytes give"
                    f" {checksum}, the agent says {chunk.chunk_checksum}"
                )
        if problem is not None:
            self._end(scrapeId)
            self._metrics.chunkInvalid("chunk")
            return self._fail(transfer, f"Chunk validation failed: {problem}")
        refused = self._transfers.take(transfer, count)
        if refused is not None:
            self._end(scrapeId)
            return self._fail(transfer, f"Chunked transfer refused: {refused}", 503)
        transfer.chunks += 1
        transfer.checksum = checksum
        transfer.body += data[:count]

    def _summary(self, summary: pb.SummaryData) -> None:
        scrapeId = summary.summary_scrape_id
        transfer = self._open(scrapeId)
        if transfer is None:
            return
        self._end(scrapeId)
        transfer.agent.heard()
        expected = (
            summary.summary_chunk_count,
            summary.summary_byte_count,
            summary.summary_checksum,
        )
        received = (transfer.chunks, len(transfer.body), transfer.checksum)
        if expected != received:
            self._metrics.chunkInvalid("summary")
            return self._fail(
                transfer,
                "Summary validation failed: the agent counts chunks, bytes and checksum"
                f" {expected}, the proxy received {received}",
            )
        header = transfer.header
        transfer.stream.responseReceived(
            answer(
                transfer.agent.name,
                header.header_valid_response,
                header.header_status_code,
                header.header_failure_reason,
                header.header_content_type,
                header.header_zipped,
                bytes(transfer.body),
            )
        )

    def _end(self, scrapeId: int) -> None:
        self._transfers.purge(scrapeId)
        self._mine.discard(scrapeId)

    def _fail(self, transfer: _Transfer, reason: str, status: int = 502) -> None:
        if not transfer.stream.ended:
            transfer.stream.responseReceived(
                _failed(status, f"gRPC agent {transfer.agent.name!r}: {reason}")
            )
