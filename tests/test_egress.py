"""The egress policy (gateway/core/egress.py) and the review's probes P6-P10 as regressions.

No packet leaves loopback: names resolve through a table each test injects (``Names``), and
loopback listeners (``Listener``) record every connection they accept, so "nothing connected"
is an empty list, not an absence of evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import httpx
import pytest
from anp.authentication.http_signatures import generate_http_signature_headers

from gateway.app import create_app
from gateway.cli import build_parser
from gateway.core import egress as egress_module
from gateway.core.config import Config
from gateway.core.egress import UNREACHABLE, Egress, EgressRefused, ResponseTooLarge, literal_address, read_body
from gateway.core.sse import LineTooLong, read_events
from protocols.a2a.connector import A2AConnector
from protocols.acp.connector import ACPConnector
from protocols.anp.client import ANPSigner
from protocols.anp.connector import ANPConnector
from protocols.mcp.connector import MCPConnector
from registry.identity import Identity
from registry.records import sign
from schemas import Message, TaskState, TextPart
from schemas.agent_record import record_from_card
from tests.conftest import free_port, running_gateway, serve_app, test_config, wait_until
from tests.fixtures.anp_support import anp_gateway, make_caller
from tests.fixtures.tls import self_signed

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
)
BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"  # a service that is not HTTP at all
RAW = b'{"jsonrpc":"2.0","id":1,"method":"send_message","params":{"message":"hi"}}'


class Listener:
    """A loopback TCP server: records what each accepted connection sent (up to its headers) and
    answers ``reply`` (bytes, or a coroutine given the writer), then closes."""

    def __init__(self, reply: bytes | Callable | None = OK, *, tls: ssl.SSLContext | None = None) -> None:
        self.reply, self.tls = reply, tls
        self.accepted: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b""
        with contextlib.suppress(Exception):
            if self.reply == BANNER:  # speaks first, like SSH
                writer.write(BANNER)
            async with asyncio.timeout(5):
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    head += chunk
        self.accepted.append(head)
        with contextlib.suppress(Exception):
            if callable(self.reply):
                await self.reply(writer)
            elif self.reply not in (None, BANNER):
                writer.write(self.reply)
                await writer.drain()
            writer.close()

    def headers(self, i: int = 0) -> dict[str, str]:
        lines = self.accepted[i].decode("latin-1").split("\r\n")[1:]
        return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if ":" in line)}


class Names:
    """A resolver of test names: each name maps to a list of answers, one per call (the last one
    repeats); an empty answer, or a name it does not know, does not resolve. It records what it
    was asked."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table, self.asked = {k: list(v) for k, v in table.items()}, []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        answers = self.table.get(host) or [[]]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if not answer:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} does not resolve")
        return answer


async def _get(egress: Egress, url: str, library: str, **kw) -> int:
    """GET ``url`` with the egress policy's client of ``library``; the status."""
    if library == "httpx":
        async with egress.httpx_client(timeout=5, **kw) as http:
            return (await http.get(url)).status_code
    async with egress.aiohttp_session(url, timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status


REFUSED_ERRORS = (httpx.ConnectError, aiohttp.ClientError)
LIBRARIES = ["httpx", "aiohttp"]


# ---- the policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata address
        "100.64.0.1",  # shared (CGNAT)
        "224.0.0.1",
        "239.255.255.250",
        "0.0.0.0",
        "::",
        "240.0.0.1",
        "255.255.255.255",
        "fd00::1",  # IPv6 unique-local
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "::ffff:169.254.169.254",  # IPv4-mapped
        "::ffff:127.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2130706433",  # 127.0.0.1, decimal
        "0x7f.1",  # hex
        "017700000001",  # octal
        "127.1",
        "0xa9.0xfe.0xa9.0xfe",
    ],
)
def test_internal_addresses_and_their_spellings_are_refused(host):
    egress = Egress()
    address = literal_address(host)
    assert address is not None and egress.refusal(address)
    with pytest.raises(EgressRefused):
        egress.check_url(f"http://{'[' + host + ']' if ':' in host else host}:8080/x")


