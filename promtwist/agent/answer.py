# -*- test-case-name: promtwist.test.test_scraper -*-
"""
The wire side of a scrape: what a fetch tells (a head, body bytes, an end)
becomes L{ScrapeResponse} and L{ScrapeChunk} frames, compressed for the link
when worth it, in chunks of the agent's size, within the proxy's credit.

As prometheus-proxy's agent: a plain body is gzipped when it is larger than
C{agent.minGzipSizeBytes}, and the bytes on the link (compressed or not) go
in chunks of C{agent.chunkContentSizeKbs}; a body whose link bytes fit in one
chunk is one frame. The size is known at the head when the target gave a
length; otherwise the body is held until it exceeds the minimum or ends.

An L{Answer} knows nothing of HTTP: it pauses its producer (the fetch) when
the credit runs out and resumes it when credit comes back.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger

from promtwist.agent.client import Head
from promtwist.hostkeys import spelled
from promtwist.httputil import GZIP_ENCODINGS, acceptsGzip
from promtwist.logs import RepeatedWarnings, observer
from promtwist.protocol.framing import FrameTooLarge
from promtwist.protocol.promtwist_pb2 import (
    Frame,
    Outcome,
    ScrapeChunk,
    ScrapeRequest,
    ScrapeResponse,
)

# A target's Content-Type longer than this is cut: a real one is far shorter.
MAX_CONTENT_TYPE = 1024


class Answer:
    """
    The frames of one scrape's answer: exactly one of them says C{last}.
    L{ended} is called once when nothing more will be sent (not when the
    answer is L{cancel}led), with how the scrape ended as
    prometheus-proxy's C{agent_scrape_request_count} sees it:
    C{"success"}, C{"unsuccessful"} (the target answered, but not 2xx, or
    too much) or C{"failed"} (no answer: the target was unreachable or too
    slow, or the agent failed), which prometheus-proxy times but does not
    count.

    @ivar producer: what to pause while the proxy has no credit left.
    @ivar resultSent: told, once its last frame went out, how the result
        went, in the terms of prometheus-proxy's C{agent_scrape_result_count}
        (L{_resultSent}).
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        request: ScrapeRequest,
        path: str,
        send: Callable[[Frame], None],
        chunkBytes: int,
        credit: int,
        minGzipBytes: int,
        warnings: RepeatedWarnings,
        ended: Callable[[str], None],
        resultSent: Callable[[str], None],
    ) -> None:
        self.request = request
        self.path = path
        self.send = send
        self.chunkBytes = chunkBytes
        self.minGzipBytes = minGzipBytes
        self.warnings = warnings
        self.ended = ended
        self.resultSent = resultSent
        self.producer: IPushProducer | None = None
        self.credit = credit
        self.finished = False
        self._head: Head | None = None
        self._headSent = False
        # Whether the body the head announced goes over the link gzipped.
        self._gzippedOnLink = False
        self._paused = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        # The body is complete; what is buffered goes out as credit allows,
        # the last of it marked last.
        self._complete = False
        self._compressor: zlib._Compress | None = None
        # Whether the body is compressed for the link: None until decided,
        # the plain bytes held meanwhile (at most minGzipBytes of them).
        self._compressing: bool | None = None
        self._plain: list[bytes] = []
        self._plainSize = 0

    # What the fetch tells.

    def head(self, head: Head) -> None:
        self._head = head
        if not self._mayCompress(head):
            self._decide(False)
        elif head.length >= 0:
            self._decide(head.length > self.minGzipBytes)

    def data(self, data: bytes) -> None:
        if self.finished:
            return
        if self._compressing is None:
            self._plain.append(data)
            self._plainSize += len(data)
            if self._plainSize > self.minGzipBytes:
                self._decide(True)
        else:
            self._queue(data)
        if self._buffered >= self.chunkBytes:
            self._sendWholeChunks()
        if self.credit <= 0 and self.producer is not None and not self._paused:
            self._paused = True
            self.producer.pauseProducing()

    def end(self, outcome: Outcome, reason: str) -> None:
        """
        The body is complete (L{Outcome.SUCCESS} with no reason), the
        target's answer was not 2xx (L{Outcome.SUCCESS} with the reason),
        or the scrape failed.
        """
        if self.finished:
            return
        if outcome == Outcome.SUCCESS and not reason:
            if self._compressing is None:
                # Whole, and no larger than the minimum.
                self._decide(False)
            if self._compressor is not None:
                self._queue(b"", flush=True)
            self._complete = True
            return self._drain()
        self._log.info("scrape of {path} failed: {reason}", path=spelled(self.path), reason=reason)
        scrapeId = self.request.scrape_id
        if outcome == Outcome.SUCCESS:
            assert self._head is not None
            frame = Frame(
                scrape_response=ScrapeResponse(
                    scrape_id=scrapeId, status=self._head.status, reason=reason, last=True
                )
            )
        elif not self._headSent:
            frame = Frame(
                scrape_response=ScrapeResponse(
                    scrape_id=scrapeId, outcome=outcome, reason=reason, last=True
                )
            )
        else:
            frame = Frame(
                scrape_chunk=ScrapeChunk(
                    scrape_id=scrapeId, last=True, outcome=outcome, reason=reason
                )
            )
        try:
            self.send(frame)
        except FrameTooLarge as e:
            # Only a proxy announcing an absurdly small frame limit gets here;
            # it will hear nothing and answer at its own deadline.
            self.warnings.warn(
                "unsendable failure",
                "cannot tell the proxy that {path} failed: {error}",
                path=spelled(self.path),
                error=str(e),
            )
        else:
            # prometheus-proxy's agent sends a failure as a result without
            # a body, which it counts as non-gzipped.
            self.resultSent("non-gzipped")
        answered = outcome in (Outcome.SUCCESS, Outcome.TOO_LARGE)
        self._finish("unsuccessful" if answered else "failed")

    # From the proxy.

    def addCredit(self, nbytes: int) -> None:
        self.credit += nbytes
        self._drain()
        if self._paused and self.credit > 0 and self.producer is not None:
            self._paused = False
            self.producer.resumeProducing()

    def cancel(self) -> None:
        """
        Send nothing more, and do not call L{ended}.
        """
        self.finished = True
        self._buffer = []
        self._buffered = 0
        self._plain = []

    # Compressing.

    def _mayCompress(self, head: Head) -> bool:
        """
        Whether the body of C{head} may be compressed for the link: it is
        plain, and Prometheus takes gzip (the proxy passes it on as it is).
        """
        return head.contentEncoding in ("", "identity") and acceptsGzip(
            self.request.accept_encoding
        )

    def _decide(self, compress: bool) -> None:
        """
        Compress the body for the link or not; what was held goes to the
        link buffer.
        """
        self._compressing = compress
        if compress:
            self._compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        held, self._plain, self._plainSize = b"".join(self._plain), [], 0
        self._queue(held)

    def _queue(self, data: bytes, flush: bool = False) -> None:
        """
        Add body bytes to what goes on the link, compressed if so decided.
        """
        if self._compressor is not None:
            data = self._compressor.compress(data)
            if flush:
                data += self._compressor.flush()
        if data:
            self._buffer.append(data)
            self._buffered += len(data)

    # Sending.

    def _sendWholeChunks(self) -> None:
        """
        Send the whole chunks the buffer holds while the proxy has credit
        left, and keep the rest: the buffer is joined once, whatever the
        number of chunks in it.

        A frame is started only while credit is left, so the proxy never
        holds more than its window and one frame for this scrape; it treats
        more as a protocol violation.
        """
        data = b"".join(self._buffer)
        size = self.chunkBytes
        offset = 0
        while len(data) - offset >= size and self.credit > 0 and not self.finished:
            self._sendPayload(data[offset : offset + size], last=False)
            offset += size
        rest = data[offset:]
        self._buffer = [rest] if rest else []
        self._buffered = len(rest)

    def _drain(self) -> None:
        """
        Send what the credit allows; once the body is complete and only the
        tail is left, send it as the last frame and end.
        """
        if self.finished:
            return
        if self._buffered >= self.chunkBytes:
            self._sendWholeChunks()
        if self._complete and self._buffered < self.chunkBytes and self.credit > 0:
            rest, self._buffer, self._buffered = b"".join(self._buffer), [], 0
            self._sendPayload(rest, last=True)
            if not self.finished:
                self._finish("success")

    def _sendPayload(self, payload: bytes, last: bool) -> None:
        if not self._headSent:
            return self._sendHead(payload, last)
        if payload or last:
            self.credit -= len(payload)
            sent = self._sendOrFail(
                Frame(
                    scrape_chunk=ScrapeChunk(
                        scrape_id=self.request.scrape_id, data=payload, last=last
                    )
                )
            )
            if sent and last:
                self._resultSent(several=True)

    def _sendHead(self, payload: bytes, last: bool) -> None:
        head = self._head
        assert head is not None
        encoding, length = head.contentEncoding, head.length
        if self._compressor is not None:
            encoding, length = "gzip", -1
        self.credit -= len(payload)
        sent = self._sendOrFail(
            Frame(
                scrape_response=ScrapeResponse(
                    scrape_id=self.request.scrape_id,
                    outcome=Outcome.SUCCESS,
                    status=head.status,
                    content_type=head.contentType[:MAX_CONTENT_TYPE],
                    content_encoding=encoding,
                    content_length=length,
                    body=payload,
                    last=last,
                )
            )
        )
        if not sent:
            return
        self._headSent = True
        self._gzippedOnLink = encoding.lower() in GZIP_ENCODINGS
        if last:
            self._resultSent(several=False)

    def _resultSent(self, several: bool) -> None:
        """
        The result's last frame went out: count it as prometheus-proxy's
        agent does, by its body's encoding on the link and, for a gzip
        body, by whether it took more than one chunk: C{"non-gzipped"},
        C{"gzipped"} (one frame) or C{"chunked"}. prometheus-proxy only
        chunks gzip bodies; a plain body that promtwist sends in several
        frames (so that other scrapes interleave) is still
        C{"non-gzipped"}, as it is there.

        @param several: it went in more than one frame.
        """
        if not self._gzippedOnLink:
            self.resultSent("non-gzipped")
        else:
            self.resultSent("chunked" if several else "gzipped")

    def _sendOrFail(self, frame: Frame) -> bool:
        """
        Send one frame of the answer; one the link cannot carry fails the
        scrape instead (in a head if no head went out yet, else in a last
        chunk).

        @return: whether it was sent.
        """
        try:
            self.send(frame)
        except FrameTooLarge as e:
            self.end(Outcome.AGENT_ERROR, f"answer too large for the link: {e}")
            return False
        return True

    def _finish(self, kind: str) -> None:
        self.finished = True
        self._buffer = []
        self._buffered = 0
        self._plain = []
        self.ended(kind)
