"""Egress: the one way the gateway connects out (agents, upstreams, DID documents, webhooks, peers).

Policy (``Egress``): a destination is an ``http``/``https`` URL whose host resolves only to
addresses on the public internet. Refused unless the operator allows them (``--egress-allow``):
loopback, private (10/8, 172.16/12, 192.168/16), link-local (169.254/16, the cloud metadata
address included), shared 100.64/10, multicast, reserved, unspecified, IPv6 unique-local,
link-local and site-local, and anything IANA marks not globally reachable. An IPv4 address in an
IPv6 one (IPv4-mapped ``::ffff:a.b.c.d`` and NAT64 ``64:ff9b::/96``: the IPv4 address is what is
reached; 6to4 and Teredo: both are judged) and the legacy spellings ``socket`` accepts
(``2130706433``, ``0x7f.1``, ``017700000001``) are judged by the address they denote: so
``64:ff9b::a9fe:a9fe`` is refused as 169.254.169.254, and a DNS64 network's public names work.
Every address a name resolves to must pass, or none is used (one internal record refuses a name).

Allowances (``--egress-allow CIDR|HOST,...``, ``INTERLACE_EGRESS_ALLOW``): a network (``10.0.0.0/8``,
an address), a host name (exact, or ``.example.com`` for a domain: any address it resolves to),
``loopback`` (127/8 and ::1) or ``private`` (the RFC 1918 networks and fc00::/7); ``none`` allows
nothing. Unset, a gateway bound to loopback allows ``loopback`` (the quick start, whose agents
live on 127.0.0.1) and any other allows nothing. The hosts of the operator's own proxies
(``HTTP_PROXY``/``HTTPS_PROXY``) are allowed; a request through a proxy is checked without DNS
(scheme, literal addresses), the proxy resolves the name: use an egress proxy that checks it.

Mechanism: the address that was checked is the address dialled (no second resolution, so DNS
rebinding is closed); TLS SNI and certificate checks and the ``Host`` header keep the name.

* httpx (``Egress.httpx_client``): a transport whose connection pool dials through
  ``_PinnedBackend``, an httpcore network backend that resolves, checks and connects to the
  checked address; the pool stays keyed by host name, so a connection made for one name is never
  reused for another (which rewriting URLs to addresses would do).
* aiohttp (``Egress.aiohttp_session``, the hot paths: A2A, MCP upstreams, worker links): a
  resolver that returns only checked addresses (aiohttp dials what its resolver returns) and a
  client middleware, run for every request, that checks literal addresses (aiohttp never asks
  its resolver about those).

No redirect is followed: the httpx client is made with ``follow_redirects=False`` (and a hop
followed anyway would be a request like any other, checked again), the aiohttp middleware
refuses a 3xx (aiohttp follows by default). Every response that is not an event stream is
bounded to ``MAX_RESPONSE_BYTES`` and ``BODY_TIMEOUT_S`` of reading (event streams are bounded
per line by ``gateway.core.sse`` and by their callers' lifetimes).

Failures: a refusal is ``EgressRefused`` (an ``OSError``, which each library turns into its own
connection error), so callers treat it as any unreachable peer. What a client is told is
``UNREACHABLE``, the same text whatever happened (a refused port, an HTTP 404, a policy refusal:
telling them apart would make the gateway a port scanner); the detail goes to the log.

Traces: when tracing is on, every request carries the current trace context in its headers
(W3C ``traceparent``; ``gateway.core.tracing``), so the agents, upstreams and peers it reaches
continue the caller's trace.

Cost: one resolution and check per new connection (pooled connections are reused), plus a check
of literal addresses per request (microseconds).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiohttp.abc
import httpcore
import httpx

from gateway.core import tracing
from gateway.core.config import is_loopback

UNREACHABLE = "agent unreachable"
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
BODY_TIMEOUT_S = 60.0
REGISTRATION_RESOLVE_S = 2.0  # a name that does not resolve this fast is judged when it is dialled

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not private, not global either
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_NAMED = {
    "loopback": ("127.0.0.0/8", "::1/128"),
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),
    "none": (),
}
_NUMERIC = re.compile(r"[0-9a-fA-FxX.]+")  # what inet_aton may read as an IPv4 address
_REDIRECTS = (301, 302, 303, 307, 308)


class EgressRefused(OSError):
    """The policy refused a destination; the message is for the log, never for a client."""

    def __init__(self, why: str) -> None:
        super().__init__(f"egress refused: {why}")
        self.strerror = str(self)  # what aiohttp quotes of an OSError in its connection errors


class ResponseTooLarge(Exception):
    """A response body passed ``MAX_RESPONSE_BYTES``."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (in its order, without repeats)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def literal_address(host: str) -> Address | None:
    """The address a host written as one denotes (legacy IPv4 spellings included), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _NUMERIC.fullmatch(host) and not host.endswith("."):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _special(a: Address) -> str | None:
    """Why an address is not on the public internet (None: it is)."""
    for kind, flag in (
        ("unspecified", a.is_unspecified),
        ("loopback", a.is_loopback),
        ("link-local", a.is_link_local),
        ("multicast", a.is_multicast),
        ("private", a.is_private),
        ("reserved", a.is_reserved),
        ("shared (100.64/10)", a in _SHARED),
        ("site-local", isinstance(a, ipaddress.IPv6Address) and a.is_site_local),
    ):
        if flag:
            return kind
    return None if a.is_global else "not globally reachable"


def _dialled(a: Address) -> list[Address]:
    """The addresses a connection to ``a`` reaches: an IPv4-mapped or NAT64 address is its IPv4
    one (what a DNS64 resolver returns for every IPv4-only name); a 6to4 or Teredo address
    reaches both."""
    if not isinstance(a, ipaddress.IPv6Address):
        return [a]
    if a.ipv4_mapped is not None:
        return [a.ipv4_mapped]
    if any(a in net for net in _NAT64):
        return [ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)]
    out: list[Address] = [a]
    if a.sixtofour is not None:
        out.append(a.sixtofour)
    if a.teredo is not None:
        out.append(a.teredo[1])
    return out


class Egress:
    """The outbound policy of one gateway (or worker) and the clients that follow it."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        *,
        resolver: Resolver | None = None,
        proxies: dict[str, str] | None = None,
    ) -> None:
        self.allow = tuple(allow)
        self.resolver = resolver or system_resolver
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        hosts: set[str] = set()
        for entry in (e.strip() for e in self.allow):
            if not entry:
                continue
            if entry.lower() in _NAMED:
                networks += [ipaddress.ip_network(n) for n in _NAMED[entry.lower()]]
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry or ":" in entry or not entry.strip("."):
                    raise ValueError(f"--egress-allow: {entry!r} is neither a network nor a host name") from None
                hosts.add(entry.lower())
        # The environment's proxies (read once: aiohttp's trust_env re-reads it per request).
        self.proxies = urllib.request.getproxies_environment() if proxies is None else dict(proxies)
        for key, url in self.proxies.items():
            if key != "no" and urlsplit(url).hostname:
                hosts.add(urlsplit(url).hostname.lower())  # type: ignore[union-attr]
        self.networks, self.hosts = tuple(networks), frozenset(hosts)
        self._proxy_of: dict[tuple[str, str], str | None] = {}
        self._verdicts: dict[str, str | None] = {}

    @classmethod
    def from_config(cls, config: Any) -> Egress:
        """The policy of ``gateway.core.config.Config``: ``egress_allow``, else ``loopback`` on a loopback bind."""
        allow = config.egress_allow
        if allow is None:
            allow = ("loopback",) if is_loopback(config.host) else ()
        return cls(allow)

    def allowing(self, *urls_or_hosts: str | None) -> Egress:
        """This policy, with the hosts of these operator-given URLs (or host names) allowed too."""
        extra = [urlsplit(u if "://" in u else "//" + u).hostname or u for u in urls_or_hosts if u]
        return Egress((*self.allow, *extra), resolver=self.resolver, proxies=self.proxies)

    # ---- the checks ----------------------------------------------------------------------------

    def _host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.hosts or any(h.startswith(".") and host.endswith(h) for h in self.hosts)

    def refusal(self, address: Address) -> str | None:
        """Why the policy refuses to dial ``address`` (None: it may)."""
        for a in _dialled(address):
            why = _special(a)
            if why and not any(a.version == n.version and a in n for n in self.networks):
                return f"{a} is {why}" if a == address else f"{address} reaches {a}, which is {why}"
        return None

    def check_host(self, scheme: str, host: str | None) -> None:
        """The checks that need no DNS: the scheme, and a host written as an address."""
        if scheme not in ("http", "https"):
            raise EgressRefused(f"scheme {scheme!r} is not http or https")
        if not host:
            raise EgressRefused("the URL has no host")
        why = self._verdicts.get(host, False)  # this runs per request: a host is judged once
        if why is False:
            address = None if self._host_allowed(host) else literal_address(host)
            why = self.refusal(address) if address is not None else None
            if len(self._verdicts) > 4096:
                self._verdicts.clear()
            self._verdicts[host] = why
        if why:
            raise EgressRefused(why)

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        self.check_host(parts.scheme, parts.hostname)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to dial for ``host``, each checked; EgressRefused if any is refused."""
        literal = literal_address(host)
        if literal is not None:
            if not self._host_allowed(host) and (why := self.refusal(literal)):
                raise EgressRefused(why)
            return [str(literal)]
        found = await self.resolver(host, port)
        if not found:
            raise EgressRefused(f"{host} has no address")
        if not self._host_allowed(host):
            for text in found:
                if why := self.refusal(ipaddress.ip_address(text.split("%")[0])):
                    raise EgressRefused(f"{host} resolves to {text}: {why}")
        return found

    async def check_endpoint(self, url: str) -> None:
        """At registration: refuse a URL the policy will refuse when it is dialled, as far as can
        be told now (a literal address, or a name that resolves within a moment; one that does
        not resolve yet is judged at connect time)."""
        self.check_url(url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        if self._host_allowed(host) or literal_address(host) is not None or self.proxy_for(url):
            return
        try:
            async with asyncio.timeout(REGISTRATION_RESOLVE_S):
                await self.addresses(host, parts.port or (443 if parts.scheme == "https" else 80))
        except EgressRefused:
            raise
        except (OSError, TimeoutError, ValueError):
            return

    def proxy_for(self, url: str) -> str | None:
        """The proxy the environment names for ``url`` (NO_PROXY honoured), or None."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._proxy_of:
            proxy = self.proxies.get(parts.scheme)
            if proxy and urllib.request.proxy_bypass_environment(key[1], self.proxies):
                proxy = None
            if len(self._proxy_of) > 4096:
                self._proxy_of.clear()
            self._proxy_of[key] = proxy
        return self._proxy_of[key]

    # ---- clients -------------------------------------------------------------------------------

    def httpx_client(self, *, verify: Any = True, limits: httpx.Limits | None = None, **kw: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` (keyword arguments as httpx's) that follows this policy."""
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's defaults
        transport = _EgressTransport(self, verify=verify, limits=limits)
        return httpx.AsyncClient(transport=transport, follow_redirects=False, **kw)

    def aiohttp_session(
        self, url: str | None, *, limit: int = 100, keepalive_timeout: float = 15.0, timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientSession:
        """An ``aiohttp.ClientSession`` that follows this policy, through the proxy (if any) that
        the environment names for ``url`` (None: for many destinations, each request passes
        ``proxy=self.proxy_for(its URL)``)."""
        connector = aiohttp.TCPConnector(
            limit=limit, keepalive_timeout=keepalive_timeout, resolver=_AiohttpResolver(self)
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            proxy=self.proxy_for(url) if url else None,
            middlewares=(self._aiohttp_check,),
        )

    async def _aiohttp_check(self, request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        self.check_host(request.url.scheme, request.url.raw_host)
        tracing.inject_missing(request.headers)
        response = await handler(request)
        if response.status in _REDIRECTS:
            response.close()
            raise EgressRefused(f"{request.url} redirects (HTTP {response.status}), not followed")
        return response


# ---- bounded bodies ------------------------------------------------------------------------------


async def bounded(
    chunks: AsyncIterator[bytes], max_bytes: int | None = None, timeout_s: float | None = None
) -> AsyncIterator[bytes]:
    """``chunks``, until ``max_bytes`` (ResponseTooLarge) or ``timeout_s`` from now (TimeoutError);
    by default ``MAX_RESPONSE_BYTES`` and ``BODY_TIMEOUT_S``."""
    max_bytes = max_bytes or MAX_RESPONSE_BYTES
    deadline = asyncio.get_running_loop().time() + (timeout_s or BODY_TIMEOUT_S)
    it, total = aiter(chunks), 0
    while True:
        async with asyncio.timeout_at(deadline):
            chunk = await anext(it, None)
        if chunk is None:
            return
        total += len(chunk)
        if total > max_bytes:
            raise ResponseTooLarge(f"the response is larger than {max_bytes} bytes")
        yield chunk


async def read_body(chunks: AsyncIterator[bytes], max_bytes: int | None = None) -> bytes:
    """A whole response body, within the bounds of ``bounded``."""
    return b"".join([chunk async for chunk in bounded(chunks, max_bytes)])


# ---- httpx ---------------------------------------------------------------------------------------


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Dials the checked addresses of a host (in order, the first that answers) and nothing else."""

    def __init__(self, egress: Egress) -> None:
        self.egress, self.inner = egress, httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.egress.addresses(host, port)
        except EgressRefused as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        failure: Exception | None = None
        for address in addresses:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            try:
                return await self.inner.connect_tcp(address, port, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(self, *args: Any, **kw: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError(str(EgressRefused("unix sockets are not an egress destination")))

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _BoundedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self.stream, self.request = stream, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in bounded(self.stream):  # type: ignore[arg-type]
                yield chunk
        except ResponseTooLarge as exc:
            raise httpx.ReadError(str(exc), request=self.request) from None
        except TimeoutError:
            raise httpx.ReadTimeout(
                f"reading the response took over {BODY_TIMEOUT_S:g} s", request=self.request
            ) from None

    async def aclose(self) -> None:
        await self.stream.aclose()


class _EgressTransport(httpx.AsyncBaseTransport):
    """Checks each request (each hop of a redirect too), sends it over a pinned pool (direct, or
    the proxy's), bounds the body."""

    def __init__(self, egress: Egress, **kw: Any) -> None:
        self.egress, self.kw = egress, kw
        self.direct = self._pinned(None)
        self.proxied: dict[str, httpx.AsyncHTTPTransport] = {}

    def _pinned(self, proxy: str | None) -> httpx.AsyncHTTPTransport:
        transport = httpx.AsyncHTTPTransport(proxy=proxy, trust_env=False, **self.kw)
        # httpx takes no network backend; its pool (httpcore's, which does) dials through ours.
        transport._pool._network_backend = _PinnedBackend(self.egress)
        return transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            self.egress.check_host(request.url.scheme, request.url.host)
        except EgressRefused as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        tracing.inject_missing(request.headers)
        proxy = self.egress.proxy_for(str(request.url)) if self.egress.proxies else None
        if proxy is None:
            transport = self.direct
        elif (transport := self.proxied.get(proxy)) is None:
            transport = self.proxied[proxy] = self._pinned(proxy)
        response = await transport.handle_async_request(request)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.stream = _BoundedStream(response.stream, request)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        for transport in (self.direct, *self.proxied.values()):
            await transport.aclose()


# ---- aiohttp -------------------------------------------------------------------------------------


class _AiohttpResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver: a name's checked addresses, or EgressRefused (a connection error)."""

    def __init__(self, egress: Egress) -> None:
        self.egress = egress

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[dict[str, Any]]:
        out = []
        for address in await self.egress.addresses(host, port):
            kind = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family in (socket.AF_UNSPEC, kind):
                out.append({"hostname": host, "host": address, "port": port, "family": kind, "proto": 0, "flags": 0})
        if not out:
            raise EgressRefused(f"{host} has no address of the family asked for")
        return out

    async def close(self) -> None:
        pass
