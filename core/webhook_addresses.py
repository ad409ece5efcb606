"""Where a webhook may connect (SSRF guard): a URL's host is resolved once, with a time bound, and
every address it resolves to must be public; the sender then connects to those addresses only.

- Refused: loopback, private, link-local (cloud metadata), shared, reserved, unspecified and
  multicast addresses, and IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
  IPv4-compatible `::a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96` and
  `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`) when that IPv4 address is not public:
  a gateway on the path would deliver them to the IPv4 address (`64:ff9b::a00:1` is 10.0.0.1).
  (Python's `ipaddress` files `::/8`, NAT64's prefixes included, as reserved: those are refused
  whatever they carry: workers on an IPv6-only network behind NAT64/DNS64 cannot reach IPv4-only
  receivers.)
- One lookup: the sender connects to the addresses this returns (worker/webhook_http.py), with
  TLS SNI, certificate checks and Host for the name. A name whose answer changes between the
  check and the connection (DNS rebinding) therefore cannot move the connection elsewhere.
- getaddrinfo cannot be interrupted, so lookups run in a small pool of their own and the caller
  waits at most `timeout` seconds: a slow resolver holds a pool thread, never the API's or a
  sender's thread for longer than that. Answers that arrive late are dropped.
- Messages never carry the address a name resolved to: an internal DNS name's address is not
  the submitter's business.
"""

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048
LOOKUP_THREADS = 8  # lookups in flight per process; more wait (and time out) behind them

_lookups = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="digitq-dns")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefixes whose last 32 bits are an IPv4 address a translator or tunnel delivers to.
_EMBEDS_IPV4 = [
    ipaddress.IPv6Network(n)
    for n in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
]


class UnsafeURL(ValueError):
    """A webhook URL the service will not call; the message says why (no resolved address in it).

    `kind`: `invalid` (not an http(s) URL), `dns_error` (the host does not resolve) or
    `refused_address` (it resolves to a non-public address)."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


class SlowLookup(Exception):
    """The host's lookup did not answer within its time bound."""


@dataclass(frozen=True)
class Target:
    """A checked URL: its host and port, and the addresses the sender may connect to."""

    host: str
    port: int
    addresses: tuple[str, ...]


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, translated, NAT64, 6to4,
    Teredo server and client), which a gateway on the way may deliver to."""
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo:
        found += list(address.teredo)
    if any(address in net for net in _EMBEDS_IPV4):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public(address: IPAddress) -> bool:
    """Globally reachable unicast, and so is every IPv4 address it embeds."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return is_public(address.ipv4_mapped)  # ::ffff:a.b.c.d is a.b.c.d
    if (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_link_local
    ):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return all(is_public(v4) for v4 in embedded_ipv4(address))
    return True


def parse(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL, or UnsafeURL."""
    if len(url) > MAX_URL_CHARS:
        raise UnsafeURL(f"the URL has {len(url)} characters; at most {MAX_URL_CHARS}")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURL("an http:// or https:// URL with a host is needed")
    return parts.hostname, port


def _resolve(host: str, port: int, timeout: float) -> list[str]:
    future = _lookups.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=max(timeout, 0.001))
    except FutureTimeout:
        future.cancel()  # still queued: never run; running: its answer is dropped
        raise SlowLookup(f"no answer for {host!r} within {timeout:.1f} s") from None
    except (OSError, UnicodeError) as exc:
        raise UnsafeURL(f"its host {host!r} does not resolve ({exc})", "dns_error") from None
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


def check_url(url: str, allow_private: bool, timeout: float) -> Target:
    """The addresses `url` may be called at: UnsafeURL if any is not public (unless
    `allow_private`) or the host does not resolve; SlowLookup after `timeout` seconds."""
    host, port = parse(url)
    addresses = _resolve(host, port, timeout)
    if not allow_private and not all(is_public(ipaddress.ip_address(a)) for a in addresses):
        raise UnsafeURL(
            f"its host {host!r} resolves to a loopback, private, link-local or otherwise non-public "
            "address, which webhooks may not call (server-side request forgery)",
            "refused_address",
        )
    return Target(host, port, tuple(addresses))
