"""Request images as A1111 takes them (raw base64, a data URL, or an http(s) URL when enabled), within limits.

A1111 answers every undecodable image with 500 "Invalid encoded image", and URL refusals with 500 too;
clients match on those, so they are kept. Oversized images get 413 before their pixels are decoded:
Pillow reads the header lazily, so a decompression bomb is refused from its declared size. ICO and CUR,
whose directory may understate the images they hold and which Pillow decodes while opening, are measured
from each embedded image's own header first; REFUSED_FORMATS are not opened at all.
"""

from __future__ import annotations

import binascii
import http.client
import io
import ipaddress
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pybase64
from PIL import Image, UnidentifiedImageError

from runtime.errors import ImageTooLarge, InvalidImage
from runtime.preprocess import MAX_IMAGE_PIXELS, to_rgb

INVALID_IMAGE = "Invalid encoded image"
URL_READ_TIMEOUT_S = 5  # the longest a URL may leave one read waiting
URL_CHUNK = 64 * 1024
# ICNS: Pillow decodes its largest icon while opening, and its true size is known only then.
# EPS: Pillow runs Ghostscript, an interpreter, on the bytes (where Ghostscript is installed).
REFUSED_FORMATS = frozenset({"ICNS", "EPS"})


@dataclass(frozen=True)
class ImagePolicy:
    max_pixels: int = MAX_IMAGE_PIXELS
    max_url_bytes: int = 32 * 1024 * 1024
    allow_urls: bool = False  # A1111's api_enable_requests (there on by default; here off)
    allow_local_urls: bool = False  # the inverse of A1111's api_forbid_local_requests
    url_timeout_s: float = 30.0  # the whole download, however slowly the bytes trickle


Draft = Callable[[Image.Image], None]  # called on an opened image before its pixels are decoded


def decode_image(encoding: str, policy: ImagePolicy, draft: Draft | None = None) -> Image.Image:
    """An RGB image from a request's `image` field, or an ApiError saying what was wrong. `draft` (the
    runtime's ClipRuntime.draft) may ask a JPEG's decoder for a reduced scale."""
    text = encoding.strip()
    if text.startswith(("http://", "https://")):
        return _open(_fetch(text, policy), policy, "Invalid image url", draft)
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise InvalidImage(INVALID_IMAGE)
    return _open(_b64decode(text), policy, INVALID_IMAGE, draft)


def open_image_bytes(data: bytes, policy: ImagePolicy, draft: Draft | None = None) -> Image.Image:
    """An RGB image from raw file bytes, within the same limits as a request's image."""
    return _open(data, policy, INVALID_IMAGE, draft)


def _b64decode(text: str) -> bytes:
    """Lenient as A1111's base64.b64decode: whitespace and stray characters dropped; padding is added
    when missing and URL-safe characters are accepted too. Clean base64 (what clients send) takes
    pybase64's SIMD decoder alone (2 ms for a 12 MP JPEG where binascii takes 15); the lenient path
    copies the string a few times."""
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact.rstrip("=")) % 4)
    try:
        return pybase64.b64decode(compact)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(INVALID_IMAGE) from exc


def _open(data: bytes, policy: ImagePolicy, invalid: str, draft: Draft | None) -> Image.Image:
    if not data:
        raise InvalidImage(invalid)
    if data.startswith(ICON_MAGICS):
        width, height = _largest_icon(data)
        if width * height > policy.max_pixels:
            raise ImageTooLarge(_too_large(width, height, policy))
    Image.init()  # registers every plugin, once: the list below is then complete
    try:
        with Image.open(io.BytesIO(data), formats=[f for f in Image.OPEN if f not in REFUSED_FORMATS]) as image:
            width, height = image.size
            if width * height > policy.max_pixels:
                raise ImageTooLarge(_too_large(width, height, policy))
            if draft is not None:
                draft(image)
            image.load()
            return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"Image too large: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(invalid) from exc


