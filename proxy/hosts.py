"""The `Host` a request names, checked as Ollama checks it while it listens on loopback.

Ollama's allowedHostsMiddleware (server/routes.go), behind its CORS middleware on every
route, protects a server bound to a loopback address from DNS rebinding: a page on
another site whose name the attacker re-points at 127.0.0.1 reaches it with the
attacker's name in `Host`. Unless the listener's address is loopback the check is off.
On, a request passes when its host (`Host`, or an absolute target's authority, as Go
reads them; without a port, as Go's net.SplitHostPort splits it, else the whole value)
is an IP address that is loopback, private or unspecified (Go's netip rules), or empty,
`localhost`, the machine's own hostname, or a name under .localhost, .local or
.internal; an `OPTIONS` for one of those names is answered 204 there; any other host
gets 403 with an empty body.

The proxy forwards with the backend's own address in `Host`, so a backend on loopback
cannot see what the client named: the proxy applies Ollama's rule itself while it
listens on loopback (`listen.host`), before any handler, after the CORS check as Ollama
does. Ollama also admits the address of any local interface; the proxy admits those
the private and loopback rules cover.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import socket

from aiohttp import hdrs, web

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
# Go's netip.Addr.IsPrivate: RFC 1918 and RFC 4193 (Python's is_private is wider).
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def listens_on_loopback(host: str) -> bool:
    """Whether the proxy's listener (`listen.host`) is a loopback address: every
    address the name resolves to is (an empty host or 0.0.0.0 listens everywhere)."""
    try:
        infos = socket.getaddrinfo(host or None, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def split_host_port(value: str) -> str | None:
    """Go's net.SplitHostPort's host, None where it fails."""
    colon = value.rfind(":")
    if colon < 0:
        return None  # missing port
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or end + 1 != colon:
            return None  # missing ']', missing port, too many colons
        host, rest_from = value[1:end], end + 1
    else:
        host, rest_from = value[:colon], 0
        if ":" in host:
            return None  # too many colons
    if "[" in value[1:] or "]" in value[rest_from:]:
        return None  # unexpected '[' or ']'
    return host


def _local_address(host: str) -> bool:
    """Go's netip.ParseAddr then IsLoopback, IsPrivate or IsUnspecified (an IPv4
    address mapped into IPv6 counts as that IPv4 address); False for no address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_unspecified
        or any(address in network for network in _PRIVATE)
    )


def request_host(request: web.BaseRequest) -> str:
    """The request's host as Go's net/http sets `Request.Host`, which Ollama checks: an
    absolute target's authority without its userinfo (`GET http://host/path`; the
    Host line is then ignored), else the Host line."""
    target = request.raw_path  # the target as sent
    if not target.startswith("/"):
        _, scheme_ends, rest = target.partition("://")
        if scheme_ends:
            authority = rest.partition("?")[0].partition("/")[0]
            return authority.rpartition("@")[2]
    return request.headers.get(hdrs.HOST, "")


class Verdict(enum.Enum):
    REFUSED = 0
    ADDRESS = 1  # a local address: passes, whatever the method
    NAME = 2  # a local name: passes, and an OPTIONS for it is answered 204


@functools.lru_cache(maxsize=1024)
def verdict(value: str, hostname: str) -> Verdict:
    """What Ollama's rule says of a `Host` header's value on a machine named
    `hostname`. Cached: a client names the same host on every request, and parsing it
    as an address is most of the check's cost."""
    host = split_host_port(value)
    if host is None:
        host = value
    if _local_address(host):
        return Verdict.ADDRESS
    host = host.lower()
    if host in ("", "localhost", hostname) or host.endswith(_LOCAL_SUFFIXES):
        return Verdict.NAME
    return Verdict.REFUSED


class HostCheck:
    """Ollama's allowedHostsMiddleware, for a proxy listening on `listen_host`."""

    def __init__(self, listen_host: str) -> None:
        self.active = listens_on_loopback(listen_host)
        self._hostname = socket.gethostname().lower()

    def refusal(self, request: web.BaseRequest) -> web.Response | None:
        """None when the request may go on (always, unless on loopback)."""
        if not self.active:
            return None
        found = verdict(request_host(request), self._hostname)
        if found is Verdict.ADDRESS:
            return None
        if found is Verdict.NAME:
            if request.method == hdrs.METH_OPTIONS:
                return web.Response(status=204)
            return None
        return web.Response(status=403)