@pytest.mark.parametrize("host", ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "0x08080808"])
def test_public_addresses_pass(host):
    assert Egress().refusal(literal_address(host)) is None  # type: ignore[arg-type]


def test_the_operator_allows_networks_and_names():
    egress = Egress(["10.0.0.0/8", "db.internal", ".corp.example", "loopback"])
    assert egress.refusal(ipaddress.ip_address("10.9.9.9")) is None
    assert egress.refusal(ipaddress.ip_address("::ffff:10.9.9.9")) is None  # mapped: judged as the IPv4 address
    assert egress.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert egress.refusal(ipaddress.ip_address("192.168.0.1"))  # not allowed
    for url in ("http://db.internal/", "http://a.corp.example/", "http://10.0.0.1/"):
        egress.check_url(url)
    assert Egress(["private"]).refusal(ipaddress.ip_address("172.20.0.1")) is None
    assert Egress(["private"]).refusal(ipaddress.ip_address("169.254.169.254"))  # link-local is not private
    with pytest.raises(EgressRefused, match="scheme"):
        egress.check_url("file:///etc/passwd")
    for bad in ("10.0.0.0/33", "a/b", ""):
        if bad:
            with pytest.raises(ValueError, match="egress-allow"):
                Egress([bad])


def test_a_loopback_bind_allows_loopback_unless_told_otherwise():
    loopback = ipaddress.ip_address("127.0.0.1")
    assert Egress.from_config(Config(host="127.0.0.1")).refusal(loopback) is None
    assert Egress.from_config(Config(host="0.0.0.0")).refusal(loopback)
    assert Egress.from_config(Config(host="127.0.0.1", egress_allow=("none",))).refusal(loopback)
    env = Config.load(env={"INTERLACE_EGRESS_ALLOW": "10.0.0.0/8, db.internal"})
    assert env.egress_allow == ("10.0.0.0/8", "db.internal")
    flags = build_parser().parse_args(["serve", "--egress-allow", "10.0.0.0/8,loopback"])
    assert flags.egress_allow == ("10.0.0.0/8", "loopback")


async def test_every_address_a_name_resolves_to_must_pass():
    names = Names({"mixed.test": [["93.184.215.14", "10.0.0.1"]], "public.test": [["93.184.215.14"]]})
    egress = Egress(resolver=names)
    with pytest.raises(EgressRefused, match="10.0.0.1"):
        await egress.addresses("mixed.test", 80)
    assert await egress.addresses("public.test", 80) == ["93.184.215.14"]
    assert await Egress(["mixed.test"], resolver=names).addresses("mixed.test", 80) == ["93.184.215.14", "10.0.0.1"]


# ---- the clients: what is dialled ----------------------------------------------------------------


@pytest.mark.parametrize("library", LIBRARIES)
async def test_refused_destinations_are_never_dialled(library):
    """Literal addresses in every spelling, and names that resolve inside: refused before any
    connection (the listener, the only thing that could answer, saw nothing)."""
    async with Listener() as listener:
        names = Names({"internal.test": [["127.0.0.1"]], "metadata.test": [["169.254.169.254"]]})
        egress = Egress(resolver=names)
        port = listener.port
        urls = [
            f"http://127.0.0.1:{port}/",
            f"http://[::ffff:127.0.0.1]:{port}/",
            f"http://internal.test:{port}/",
            f"http://metadata.test:{port}/latest/meta-data/",
            f"http://0x7f.1:{port}/",
        ]
        if library == "httpx":
            urls.append(f"http://2130706433:{port}/")  # aiohttp refuses this spelling itself
        for url in urls:
            with pytest.raises(REFUSED_ERRORS, match="egress refused"):
                await _get(egress, url, library)
        assert listener.accepted == []
        assert await _get(Egress(["loopback"], resolver=names), f"http://internal.test:{port}/", library) == 200
        assert len(listener.accepted) == 1


