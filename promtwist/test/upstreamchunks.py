"""
Upstream's chunked results (C{ChunkedScrapeResponse}s), built as its agent
builds them, for the tests that feed them to promtwist: a header, chunks
that each carry the CRC32 of every byte so far, and a summary of the
whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from promtwist.grpc import proxy_service_pb2 as pb
from promtwist.proxy.bodybudget import BodyBudget
from promtwist.proxy.grpcanswers import Transfers
from promtwist.proxy.stream import TransferMetrics


def transfersOf(
    metrics: TransferMetrics, maxBytes: int, budget: int = 64 * 1024 * 1024
) -> Transfers:
    """
    A proxy's transfers in progress: at most C{maxBytes} each, C{budget}
    between them.
    """
    return Transfers(metrics, maxBytes, BodyBudget(budget, "the test's budget", "chunked results"))


def header(
    scrapeId: int, agentId: str, status: int = 200, contentType: str = "text/plain"
) -> pb.ChunkedScrapeResponse:
    """
    The header of a gzipped result, valid if C{status} is a success.
    """
    return pb.ChunkedScrapeResponse(
        header=pb.HeaderData(
            header_valid_response=status < 300,
            header_agent_id=agentId,
            header_scrape_id=scrapeId,
            header_status_code=status,
            header_content_type=contentType,
            header_zipped=True,
        )
    )


def chunks(
    scrapeId: int,
    zipped: bytes,
    size: int,
    corrupt: Callable[[int, int], int] = lambda ordinal, checksum: checksum,
) -> list[pb.ChunkedScrapeResponse]:
    """
    C{zipped} in chunks of C{size} bytes, numbered from 1, each with the
    running checksum as C{corrupt(ordinal, checksum)} makes it (as it is,
    by default).
    """
    out = []
    checksum = 0
    for ordinal, start in enumerate(range(0, len(zipped), size), 1):
        piece = zipped[start : start + size]
        checksum = zlib.crc32(piece, checksum)
        out.append(
            pb.ChunkedScrapeResponse(
                chunk=pb.ChunkData(
                    chunk_scrape_id=scrapeId,
                    chunk_count=ordinal,
                    chunk_byte_count=len(piece),
                    chunk_checksum=corrupt(ordinal, checksum),
                    chunk_bytes=piece,
                )
            )
        )
    return out


def summary(scrapeId: int, zipped: bytes, count: int) -> pb.ChunkedScrapeResponse:
    """
    The summary of C{zipped} sent in C{count} chunks.
    """
    return pb.ChunkedScrapeResponse(
        summary=pb.SummaryData(
            summary_scrape_id=scrapeId,
            summary_chunk_count=count,
            summary_byte_count=len(zipped),
            summary_checksum=zlib.crc32(zipped),
        )
    )


def chunkedResult(
    scrapeId: int,
    zipped: bytes,
    agentId: str,
    size: int,
    contentType: str = "text/plain",
    corrupt: Callable[[int, int], int] = lambda ordinal, checksum: checksum,
) -> list[pb.ChunkedScrapeResponse]:
    """
    A whole chunked result: header, L{chunks}, summary.
    """
    pieces = chunks(scrapeId, zipped, size, corrupt)
    return [
        header(scrapeId, agentId, contentType=contentType),
        *pieces,
        summary(scrapeId, zipped, len(pieces)),
    ]
