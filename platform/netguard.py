"""Outbound URLs under a network policy: what a webhook (or a checkpoint fetched by URL) may reach.

A URL a user gives is resolved here and refused when any address is loopback, private, link-local,
site-local, multicast, reserved or unspecified (cloud metadata at 169.254.169.254 included; IPv4-mapped and
6to4 addresses by the IPv4 address they carry), unless ``CVG_WEBHOOK_ALLOW_NETWORKS`` admits it; credentials
inside a URL are refused. ``post`` and ``fetch`` connect to the address that was checked (no DNS rebinding
between check and connect; TLS still verifies the URL's host name), follow no redirect, and report failures
without saying which internal port answered. Platform code: governance's webhooks and anchors call it.
"""

from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import socket
import ssl
from urllib.parse import quote, urlsplit

from convergence.platform.errors import InvalidInput, PolicyViolation, Unavailable
from convergence.platform.settings import get_settings

__all__ = ["Target", "check_url", "fetch", "post", "refusal_reason"]

# A request line is ASCII: anything else in a path is sent percent-encoded (as UTF-8), never a crash.
_PRINTABLE = "".join(chr(c) for c in range(33, 127))


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


def _carried(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The address and any IPv4 address it carries (6to4, Teredo): a relay delivers to those too."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return [ip]
    return [ip, *(v4 for v4 in (ip.sixtofour, *(ip.teredo or ())) if v4 is not None)]


def _internal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What makes ``ip`` internal (loopback, private, …), or None for a public address."""
    for kind in ("loopback", "link_local", "site_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}", False):
            return kind.replace("_", "-")
    return None if ip.is_global else "not a public address"


def refusal_reason(address: str) -> str | None:
    """Why the policy refuses ``address`` (None: it may be reached)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    allowed = _allowed_networks()
    for each in _carried(ip):
        why = None if any(each.version == net.version and each in net for net in allowed) else _internal(each)
        if why:
            return f"{ip} is {why}" if each == ip else f"{ip} carries {each}, which is {why}"
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
    if port == 0:
        raise InvalidInput("a URL's port must be 1 to 65535")
    path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_PRINTABLE)
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
            named = "" if host == address else f" ({host[:100]} resolves to it)"
            raise PolicyViolation(f"refused by policy: {why}{named}",
                                  hint="CVG_WEBHOOK_ALLOW_NETWORKS admits internal networks on purpose")
    return Target(url, scheme, host, port, path, addresses[0])


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to the checked address, with the certificate checked against the URL's host name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()  # a failed handshake leaves no socket open
            raise


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def _exchange(target: Target, method: str, body: bytes | None, headers: dict[str, str], timeout: float,
              limit: int) -> tuple[int, bytes]:
    """One request to the checked address; (status, at most ``limit`` bytes of the answer's body)."""
    conn = (_PinnedHTTPS if target.scheme == "https" else _PinnedHTTP)(target, timeout)
    try:
        conn.request(method, target.path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(limit) if limit else b""
    finally:
        conn.close()


def _failure(exc: BaseException) -> str:
    """What a transport failure may say: timeout or connection error, never the errno behind it."""
    return "timeout" if isinstance(exc, TimeoutError) else "connection error"


_TRANSPORT = (OSError, http.client.HTTPException, ssl.SSLError, UnicodeError)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int | None, str | None]:
    """POST under the policy, checked again now: (status, None) for 2xx, else (status or None, a reason that
    never tells which internal port answered). Redirects are answers, not followed."""
    try:
        target = check_url(url)
    except (InvalidInput, PolicyViolation) as exc:
        return None, exc.message
    try:
        status, _ = _exchange(target, "POST", body, headers, timeout, 0)
    except _TRANSPORT as exc:
        return None, f"delivery failed ({_failure(exc)})"
    return status, None if 200 <= status < 300 else f"delivery failed (status {status})"


def fetch(url: str, *, limit: int, timeout: float = 10.0) -> bytes:
    """GET a small document (a published checkpoint) under the same policy; anything but a 200 within
    ``limit`` bytes is Unavailable, a refused address PolicyViolation."""
    target = check_url(url)
    try:
        status, data = _exchange(target, "GET", None, {"User-Agent": "convergence"}, timeout, limit + 1)
    except _TRANSPORT as exc:
        raise Unavailable(f"cannot fetch {url}: {_failure(exc)}") from None
    if status != 200:
        raise Unavailable(f"cannot fetch {url}: status {status}")
    if len(data) > limit:
        raise Unavailable(f"cannot fetch {url}: larger than {limit:,} bytes")
    return data