@pytest.mark.parametrize("library", LIBRARIES)
async def test_the_checked_address_is_the_dialled_one(library):
    """DNS rebinding: ``rebind.test`` first resolves to the listener, then inside. The first
    connection reaches the listener although the system cannot resolve the name (no second
    resolution), with its Host header; the next connection is refused, nothing more arrives."""
    async with Listener() as listener:
        names = Names({"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
        egress = Egress(["loopback"], resolver=names)
        url = f"http://rebind.test:{listener.port}/"
        assert await _get(egress, url, library) == 200
        assert listener.headers()["host"] == f"rebind.test:{listener.port}"
        with pytest.raises(REFUSED_ERRORS):
            await _get(egress, url, library)
        assert names.asked == ["rebind.test", "rebind.test"] and len(listener.accepted) == 1


async def test_tls_keeps_the_name_while_dialling_the_checked_address(tmp_path):
    """HTTPS to a name pinned to its checked address: the server sees the name as SNI and Host,
    and the certificate is verified for the name (not for 127.0.0.1)."""
    cert, key = self_signed(tmp_path, "pinned.test")
    server_names: list[str | None] = []
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda sock, name, ctx: server_names.append(name)
    async with Listener(tls=tls) as listener:
        egress = Egress(["loopback"], resolver=Names({"pinned.test": [["127.0.0.1"]]}))
        verify = ssl.create_default_context(cafile=cert)
        assert await _get(egress, f"https://pinned.test:{listener.port}/", "httpx", verify=verify) == 200
        assert server_names == ["pinned.test"]
        assert listener.headers()["host"] == f"pinned.test:{listener.port}"


@pytest.mark.parametrize("library", LIBRARIES)
async def test_redirects_are_not_followed(library):
    """A redirect to an internal address: httpx hands back the 302 unfollowed, aiohttp (which
    follows by default) is stopped by the policy's middleware; either way nothing goes inside."""
    async with Listener() as inside:
        redirect = f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{inside.port}/\r\nContent-Length: 0\r\n\r\n"
        async with Listener(redirect.encode()) as outside:
            egress = Egress(["outside.test"], resolver=Names({"outside.test": [["127.0.0.1"]]}))
            url = f"http://outside.test:{outside.port}/"
            if library == "httpx":
                assert await _get(egress, url, library) == 302
                async with egress.httpx_client(timeout=5) as http:  # followed on purpose: the hop is checked
                    with pytest.raises(httpx.ConnectError, match="egress refused"):
                        await http.get(url, follow_redirects=True)
            else:
                with pytest.raises(aiohttp.ClientError, match="redirects"):
                    await _get(egress, url, library)
            assert inside.accepted == []


async def test_the_environment_proxy_is_used_and_checked():
    """Through the operator's proxy a name is the proxy's to resolve; a literal internal address
    is refused before the proxy hears of it."""
    async with Listener() as proxy:
        egress = Egress(proxies={"http": f"http://127.0.0.1:{proxy.port}"})
        assert await _get(egress, "http://agent.invalid/card", "httpx") == 200
        assert proxy.accepted[0].startswith(b"GET http://agent.invalid/card HTTP/1.1")
        with pytest.raises(httpx.ConnectError, match="egress refused"):
            await _get(egress, "http://10.0.0.1/card", "httpx")
        assert len(proxy.accepted) == 1


async def test_response_bodies_are_bounded_in_size_and_time(monkeypatch):
    monkeypatch.setattr(egress_module, "MAX_RESPONSE_BYTES", 1000)
    monkeypatch.setattr(egress_module, "BODY_TIMEOUT_S", 0.5)
    big = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000

    async def drip(writer: asyncio.StreamWriter) -> None:  # headers, then a byte now and then, forever
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(1000):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)

    events = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + b"data: x\n\n" * 500
    egress = Egress(["loopback"])
    async with Listener(big) as a, Listener(drip) as b, Listener(events) as c:
        async with egress.httpx_client(timeout=5) as http:
            with pytest.raises(httpx.ReadError, match="larger than 1000"):
                await http.get(f"http://127.0.0.1:{a.port}/")
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await http.get(f"http://127.0.0.1:{b.port}/")
            assert time.monotonic() - started < 3
            assert len((await http.get(f"http://127.0.0.1:{c.port}/")).content) == 4500  # streams: bounded per line

    async def chunks():
        yield b"x" * 600
        yield b"x" * 600

    with pytest.raises(ResponseTooLarge):
        await read_body(chunks())  # what the aiohttp client reads bodies with


async def test_an_event_of_many_lines_is_bounded_too():
    async def lines():
        for _ in range(10):
            yield b"data: " + b"x" * 100 + b"\n"  # no blank line: one event that keeps growing

    with pytest.raises(LineTooLong, match="event"):
        [event async for event in read_events(lines(), max_line=500)]


# ---- the gateway: probes P6-P10 -------------------------------------------------------------------


def _signed_record(name: str, **endpoints: str):
    identity = Identity.generate()
    card = {"name": name, "version": "1", "skills": [{"id": name, "name": name}], "endpoints": endpoints}
    record = record_from_card(card, identity.did, 1, 600, "interlace", "elsewhere")
    return sign(record, identity)


@contextlib.asynccontextmanager
async def restricted_gateway(names: Names, **kw) -> AsyncIterator[tuple[str, object]]:
    """A loopback gateway whose egress policy allows nothing internal (loopback included)."""
    app = create_app(test_config(egress_allow=("none",), echo=False), **kw)
    app.state.runtime.egress = Egress(("none",), resolver=names)  # before start: every client takes it
    async with serve_app(app) as url:
        yield url, app


async def test_p6_p8_p9_refused_endpoints_are_refused_at_registration():
    """P6, P8, P9: a2a at the capture server, a2a at the metadata address, mcp at the capture
    server: 400 endpoint_not_allowed, and the capture server never heard a thing."""
    async with Listener() as capture:
        names = Names({"metadata.test": [["169.254.169.254"]]})
        async with restricted_gateway(names) as (url, app), httpx.AsyncClient(base_url=url, timeout=10) as http:
            for endpoints in (
                {"a2a": f"http://127.0.0.1:{capture.port}/"},
                {"a2a": "http://metadata.test/"},
                {"a2a": "http://169.254.169.254/"},
                {"mcp": f"http://127.0.0.1:{capture.port}/mcp"},
                {"acp": f"http://[::ffff:127.0.0.1]:{capture.port}/"},
                {"anp": f"http://2130706433:{capture.port}/ad.json"},
            ):
                resp = await http.post("/registry/agents", json=_signed_record("probe", **endpoints).dump())
                assert resp.status_code == 400, resp.text
                error = resp.json()["error"]
                assert error["code"] == "endpoint_not_allowed"
                assert "127.0.0.1" not in error["message"] and "169.254" not in error["message"]
            assert app.state.runtime.registry.live() == []
        assert capture.accepted == []


async def test_p6_a_name_that_resolves_inside_later_fails_the_task_and_dials_nothing():
    """A name that does not resolve at registration is accepted; when it resolves inside, the
    task fails 'agent unreachable' and the capture server saw nothing."""
    async with Listener() as capture:
        names = Names({"later.test": [[], ["127.0.0.1"]]})  # nothing at registration, loopback after
        async with restricted_gateway(names) as (url, app), httpx.AsyncClient(base_url=url, timeout=10) as http:
            record = _signed_record("later", a2a=f"http://later.test:{capture.port}/")
            assert (await http.post("/registry/agents", json=record.dump())).status_code == 201
            rt = app.state.runtime
            await wait_until(lambda: _has_connector(app, record.did))
            task = await rt.submit(Message(role="user", parts=[TextPart(text="secret")]), agent="later")
            task = await rt.wait(task.id, 20)
            assert task.state is TaskState.FAILED
            assert task.status.message.text() == f"remote agent 'later': {UNREACHABLE}"
        assert capture.accepted == []


async def _has_connector(app, did: str) -> bool:
    return did in app.state.connectors.running()


async def test_p9_a_relayed_mcp_record_is_never_dialled_by_the_federation():
    """P9 without the registration check (a record relayed by gossip lands in the registry
    directly): the federation tries it, the egress policy refuses, nothing is dialled."""
    async with Listener() as capture:
        async with restricted_gateway(Names({})) as (_, app):
            record = _signed_record("sneaky", mcp=f"http://127.0.0.1:{capture.port}/mcp")
            await app.state.runtime.registry.submit(record)
            upstreams = app.state.mcp.upstreams

            async def tried() -> bool:
                client = upstreams.clients.get("sneaky")
                return client is not None and client.first_attempt.is_set()

            await wait_until(tried, timeout=15)
            assert not upstreams.clients["sneaky"].connected
            assert "egress refused" in upstreams.clients["sneaky"].last_error
        assert capture.accepted == []


async def test_p7_one_reason_whatever_the_failure():
    """P7: an endpoint at a closed port, at a port answering HTTP 404, at a port that is not
    HTTP: every protocol's connector fails the task with the same text for all three."""
    async with Listener(NOT_FOUND) as not_found, Listener(BANNER) as banner:
        targets = {
            "closed": f"http://127.0.0.1:{free_port()}",
            "notfound": f"http://127.0.0.1:{not_found.port}",
            "banner": f"http://127.0.0.1:{banner.port}",
        }
        anp_signer = ANPSigner.for_host(Identity.generate(), "gw.example.com")
        connectors = {
            "a2a": lambda name, base: A2AConnector(name, base + "/"),
            "acp": lambda name, base: ACPConnector(name, base),
            "anp": lambda name, base: ANPConnector(name, base + "/ad.json", signer=anp_signer),
            "mcp": lambda name, base: MCPConnector(name, base + "/mcp"),
        }
        workers = [
            make(f"{kind}-{target}", base) for kind, make in connectors.items() for target, base in targets.items()
        ]
        async with running_gateway(test_config(echo=False), workers=workers) as (_, app):
            rt = app.state.runtime
            submitted = [
                await rt.submit(Message(role="user", parts=[TextPart(text="x")]), agent=w.agent) for w in workers
            ]
            done = await asyncio.gather(*(rt.wait(t.id, 30) for t in submitted))
        for kind in connectors:
            texts = {
                t.status.message.text().replace(f"'{w.agent}'", "'NAME'")
                for t, w in zip(done, workers)
                if w.agent.startswith(kind)
            }
            assert all(t.state is TaskState.FAILED for t in done)
            assert len(texts) == 1 and next(iter(texts)).endswith(f"'NAME': {UNREACHABLE}"), texts


async def test_p10_no_did_document_is_fetched_from_a_refused_address(tmp_path):
    """P10: requests signed as did:wba:localhost%3A<port> and did:wba:127.0.0.1%3A<port> make the
    gateway fetch nothing from that address (no TLS ClientHello reaches it), and the refusal
    does not say why."""
    async with Listener(None) as capture:
        by_name = make_caller(tmp_path, "mallory", host="localhost", port=capture.port)
        literal = json.loads(json.dumps(by_name.document).replace("did:wba:localhost", "did:wba:127.0.0.1"))
        async with anp_gateway(test_config(egress_allow=("none",))) as (url, _), httpx.AsyncClient(timeout=20) as http:
            rpc = f"{url}/anp/agents/echo/rpc"
            for document in (by_name.document, literal):
                headers = {"Content-Type": "application/json"}
                headers.update(generate_http_signature_headers(document, rpc, "POST", by_name.sign, body=RAW))
                resp = await http.post(rpc, content=RAW, headers=headers)
                assert resp.status_code == 401
                assert resp.json()["error"] == {
                    "code": "invalid_did",
                    "message": "the DID document could not be resolved",
                }
        assert capture.accepted == []
