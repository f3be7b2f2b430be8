"""Images in requests: ``data:`` URLs and remote URLs checked against the operator's allowlist
(no server-side request forgery: no host outside it is ever contacted)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from .errors import ApiError, bad_request

logger = logging.getLogger("ray.serve")

_REMOTE_FETCH_TIMEOUT_S = 10.0


def decode_data_url(url: str, param: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:[<media type>];base64,<payload>`` URL.

    Raises:
        ApiError: 400 for a URL that is not base64 ``data:``, 413 above ``max_bytes``.
    """
    head, sep, payload = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise bad_request(f"{param} must be a base64 data URL like 'data:image/png;base64,...'", param, "invalid_image_url")
    # Refuse before decoding: base64 carries 3 bytes per 4 characters.
    if len(payload) * 3 // 4 - payload.count("=", -2) > max_bytes:
        raise ApiError(413, f"{param}: the image is larger than this server's limit of {max_bytes} bytes", param=param, code="image_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request(f"{param}: the data URL payload is not valid base64 ({error})", param, "invalid_base64") from None


def check_remote_url(url: str, param: str, allowed_hosts: Sequence[str]) -> None:
    """Refuse a remote URL unless its host is allowlisted (server-side request forgery).

    Raises:
        ApiError: 400 for a non-http(s) scheme or a host not in ``allowed_hosts``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise bad_request(f"{param}: unsupported URL scheme {parts.scheme!r}; send a data: URL", param, "invalid_image_url")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        raise bad_request(f"{param}: the URL has an invalid port", param, "invalid_image_url") from None
    candidates = {host} | ({f"{host}:{port}"} if port else set())
    if not candidates & set(allowed_hosts):
        raise bad_request(
            f"{param}: remote image URLs are disabled on this server (host {host!r} is not allowlisted); send the "
            "image inline as a data: URL, or have the operator allow the host (hired serve --allow-image-host "
            "HOST, ServeConfig.allowed_image_hosts)",
            param,
            "remote_image_disabled",
        )


async def fetch_remote_image(url: str, param: str, max_bytes: int) -> bytes:
    """GET an allowlisted image URL: no redirects, no proxies from the environment, size-capped."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=_REMOTE_FETCH_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            async with session.get(url, allow_redirects=False) as reply:
                if reply.status != 200:
                    raise bad_request(f"{param}: fetching the image returned HTTP {reply.status}", param, "image_fetch_failed")
                if (reply.content_length or 0) > max_bytes:
                    raise ApiError(413, f"{param}: the image is larger than {max_bytes} bytes", param=param, code="image_too_large")
                data = bytearray()
                async for chunk in reply.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > max_bytes:
                        raise ApiError(413, f"{param}: the image is larger than {max_bytes} bytes", param=param, code="image_too_large")
                return bytes(data)
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        raise bad_request(f"{param}: could not fetch the image ({type(error).__name__}: {error})", param, "image_fetch_failed") from None
