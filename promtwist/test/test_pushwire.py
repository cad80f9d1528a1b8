"""
Tests for L{promtwist.proxy.pushwire}: the scrape request written into a
poll answer as PushProx's client reads it, and pushed answers as its client
writes them (Go's C{Response.Write}), hostile ones refused by name.
"""

from __future__ import annotations

from mmap import mmap

from twisted.trial.unittest import SynchronousTestCase

from promtwist.proxy.pushwire import (
    MAX_PUSH_HEAD_BYTES,
    MAX_PUSH_HEADERS,
    BadPush,
    ScrapeInstruction,
    parsePush,
)

ID = b"0123abcd-0000-4000-8000-0123456789ab"


class InstructionTests(SynchronousTestCase):
    def test_serialized(self) -> None:
        """
        An absolute-URI request line, C{Host} and C{User-Agent} first, the
        passed-on headers, C{Id} and the deadline; internal and hop-by-hop
        headers Prometheus sent are left out.
        """
        written = ScrapeInstruction(
            ID.decode(),
            "http://node:9100/metrics?a=b",
            "node:9100",
            (
                (b"Accept", b"text/plain"),
                (b"Proxy-Connection", b"keep-alive"),
                (b"Connection", b"close"),
                (b"X-Prometheus-Scrape-Timeout-Seconds", b"99"),
                (b"Id", b"forged"),
            ),
            9.5,
        ).serialize()
        lines = written.split(b"\r\n")
        self.assertEqual(lines[0], b"GET http://node:9100/metrics?a=b HTTP/1.1")
        self.assertEqual(lines[1], b"Host: node:9100")
        self.assertTrue(lines[2].startswith(b"User-Agent: promtwist/"))
        self.assertEqual(
            lines[3:],
            [
                b"Accept: text/plain",
                b"Id: " + ID,
                b"X-Prometheus-Scrape-Timeout-Seconds: 9.500",
                b"",
                b"",
            ],
        )

    def test_unsafeValue(self) -> None:
        """
        A value that would end its line is never written.
        """
        instruction = ScrapeInstruction(
            ID.decode(), "http://n:1/", "n:1", ((b"Accept", b"a\r\nEvil: 1"),), 1.0
        )
        self.assertRaises(ValueError, instruction.serialize)


class PushTests(SynchronousTestCase):
    def test_lengthFramed(self) -> None:
        """
        A body framed by its length; internal headers (C{Id}, the
        C{X-Prometheus-Scrape-Timeout} PushProx's client adds) and
        hop-by-hop ones are gone.
        """
        answer = parsePush(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nId: " + ID + b"\r\n"
            b"X-Prometheus-Scrape-Timeout: 4.99\r\nConnection: close\r\n"
            b"Content-Length: 3\r\n\r\nabc"
        )
        self.assertEqual((answer.scrapeId, answer.status, answer.body), (ID.decode(), 200, b"abc"))
        self.assertEqual(answer.headers, {b"content-type": b"text/plain", b"content-length": b"3"})

    def test_fromMapping(self) -> None:
        """
        A push read into the server's anonymous mapping parses as the same
        bytes do, a Go error push (rewritten on the way) among them.
        """
        for data in (
            b"HTTP/1.1 200 OK\r\nId: " + ID + b"\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/0.0 500 Internal Server Error\r\nId: " + ID + b"\r\n\r\nfailed",
        ):
            mapped = mmap(-1, len(data))
            mapped[:] = data
            self.assertEqual(parsePush(mapped), parsePush(data))

    def test_chunked(self) -> None:
        answer = parsePush(
            b"HTTP/1.1 200 OK\r\nId: " + ID + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        self.assertEqual(answer.body, b"abcde")

    def test_toTheEnd(self) -> None:
        """
        An answer of unknown length runs to the end of the push, as Go
        writes it.
        """
        answer = parsePush(b"HTTP/1.1 200 OK\r\nId: " + ID + b"\r\nConnection: close\r\n\r\nxyz")
        self.assertEqual(answer.body, b"xyz")

    def test_goErrorPush(self) -> None:
        """
        PushProx's client pushes its own failures as C{HTTP/0.0} (a Go
        response built without a version): read as HTTP/1.0.
        """
        answer = parsePush(
            b"HTTP/0.0 500 Internal Server Error\r\nId: " + ID + b"\r\n"
            b"X-Prometheus-Scrape-Timeout: 4.9\r\n\r\nscrape target doesn't match client fqdn"
        )
        self.assertEqual(answer.status, 500)
        self.assertEqual(answer.body, b"scrape target doesn't match client fqdn")

    def test_refused(self) -> None:
        """
        Each malformed push is refused naming what is wrong.
        """
        cases = [
            (b"junk\r\n\r\n", "not an HTTP response"),
            (b"HTTP/1.1 200 OK\r\n", "not complete"),
            (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000, f"over {MAX_PUSH_HEAD_BYTES} bytes"),
            (
                b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_PUSH_HEADERS + 1) + b"\r\n",
                "header lines",
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", "no Id header"),
            (b"HTTP/1.1 200 OK\r\nId: " + ID + b"\r\nId: " + ID + b"\r\n\r\n", "2 Id headers"),
            (b"HTTP/1.1 200 OK\r\nId: ../../etc\r\n\r\n", "is not a scrape id"),
            (b"HTTP/1.1 200 OK\r\nId: " + ID + b"\r\nContent-Length: 9\r\n\r\nab", "shorter"),
            (
                b"HTTP/1.1 200 OK\r\nId: " + ID + b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                "shorter",
            ),
            (
                b"HTTP/1.1 200 OK\r\nId: " + ID + b"\r\nContent-Length: 1\r\n\r\nab",
                "bytes follow",
            ),
            (
                b"HTTP/1.1 200 OK\r\nId: " + ID + b"\r\nContent-Length: 0\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nId: " + ID + b"\r\n",
                "bytes follow",
            ),
            (b"HTTP/1.1 200 OK\r\nId: " + ID + b"\r\nContent-Length: x\r\n\r\n", "not an HTTP"),
        ]
        for data, why in cases:
            with self.assertRaises(BadPush, msg=data[:80]) as caught:
                parsePush(data)
            self.assertIn(why, str(caught.exception), data[:80])
