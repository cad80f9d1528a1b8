# -*- test-case-name: promtwist.test.test_scraper -*-
"""
Scrapes for the proxy: each one waits for a slot, fetches its target
(L{promtwist.agent.fetch}) and streams the body back in frames as it
arrives (L{promtwist.agent.answer}).

Every scrape is bounded four ways: by its deadline (covering the wait for
a slot, connect, headers, body and retries), by
C{agent.http.clientTimeoutSecs} for each request to the target, by
C{agent.http.maxContentLengthMBytes}, and by the proxy's credit, so a slow
Prometheus slows the target read instead of filling memory.

A connection failure or a 5xx answer is retried (C{agent.scrapeMaxRetries},
L{promtwist.agent.retries}) as long as nothing of the answer went to the
proxy: the decision is made at the head, before it is passed on.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.agent.answer import Answer
from promtwist.agent.buckstops import buckStops
from promtwist.agent.client import Head, TargetPool
from promtwist.agent.fetch import Fetch, Fetcher, InvalidRequest, Target, headerLine
from promtwist.agent.filters import FamilyFilter, FilterStream
from promtwist.agent.retries import RetryPolicy
from promtwist.agent.slots import Slots
from promtwist.config.settings import AgentSettings, MiB, PathConfig
from promtwist.hostkeys import spelled
from promtwist.httputil import redacted
from promtwist.logs import RepeatedWarnings, clip, observer
from promtwist.protocol.promtwist_pb2 import Frame, Outcome, ScrapeRequest

# What a head frame adds around its body bytes, with room to spare: content
# type and encoding (capped), length, status and ids.
FRAME_OVERHEAD = 4096
# The fewest body bytes per frame, whatever limit the proxy announces.
MIN_CHUNK = 1024


class ScrapeObserver:
    """
    What the agent's metrics hear of its scrapes; this one hears nothing.
    Given to L{Scraper} when it is made, rather than hooks set on it later.
    """

    def scrapeEnded(self, kind: str, seconds: float) -> None:
        """
        A scrape of a served path ended after C{seconds}: C{"success"},
        C{"unsuccessful"}, C{"failed"} (see L{promtwist.agent.answer.Answer})
        or C{"cancelled"} (by the proxy, or with its link).
        """

    def invalidPath(self) -> None:
        """
        A scrape of a path this agent does not serve was refused.
        """

    def resultSent(self, kind: str) -> None:
        """
        A result went to the proxy (C{"chunked"}, C{"gzipped"},
        C{"non-gzipped"}) or was lost with its link (C{"dropped"}).
        """

    def filtered(self, path: str, stream: FilterStream) -> None:
        """
        The filter of C{path} ran over a whole body.
        """

    def retried(self, kind: str) -> None:
        """
        A fetch is being retried after a failure of C{kind}
        (C{"unreachable"} or C{"server_error"}).
        """


class Scraper:
    """
    Runs scrapes for one agent process.

    @ivar fetcher: what their fetches share, the target connection pool
        among it.
    @ivar observer: told of every scrape's end and result.
    @ivar retries: when a failed fetch is tried again.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        settings: AgentSettings,
        pool: TargetPool,
        clock: IReactorTime,
        observer: ScrapeObserver = ScrapeObserver(),
        retries: RetryPolicy | None = None,
    ) -> None:
        """
        @param retries: the retry policy; by default
            C{agent.scrapeMaxRetries} with random jitter.
        """
        self.settings = settings
        self.clock = clock
        self.observer = observer
        self.retries = retries or RetryPolicy(settings.scrape_max_retries)
        self.fetcher = Fetcher(
            pool,
            clock,
            settings.max_content_length_mbytes * MiB,
            {f.path: FamilyFilter(f) for f in settings.filters},
            self.warnOnce,
            observer.filtered,
        )
        self._warned: set[tuple[str, str]] = set()
        self._chunkCapSaid = False
        # For what a proxy can make happen on every scrape.
        self.warnings = RepeatedWarnings(self._log, clock)

    def warnOnce(self, path: str, why: str) -> None:
        """
        Say once per path and reason that a filter could not be applied: it
        would be the same on every scrape.
        """
        if (path, why) not in self._warned:
            self._warned.add((path, why))
            self._log.warn("not filtering /{path}: {why}", path=path, why=why)

    def chunkBytes(self, peerMaxFrameBytes: int) -> int:
        """
        The body bytes per frame: C{agent.chunkContentSizeKbs}, kept below the
        proxy's frame limit.

        Never below L{MIN_CHUNK}: a proxy announcing a limit that leaves no
        room for body bytes gets frames it refuses, and each scrape fails with
        "answer too large for the link", where a chunk of zero or fewer bytes
        would never empty the buffer.

        A setting the limit cuts down is said once, at the first link that
        cuts it (prometheus-proxy sends chunks of any size it is given, so a
        migrated C{--chunk} may ask for more than a frame holds).
        """
        wanted = self.settings.chunk_content_size_kbs * 1024
        chunk = max(MIN_CHUNK, min(wanted, peerMaxFrameBytes - FRAME_OVERHEAD))
        if chunk < wanted and not self._chunkCapSaid:
            self._chunkCapSaid = True
            self._log.warn(
                "agent.chunkContentSizeKbs (--chunk) is {kbs} KiB, more than the"
                " proxy's frame limit of {limit} bytes holds: chunks are {chunk} bytes",
                kbs=self.settings.chunk_content_size_kbs,
                limit=peerMaxFrameBytes,
                chunk=chunk,
            )
        return chunk


