#!/usr/bin/env python3
"""
A small HTTP/1.1 load generator for bench.py, in its own process, printing
one JSON line of results.

    openloop.py rate HOST:PORT TARGET --rate 200 --duration 20 [-H 'Name: value' ...]
    openloop.py closed HOST:PORT TARGET --concurrency 8 --duration 5

C{rate} is open loop: request I is due at C{start + I / rate}, whatever
happened to earlier ones, and its latency is measured from that scheduled
moment, so a slow answer cannot hold back (and hide) the requests behind it
(no coordinated omission). A due request takes an idle keep-alive connection,
or opens a new one when all are busy. C{closed} is what wrk does, for when wrk
is not installed: C{concurrency} connections, each sending its next request
when the last answer arrived.

TARGET is the request target: a path, or an absolute URI (C{http://host:port/
path}) to send to an HTTP proxy such as PushProx's; then C{--host} gives the
Host header. The generator does the same work per request on every route:
one prepared request written, the answer parsed by httptools (the body counted,
not kept), so subtracting the direct route's figures removes its own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time

import httptools


class Answer(Exception):
    """
    A request that failed: not 2xx, or the connection broke.
    """


class Connection:
    """
    One keep-alive connection: sends a prepared request and reads one
    answer with httptools, counting the body's bytes.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.bodyBytes = 0
        self.complete = False
        self.status = 0
        self.keepAlive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self.bodyBytes += len(body)

    def on_headers_complete(self) -> None:
        # Asked here: once the message is complete llhttp no longer says.
        self.status = self.parser.get_status_code()
        self.keepAlive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True

    async def request(self, data: bytes) -> int:
        """
        Send C{data}, read the whole answer.

        @return: the body's length.
        @raise Answer: on a non-2xx status or a broken connection.
        """
        self.bodyBytes = 0
        self.complete = False
        self.writer.write(data)
        while not self.complete:
            chunk = await self.reader.read(262144)
            if not chunk:
                raise Answer("connection closed")
            try:
                self.parser.feed_data(chunk)
            except httptools.HttpParserError as e:
                raise Answer(f"bad answer: {e}") from None
        if not 200 <= self.status < 300:
            raise Answer(f"HTTP {self.status}")
        if not self.keepAlive:
            raise Answer("not keep-alive")
        return self.bodyBytes

    def close(self) -> None:
        self.writer.close()


def percentile(sortedValues: list[float], p: float) -> float:
    """
    The nearest-rank C{p}th percentile of C{sortedValues} (NaN when empty).
    """
    if not sortedValues:
        return float("nan")
    k = max(0, min(len(sortedValues) - 1, math.ceil(p / 100 * len(sortedValues)) - 1))
    return sortedValues[k]


def prepare(target: str, host: str, headers: list[str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def openLoop(
    host: str, port: int, data: bytes, rate: float, duration: float, warmup: float
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    idle: list[Connection] = []
    latencies: list[float] = []
    lags: list[float] = []
    errors: dict[str, int] = {}
    opened = 0

    async def one(due: float, record: bool) -> None:
        nonlocal opened
        conn: Connection | None = None
        try:
            if idle:
                conn = idle.pop()
            else:
                opened += 1
                conn = Connection(*await asyncio.open_connection(host, port))
            if record:
                lags.append(loop.time() - due)
            await conn.request(data)
        except (Answer, OSError) as e:
            errors[str(e)] = errors.get(str(e), 0) + 1
            if conn is not None:
                conn.close()
            return
        if record:
            latencies.append(loop.time() - due)
        idle.append(conn)

    tasks: set[asyncio.Task[None]] = set()
    total = int((warmup + duration) * rate)
    warm = int(warmup * rate)
    start = loop.time() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(due, i >= warm))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=15)
        if pending:
            errors["no answer within 15 s of the last request"] = len(pending)
    for conn in idle:
        conn.close()
    latencies.sort()
    lags.sort()
    return {
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "connections": opened,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] if latencies else math.nan) * 1000,
        "lag_p99_ms": percentile(lags, 99) * 1000,
        "latencies_ms": [round(x * 1000, 4) for x in latencies],
    }


async def closedLoop(
    host: str, port: int, data: bytes, concurrency: int, duration: float
) -> dict[str, object]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    end = time.monotonic() + duration

    async def worker() -> None:
        conn: Connection | None = None
        while time.monotonic() < end:
            t = time.monotonic()
            try:
                if conn is None:
                    conn = Connection(*await asyncio.open_connection(host, port))
                await conn.request(data)
            except (Answer, OSError) as e:
                errors[str(e)] = errors.get(str(e), 0) + 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            latencies.append(time.monotonic() - t)
        if conn is not None:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["rate", "closed"])
    parser.add_argument("connect", help="HOST:PORT to connect to")
    parser.add_argument("target", help="request target: a path or an absolute URI")
    parser.add_argument("--host", help="Host header (default: HOST:PORT)")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=1, help="rate: seconds not recorded")
    parser.add_argument("-H", dest="headers", action="append", default=[])
    args = parser.parse_args()
    host, _, port = args.connect.rpartition(":")
    data = prepare(args.target, args.host or args.connect, args.headers)
    if args.kind == "rate":
        result = asyncio.run(openLoop(host, int(port), data, args.rate, args.duration, args.warmup))
    else:
        result = asyncio.run(closedLoop(host, int(port), data, args.concurrency, args.duration))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
