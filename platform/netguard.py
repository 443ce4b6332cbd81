"""Outbound URLs under a network policy: what a webhook (or a checkpoint fetched by URL) may reach.

A URL a user gives is resolved here and refused when any address is loopback, private, link-local,
multicast, reserved or unspecified (cloud metadata at 169.254.169.254 included), unless
``CVG_WEBHOOK_ALLOW_NETWORKS`` admits it; credentials inside a URL are refused. ``post`` connects to
the address that was checked (no DNS rebinding between check and connect), follows no redirect, and
reports failures without saying which internal port answered.
"""

from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

from convergence.platform.errors import InvalidInput, PolicyViolation
from convergence.platform.settings import get_settings

__all__ = ["Target", "check_url", "post", "refusal_reason"]


@dataclasses.dataclass(frozen=True)
class Target:
    """A URL that passed the policy, and the address it was checked at."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    address: str


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    raw = get_settings().webhook_allow_networks or ""
    try:
        return [ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise InvalidInput("CVG_WEBHOOK_ALLOW_NETWORKS must be comma-separated networks, e.g. 127.0.0.0/8,::1/128") \
            from None


def refusal_reason(address: str) -> str | None:
    """Why the policy refuses ``address`` (None: it may be reached)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if any(ip in net for net in _allowed_networks()):
        return None
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is {kind.replace('_', '-')}"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def _split(url: str) -> tuple[str, str, int, str]:
    if not isinstance(url, str) or len(url) > 2048 or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidInput("a URL must be http(s)://host/… of at most 2,048 printable characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise InvalidInput("a URL must be http(s)://host[:port]/…; this one does not parse") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput("a URL must be http(s)://host[:port]/…")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidInput("credentials inside a URL are refused: a webhook authenticates by its signature")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path


def check_url(url: str) -> Target:
    """Resolve the URL's host and check every address it resolves to; PolicyViolation names why not."""
    scheme, host, port, path = _split(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise InvalidInput(f"the host of {scheme}://{host[:100]} does not resolve") from None
    addresses = sorted({info[4][0] for info in infos})
    for address in addresses:
        why = refusal_reason(address)
        if why:
            raise PolicyViolation(f"refused by policy: {host[:100]} resolves to {why}",
                                  hint="CVG_WEBHOOK_ALLOW_NETWORKS admits internal networks on purpose")
    return Target(url, scheme, host, port, path, addresses[0])


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to the checked address, with the certificate checked against the URL's host name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int | None, str | None]:
    """POST under the policy, checked again now: (status, None) for 2xx, else (status or None, a reason that
    never tells which internal port answered). Redirects are answers, not followed."""
    try:
        target = check_url(url)
    except (InvalidInput, PolicyViolation) as exc:
        return None, exc.message
    conn = (_PinnedHTTPS if target.scheme == "https" else _PinnedHTTP)(target, timeout)
    try:
        conn.request("POST", target.path, body=body, headers=headers)
        status = conn.getresponse().status
    except TimeoutError:
        return None, "delivery failed (timeout)"
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return None, "delivery failed (connection error)"
    finally:
        conn.close()
    return status, None if 200 <= status < 300 else f"delivery failed (status {status})"