class _Attempt:
    """
    What one request to the target tells, on its way to the scrape's
    L{Answer}: a failure worth retrying is kept from the answer (nothing of
    it went to the proxy: a head is only passed on here) and the scrape
    retries instead.
    """

    def __init__(self, scrape: Scrape) -> None:
        self.scrape = scrape
        self._gotHead = False
        # A 5xx head held back, and the wait before its retry.
        self._held: float | None = None

    def head(self, head: Head) -> None:
        self._gotHead = True
        scrape = self.scrape
        if scrape.scraper.retries.retryableStatus(head.status):
            self._held = scrape.retryDelay()
            if self._held is not None:
                return
        scrape.answer.head(head)

    def data(self, data: bytes) -> None:
        if self._held is None:
            self.scrape.answer.data(data)

    def end(self, outcome: Outcome, reason: str) -> None:
        scrape = self.scrape
        scrape.requestEnded()
        if self._held is not None:
            return scrape.retry("server_error", self._held, reason)
        if outcome == Outcome.UNREACHABLE and not self._gotHead:
            delay = scrape.retryDelay()
            if delay is not None:
                return scrape.retry("unreachable", delay, reason)
        scrape.answer.end(outcome, reason + scrape.afterRetries() if reason else reason)


class Scrape:
    """
    One scrape at the agent, from the proxy's request to the last chunk:
    the slot, the deadline, the retries, and the L{Fetch}es and the
    L{Answer} it joins.

    Frames go out through C{send}; exactly one of them says C{last}. L{done}
    fires (never fails) when nothing more will be sent.

    Every method called from outside is guarded by L{buckStops}: whatever
    goes wrong, the proxy hears of it at once, with a reason.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        scraper: Scraper,
        request: ScrapeRequest,
        pathConfig: PathConfig,
        send: Callable[[Frame], None],
        chunkBytes: int,
    ) -> None:
        self.scraper = scraper
        self.request = request
        self.pathConfig = pathConfig
        # A proxy that gives no deadline gets the agent's own.
        limit = scraper.settings.scrape_timeout_secs
        self.timeout = min(request.timeout_ms / 1000, limit) if request.timeout_ms else limit
        # Which bound the deadline is, for a reason that names it.
        self._deadlineBound = (
            "the proxy's scrape deadline" if self.timeout < limit else "agent.scrapeTimeoutSecs"
        )
        self.done: Deferred[None] = Deferred()
        self.answer = Answer(
            request,
            pathConfig.path,
            send,
            chunkBytes,
            request.window_bytes or scraper.fetcher.maxBodyBytes,
            scraper.settings.min_gzip_size_bytes,
            scraper.warnings,
            self._end,
            scraper.observer.resultSent,
        )
        self.fetch: Fetch | None = None
        self._startedAt = scraper.clock.seconds()
        self._deadline = self._startedAt + self.timeout
        self._timer: IDelayedCall | None = None
        # agent.http.clientTimeoutSecs for the request in flight.
        self._clientTimer: IDelayedCall | None = None
        # The wait before a retry.
        self._retryTimer: IDelayedCall | None = None
        self._retries = 0
        # Fetches given up for a retry: one may still read an unwanted body
        # for reuse, which a cancel drops.
        self._retired: list[Fetch] = []
        self._slots: Slots | None = None
        # Queued for a slot, or holding one.
        self._waiting = False
        self._holding = False
        self._hadToWait = False
        self._head = b""
        # When the target was asked; None while it has not been.
        self._contactedAt: float | None = None

    # Driving.

    @buckStops
    def start(self, slots: Slots) -> None:
        """
        Check the request, start the clock, and fetch the target once one of
        C{slots} is free: time spent waiting for a slot counts.

        A request that cannot be sent is refused at once, before it waits.
        """
        try:
            self._target = self.scraper.fetcher.target(self.pathConfig.url)
            fetch = self._newFetch()
            self._head = self._requestHead(self._target, fetch.filtered)
        except InvalidRequest as e:
            return self.answer.end(Outcome.AGENT_ERROR, f"{e}; the target was not contacted")
        self._timer = self.scraper.clock.callLater(self.timeout, self._timedOut)
        self._slots = slots
        if slots.take(self._slotFree):
            # One that found a slot free did not wait, however the clock moved.
            self._holding = True
            self._ask(self._startedAt)
        else:
            self._waiting = self._hadToWait = True

    @property
    def queued(self) -> bool:
        """
        Whether this scrape is still waiting for a slot.
        """
        return self._waiting

    def _requestHead(self, target: Target, filtered: bool) -> bytes:
        """
        The request up to its deadline header: the target's fixed lines,
        and the headers Prometheus sent that matter, each checked.

        @raise InvalidRequest: the query or a forwarded value holds a byte
            no request may carry.
        """
        request = self.request
        lines = [b"GET ", target.requestTarget(request.query), b" HTTP/1.1\r\n", target.fixed]
        if request.accept:
            lines.append(headerLine(b"Accept", request.accept))
        # A filtered path asks the target for a body it can read; the result
        # is compressed for the link afterwards.
        if request.accept_encoding and not filtered:
            lines.append(headerLine(b"Accept-Encoding", request.accept_encoding))
        if request.authorization:
            forwarded = headerLine(b"Authorization", request.authorization)
            # Credentials configured for the target win over forwarded ones.
            if target.authorization is None:
                lines.append(forwarded)
        return b"".join(lines)

    @buckStops
    def _slotFree(self) -> None:
        """
        A slot is ours (until L{_end}) after waiting for it.
        """
        self._waiting = False
        self._holding = True
        now = self.scraper.clock.seconds()
        if self._deadline - now <= 0:
            # The slot came as the time ran out: a request now could only be
            # cancelled at once.
            return self._waitedTooLong()
        self._ask(now)

    def _newFetch(self) -> Fetch:
        """
        The fetch of the next request to the target, the one whose body
        the answer pauses and resumes.
        """
        fetch = Fetch(
            self.scraper.fetcher, self._target, self.pathConfig.path, _Attempt(self), self._bug
        )
        self.fetch = fetch
        self.answer.producer = fetch
        return fetch

    def _ask(self, now: float) -> None:
        """
        Ask the target, with what is left of the deadline, for at most
        C{agent.http.clientTimeoutSecs}; a retry says which it is in
        C{x-retry-count}, as prometheus-proxy's agent does.
        """
        assert self.fetch is not None
        if self._contactedAt is None:
            self._contactedAt = now
        clock = self.scraper.clock
        remaining = self._deadline - clock.seconds()
        clientTimeout = self.scraper.settings.client_timeout_secs
        if clientTimeout < remaining:
            self._clientTimer = clock.callLater(clientTimeout, self._clientTimedOut)
        retry = b"x-retry-count: %d\r\n" % self._retries if self._retries else b""
        self.fetch.start(
            b"%s%sX-Prometheus-Scrape-Timeout-Seconds: %.3f\r\n\r\n"
            % (self._head, retry, min(remaining, clientTimeout)),
            self._deadline,
        )

    # Retries.

    def retryDelay(self) -> float | None:
        """
        How long to wait before retrying the fetch that just failed, or
        L{None} when it is not retried: the retries are used up, the scrape
        ended, or the retry could not start before the deadline.
        """
        policy = self.scraper.retries
        if self._retries >= policy.maxRetries or self.answer.finished:
            return None
        delay = policy.delay(self._retries + 1)
        if self.scraper.clock.seconds() + delay >= self._deadline:
            return None
        return delay

    def retry(self, kind: str, delay: float, reason: str) -> None:
        """
        Ask the target again after C{delay}; the failed request is given up
        (an unwanted body may still be read, for its connection's reuse).
        """
        self._retries += 1
        self.scraper.observer.retried(kind)
        self._log.info(
            "retrying {path} in {delay:.3g}s (retry {retry} of {most}): {reason}",
            path=spelled(self.pathConfig.path),
            delay=delay,
            retry=self._retries,
            most=self.scraper.retries.maxRetries,
            reason=reason,
        )
        assert self.fetch is not None
        self.fetch.stopProducing()
        self._retired.append(self.fetch)
        self._newFetch()
        self._retryTimer = self.scraper.clock.callLater(delay, self._retryNow)

    @buckStops
    def _retryNow(self) -> None:
        self._retryTimer = None
        self._ask(self.scraper.clock.seconds())

    def requestEnded(self) -> None:
        """
        The request in flight is over, whatever its end:
        C{agent.http.clientTimeoutSecs} no longer runs.
        """
        if self._clientTimer is not None and self._clientTimer.active():
            self._clientTimer.cancel()
        self._clientTimer = None

    def afterRetries(self) -> str:
        """
        What a failure's reason adds once the fetch was retried.
        """
        if not self._retries:
            return ""
        return f" (after {self._retries} {'retry' if self._retries == 1 else 'retries'})"

    def _bug(self, failure: Failure) -> None:
        """
        The buck stops here: a bug fails this one scrape, loudly, and nothing else.
        """
        self._log.failure(
            "scrape of {path} failed unexpectedly", failure, path=spelled(self.pathConfig.path)
        )
        self.answer.end(Outcome.AGENT_ERROR, f"agent error: {clip(failure.getErrorMessage())}")

    @buckStops
    def credit(self, nbytes: int) -> None:
        self.answer.addCredit(nbytes)

    @buckStops
    def cancel(self) -> None:
        """
        The proxy no longer wants this scrape (or its link is gone): stop,
        and send nothing more. Even after its answer ended, the fetch may
        still be reading an unwanted body to reuse the connection: that is
        dropped too.
        """
        for retired in self._retired:
            retired.cancel()
        if self.fetch is not None:
            self.fetch.cancel()
        if not self.answer.finished:
            self.answer.cancel()
            self._end("cancelled")

    # Endings.

    @buckStops
    def _timedOut(self) -> None:
        self._timer = None
        contactedAt = self._contactedAt
        if contactedAt is None:
            return self._waitedTooLong()
        self._timeUp(
            self._deadline - contactedAt, self._deadlineBound, contactedAt - self._startedAt
        )

    @buckStops
    def _clientTimedOut(self) -> None:
        self._clientTimer = None
        self._timeUp(self.scraper.settings.client_timeout_secs, "agent.http.clientTimeoutSecs", 0)

    def _timeUp(self, had: float, bound: str, waited: float) -> None:
        """
        The target had C{had} seconds, as C{bound} allows, and did not
        answer in time; or Prometheus did not read what it answered.
        """
        had = round(had, 3)
        waited = round(waited, 3)
        assert self.fetch is not None
        where = self.fetch.where
        if self.answer.credit <= 0:
            # Not the target's slowness: what it sent could not be passed on
            # (the proxy gives credit as Prometheus reads). AGENT_ERROR, so
            # that the target is not counted as timing out.
            received = self.fetch.received
            return self.answer.end(
                Outcome.AGENT_ERROR,
                f"the answer of target {where} ({received} bytes so far) waited"
                " for the proxy's credit: Prometheus read it more slowly than the target sent"
                f" it, past the {had:g}s deadline ({bound})",
            )
        reason = f"target {where} did not answer within {had:g}s ({bound}"
        if waited > 0:
            reason += f"; the scrape first waited {waited:g}s for a free slot"
        self.answer.end(Outcome.TIMED_OUT, reason + ")" + self.afterRetries())

    def _waitedTooLong(self) -> None:
        # AGENT_ERROR, not TIMED_OUT: the proxy answers TIMED_OUT with 408
        # and counts it as the target's timeout, blaming a target that was
        # never asked. What ran out is this agent's capacity, which
        # AGENT_ERROR's 503 says.
        self.answer.end(
            Outcome.AGENT_ERROR,
            f"waited {self.timeout:g}s for a free slot (agent.http.maxConcurrentClients"
            f" = {self.scraper.settings.max_concurrent_clients});"
            f" the target {redacted(self.pathConfig.url)} was not contacted",
        )

    def _end(self, kind: str) -> None:
        """
        Nothing more will be sent: stop the fetch, the timer, and give the
        slot back.
        """
        self.scraper.observer.scrapeEnded(kind, self.scraper.clock.seconds() - self._startedAt)
        for timer in (self._timer, self._retryTimer, self._clientTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._retryTimer = self._clientTimer = None
        if self.fetch is not None:
            self.fetch.stopProducing()
        self.done.callback(None)
        # Last: giving the slot back starts the next queued scrape at once.
        if self._waiting and self._slots is not None:
            self._waiting = False
            self._slots.leave(self._slotFree)
        elif self._holding and self._slots is not None:
            self._holding = False
            self._slots.release()
