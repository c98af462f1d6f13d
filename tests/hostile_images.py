"""Hostile inputs shared by the server tests and the soak benchmark."""

from __future__ import annotations

import struct
import zlib


def png_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A valid RGB PNG of width x height black pixels, compressed ~1000:1 (a decompression bomb); with
    `rows`, only that many rows of pixel data follow the header."""
    raw = zlib.compress((b"\x00" + b"\x00" * 3 * width) * (height if rows is None else rows), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def ico_hiding(image: bytes, claimed: int = 16) -> bytes:
    """An ICO whose one directory entry says claimed x claimed while holding `image` (a PNG or a DIB)."""
    entry = struct.pack("<BBBBHHII", claimed, claimed, 0, 0, 1, 32, len(image), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + image


def dib_header(width: int, height: int) -> bytes:
    """A BMP icon's BITMAPINFOHEADER (its height counts the AND mask: twice the image) and no pixels."""
    return struct.pack("<IiiHHIIiiII", 40, width, 2 * height, 1, 32, 0, 0, 0, 0, 0, 0)
