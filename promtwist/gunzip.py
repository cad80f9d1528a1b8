"""
Provisional single-member gzip decoder; replaced by the complete one.
"""

from __future__ import annotations

import zlib

MiB = 1024 * 1024


class GunzipError(Exception):
    def __init__(self, message: str, status: int, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = kind


class Gunzip:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._total = 0

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._decoder.decompress(data, self.limit - self._total + 1)
        except zlib.error as e:
            raise GunzipError(f"invalid gzip body: {e}", 502, "invalid_gzip") from e
        return self._count(out)

    def finish(self) -> bytes:
        return self._count(self._decoder.flush())

    def _count(self, out: bytes) -> bytes:
        self._total += len(out)
        if self._total > self.limit or self._decoder.unconsumed_tail:
            raise GunzipError(
                f"decompressed body exceeds {self.limit // MiB} MiB"
                " (proxy.internal.maxUnzippedContentSizeMBytes)",
                413,
                "payload_too_large",
            )
        return out
