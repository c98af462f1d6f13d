"""Request images as A1111 takes them (raw base64, a data URL, or an http(s) URL when enabled), within limits.

A1111 answers every undecodable image with 500 "Invalid encoded image", and URL refusals with 500 too;
clients match on those, so they are kept. Oversized images get 413 before their pixels are decoded:
Pillow reads the header lazily, so a decompression bomb is refused from its declared size.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from runtime.preprocess import to_rgb

INVALID_IMAGE = "Invalid encoded image"
URL_READ_TIMEOUT_S = 5  # the longest a URL may leave one read waiting
URL_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ImagePolicy:
    max_pixels: int = 40_000_000
    max_url_bytes: int = 32 * 1024 * 1024
    allow_urls: bool = False  # A1111's api_enable_requests (there on by default; here off)
    allow_local_urls: bool = False  # the inverse of A1111's api_forbid_local_requests
    url_timeout_s: float = 30.0  # the whole download, however slowly the bytes trickle


def decode_image(encoding: str, policy: ImagePolicy) -> Image.Image:
    """An RGB image from a request's `image` field, or an ApiError saying what was wrong."""
    text = encoding.strip()
    if text.startswith(("http://", "https://")):
        return _open(_fetch(text, policy), policy, "Invalid image url")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise HTTPException(500, INVALID_IMAGE)
    return _open(_b64decode(text), policy, INVALID_IMAGE)


def open_image_bytes(data: bytes, policy: ImagePolicy) -> Image.Image:
    """An RGB image from raw file bytes, within the same limits as a request's image."""
    return _open(data, policy, INVALID_IMAGE)


def _b64decode(text: str) -> bytes:
    """Lenient as A1111's base64.b64decode: whitespace and stray characters dropped; padding is added
    when missing and URL-safe characters are accepted too."""
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact.rstrip("=")) % 4)
    try:
        return base64.b64decode(compact)
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(500, INVALID_IMAGE) from exc


def _open(data: bytes, policy: ImagePolicy, invalid: str) -> Image.Image:
    if not data:
        raise HTTPException(500, invalid)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > policy.max_pixels:
                raise HTTPException(413, _too_large(width, height, policy))
            image.load()
            return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"Image too large: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise HTTPException(500, invalid) from exc


def _too_large(width: int, height: int, policy: ImagePolicy) -> str:
    return f"Image too large: {width}x{height} is {width * height:,} pixels, the limit is {policy.max_pixels:,}"


def _fetch(url: str, policy: ImagePolicy) -> bytes:
    if not policy.allow_urls:
        raise HTTPException(500, "Requests not allowed")
    opener = urllib.request.build_opener(_CheckedRedirects(policy))
    deadline = time.monotonic() + policy.url_timeout_s
    received = bytearray()
    try:
        _check_url(url, policy)
        with opener.open(
            urllib.request.Request(url), timeout=min(URL_READ_TIMEOUT_S, policy.url_timeout_s)
        ) as response:
            # read1: whatever has arrived, so a server that trickles a byte at a time meets the deadline
            while chunk := response.read1(URL_CHUNK):
                received += chunk
                if len(received) > policy.max_url_bytes:
                    raise HTTPException(413, f"Image at the URL is over {policy.max_url_bytes:,} bytes")
                if time.monotonic() > deadline:
                    raise HTTPException(500, f"Invalid image url: not downloaded within {policy.url_timeout_s:g} s")
    except HTTPException:
        raise
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise HTTPException(500, "Invalid image url") from exc
    return bytes(received)


def _check_url(url: str, policy: ImagePolicy) -> None:
    """A1111's rule: every address the host name resolves to must be global, unless local is allowed.
    URLs that parsers read differently (control characters, spaces, backslashes, user@host) are refused
    first: `http://127.0.0.1:7861\\@1.1.1.1/` must not be checked as one host and fetched from another."""
    parts = urlsplit(url)
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in url) or "@" in parts.netloc:
        raise HTTPException(500, "Invalid image url")
    if policy.allow_local_urls:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname or "", None)}
    except (socket.gaierror, UnicodeError, ValueError):
        addresses = set()
    if not addresses or not all(_global(ipaddress.ip_address(a.split("%")[0])) for a in addresses):
        raise HTTPException(500, "Request to local resource not allowed")


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

    def __init__(self, policy: ImagePolicy) -> None:
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if not newurl.startswith(("http://", "https://")):
            raise HTTPException(500, "Invalid image url")
        _check_url(newurl, self.policy)
        return super().redirect_request(req, fp, code, msg, headers, newurl)