ICON_MAGICS = (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")  # ICO, CUR: the same directory
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _largest_icon(data: bytes) -> tuple[int, int]:
    """The largest image an ICO or CUR holds, by the embedded PNG's IHDR or BMP's DIB header (the directory's
    own 1-byte sizes say nothing true: a 12000x12000 PNG may sit behind an entry saying 16x16)."""
    count = int.from_bytes(data[4:6], "little")
    largest = (0, 0)
    for entry in range(count):
        record = data[6 + 16 * entry : 22 + 16 * entry]
        if len(record) < 16:
            break
        offset = int.from_bytes(record[12:16], "little")
        header = data[offset : offset + 24]
        if header.startswith(PNG_MAGIC):
            width, height = struct.unpack(">II", header[16:24])
        elif len(header) >= 12:
            width, height = struct.unpack("<ii", header[4:12])
            width, height = abs(width), abs(height) // 2  # a DIB icon's height counts its AND mask too
        else:
            continue
        largest = max(largest, (width, height), key=lambda size: size[0] * size[1])
    return largest


def _too_large(width: int, height: int, policy: ImagePolicy) -> str:
    return f"Image too large: {width}x{height} is {width * height:,} pixels, the limit is {policy.max_pixels:,}"


def _fetch(url: str, policy: ImagePolicy) -> bytes:
    if not policy.allow_urls:
        raise InvalidImage("Requests not allowed")
    checked: dict[str, str] = {}  # host name -> the address its check passed: the one connected to
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),  # a proxy would resolve the name itself, past the check
        _PinnedHTTPHandler(checked),
        _PinnedHTTPSHandler(checked),
        _CheckedRedirects(policy, checked),
    )
    deadline = time.monotonic() + policy.url_timeout_s
    received = bytearray()
    try:
        _check_url(url, policy, checked)
        with opener.open(
            urllib.request.Request(url), timeout=min(URL_READ_TIMEOUT_S, policy.url_timeout_s)
        ) as response:
            # read1: whatever has arrived, so a server that trickles a byte at a time meets the deadline
            while chunk := response.read1(URL_CHUNK):
                received += chunk
                if len(received) > policy.max_url_bytes:
                    raise ImageTooLarge(f"Image at the URL is over {policy.max_url_bytes:,} bytes")
                if time.monotonic() > deadline:
                    raise InvalidImage(f"Invalid image url: not downloaded within {policy.url_timeout_s:g} s")
    except InvalidImage:
        raise
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise InvalidImage("Invalid image url") from exc
    return bytes(received)


def _check_url(url: str, policy: ImagePolicy, checked: dict[str, str]) -> None:
    """A1111's rule: every address the host name resolves to must be global, unless local is allowed.
    URLs that parsers read differently (control characters, spaces, backslashes, user@host) are refused
    first: `http://127.0.0.1:7861\\@1.1.1.1/` must not be checked as one host and fetched from another.
    The checked address is recorded in `checked`, and the connection goes there: a name resolved a second
    time could answer otherwise (DNS rebinding)."""
    parts = urlsplit(url)
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in url) or "@" in parts.netloc:
        raise InvalidImage("Invalid image url")
    if policy.allow_local_urls:
        return
    host = (parts.hostname or "").lower()
    try:
        addresses = [info[4][0] for info in socket.getaddrinfo(host, None)]
    except (socket.gaierror, UnicodeError, ValueError):
        addresses = []
    if not addresses or not all(_global(ipaddress.ip_address(a.split("%")[0])) for a in addresses):
        raise InvalidImage("Request to local resource not allowed")
    checked[host] = addresses[0]


def _pinned(connection_class: type[http.client.HTTPConnection], checked: dict[str, str]) -> Any:
    """`connection_class`, connecting to the address recorded for its host (TLS still names the host)."""

    def connect_to_checked(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        connection = connection_class(host, **kwargs)
        create = connection._create_connection  # http.client's own hook for how the socket is made

        def create_connection(address: tuple[str, int], *args: Any) -> socket.socket:
            return create((checked.get(address[0].lower(), address[0]), address[1]), *args)

        connection._create_connection = create_connection
        return connection

    return connect_to_checked


class _PinnedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, checked: dict[str, str]) -> None:
        super().__init__()
        self.connection = _pinned(http.client.HTTPConnection, checked)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req)


class _PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, checked: dict[str, str]) -> None:
        super().__init__()
        self.connection = _pinned(http.client.HTTPSConnection, checked)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req, context=self._context)


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _global(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global, and so is any IPv4 address it carries (IPv4-mapped, NAT64 64:ff9b::/96, 6to4)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in NAT64:
            return _global(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return _global(embedded)
    return address.is_global


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a new request: its target passes the same address check."""

    def __init__(self, policy: ImagePolicy, checked: dict[str, str]) -> None:
        self.policy = policy
        self.checked = checked

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if not newurl.startswith(("http://", "https://")):
            raise InvalidImage("Invalid image url")
        _check_url(newurl, self.policy, self.checked)
        return super().redirect_request(req, fp, code, msg, headers, newurl)
