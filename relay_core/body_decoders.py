"""Incremental decoders of a response's `content-encoding`, for meters that read a stream on the side.

A stream sent compressed (an upstream that ignores `accept-encoding: identity`) is decompressed for
counting only: the client gets the compressed bytes as they came.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import brotli
import zstandard

DECODE_STEP_BYTES = 256 * 1024  # most decompressed bytes per step (gzip, deflate, br): no chunk balloons

Decoder = Callable[[bytes], Iterator[bytes]]


class _Zlib:
    """gzip (or zlib: wbits 47 detects either) and deflate, which servers send zlib-wrapped or raw (told apart
    by RFC 1950's header check on the first two bytes); consecutive gzip members are read one after another."""

    def __init__(self, deflate: bool) -> None:
        self._wbits = 47
        self._head = b""
        self._inflate: Any = None if deflate else zlib.decompressobj(self._wbits)

    def __call__(self, data: bytes) -> Iterator[bytes]:
        if self._inflate is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            zlib_header = data[0] & 0x0F == 8 and int.from_bytes(data[:2]) % 31 == 0
            self._wbits = 15 if zlib_header else -15
            self._inflate = zlib.decompressobj(self._wbits)
        while data:
            out = self._inflate.decompress(data, DECODE_STEP_BYTES)
            while out:
                yield out
                if len(out) < DECODE_STEP_BYTES and not self._inflate.unconsumed_tail:
                    break
                out = self._inflate.decompress(self._inflate.unconsumed_tail, DECODE_STEP_BYTES)
            data = self._inflate.unused_data if self._inflate.eof else b""
            if data:
                self._inflate = zlib.decompressobj(self._wbits)


class _Brotli:
    """A step may yield somewhat more than its limit; a full one means more output waits for empty input."""

    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def __call__(self, data: bytes) -> Iterator[bytes]:
        out = self._decompressor.process(data, output_buffer_limit=DECODE_STEP_BYTES)
        yield out
        while len(out) >= DECODE_STEP_BYTES or not self._decompressor.can_accept_more_data():
            out = self._decompressor.process(b"", output_buffer_limit=DECODE_STEP_BYTES)
            yield out


class _Zstd:
    """zstandard's streaming object has no output limit: a chunk's output is bounded only by zstd's own."""

    def __init__(self) -> None:
        self._decompressor = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def __call__(self, data: bytes) -> Iterator[bytes]:
        yield self._decompressor.decompress(data)


def _unreadable(encoding: str) -> Decoder:
    def refuse(data: bytes) -> Iterator[bytes]:
        raise ValueError(f"the usage meter cannot decode content-encoding {encoding!r}")

    return refuse


def body_decoder(content_encoding: str) -> Decoder | None:
    """An incremental decoder for a response's `content-encoding` (None: not encoded). One that cannot be
    read raises on the first chunk, so the stream goes on unmetered."""
    encoding = content_encoding.strip().lower()
    match encoding:
        case "" | "identity" | "none":
            return None
        case "gzip" | "x-gzip":
            return _Zlib(deflate=False)
        case "deflate":
            return _Zlib(deflate=True)
        case "br":
            return _Brotli()
        case "zstd":
            return _Zstd()
    return _unreadable(encoding)
