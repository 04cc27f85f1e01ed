"""Caller authentication on every face of a gateway configured with an OIDC issuer and API keys
(gateway/authn.py): no credentials or bad ones get 401 with a Bearer challenge, good ones pass;
open and self-authenticating routes stay as they are; MCP is an OAuth resource server (RFC 9728
metadata, audience = its resource URL) that the official ``mcp`` client reaches with a static
bearer token and with the SDK's ``OAuthClientProvider`` running discovery, registration, the
code flow and the call.
"""

from __future__ import annotations

import contextlib

import httpx
import httpx2
import pytest
import yaml
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from gateway.app import create_app
from gateway.core.auth import api_key_digest
from tests.conftest import free_port, serve_app, test_config
from tests.fixtures.oauth_server import running_oauth_server
from tests.test_auth import MemoryTokenStorage

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "k-alice-0123456789abcdef"


@contextlib.asynccontextmanager
async def secured_gateway(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"principal": "alice", "key_sha256": api_key_digest(KEY), "groups": ["dev"]}]))
    async with running_oauth_server() as idp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = test_config(port=port, auth_issuer=idp.issuer, api_keys=str(keys), public_url=base)
        async with serve_app(create_app(config), port):
            yield base, idp


@pytest.fixture
async def gw(tmp_path):
    async with secured_gateway(tmp_path) as env:
        yield env


MESSAGE = {"role": "user", "parts": [{"kind": "text", "text": "hi"}]}
A2A_SEND = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "SendMessage",
    "params": {
        "message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]},
        "metadata": {"agent": "echo"},
    },
}
MCP_INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
# (method, path, body, extra headers): one request per face that needs a caller.
FACES = [
    ("POST", "/tasks?wait=true", {"agent": "echo", "message": MESSAGE}, {}),
    ("GET", "/tasks", None, {}),
    ("POST", "/route", {"text": "echo"}, {}),
    ("GET", "/registry/agents", None, {}),
    ("GET", "/openapi.json", None, {}),
    ("POST", "/a2a", A2A_SEND, {"A2A-Version": "1.0"}),
    ("POST", "/a2a/agents/echo", A2A_SEND, {"A2A-Version": "1.0"}),
    ("POST", "/a2a/rest/message:send", A2A_SEND["params"], {"A2A-Version": "1.0"}),
    ("POST", "/a2a", {**A2A_SEND, "method": "message/send"}, {}),  # A2A 0.3
    ("GET", "/acp/agents", None, {}),
    ("POST", "/acp/runs", {"agent_name": "echo", "input": [{"parts": [{"content": "hi"}]}]}, {}),
    ("POST", "/mcp", MCP_INIT, {"Accept": "application/json, text/event-stream"}),
    ("GET", "/cluster/members", None, {}),
]
IDS = [f"{m} {p}" for m, p, _, _ in FACES]


async def send(base: str, method: str, path: str, body, headers: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=20) as http:
        return await http.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("method, path, body, headers", FACES, ids=IDS)
async def test_every_face_refuses_a_caller_without_credentials(gw, method, path, body, headers):
    base, _ = gw
    resp = await send(base, method, path, body, headers)
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer") and "error=" not in challenge  # RFC 6750 3.1: no error without credentials
    if path == "/mcp":
        assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in challenge


@pytest.mark.parametrize("method, path, body, headers", FACES, ids=IDS)
async def test_every_face_refuses_a_key_with_one_byte_changed_and_a_foreign_token(gw, method, path, body, headers):
    base, idp = gw
    forged = KEY[:-1] + ("0" if KEY[-1] != "0" else "1")
    for credentials in (f"Bearer {forged}", f"Bearer {idp.issue(aud='https://elsewhere.example')}"):
        resp = await send(base, method, path, body, {**headers, "Authorization": credentials})
        assert resp.status_code == 401, resp.text
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]


@pytest.mark.parametrize("method, path, body, headers", FACES, ids=IDS)
async def test_every_face_serves_a_caller_with_an_api_key_or_a_token(gw, method, path, body, headers):
    base, idp = gw
    audience = f"{base}/mcp" if path == "/mcp" else base
    for extra in (
        {"Authorization": f"Bearer {KEY}"},
        {"X-API-Key": KEY},
        {"Authorization": f"Bearer {idp.issue(aud=audience)}"},
    ):
        resp = await send(base, method, path, body, {**headers, **extra})
        assert resp.status_code < 300, (extra, resp.text)


async def test_an_mcp_token_must_name_the_mcp_resource(gw):
    base, idp = gw
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {idp.issue(aud=base)}"}
    resp = await send(base, "POST", "/mcp", MCP_INIT, headers)
    assert resp.status_code == 401 and 'error="invalid_token"' in resp.headers["www-authenticate"]


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/.well-known/agent-card.json"),
        ("GET", "/.well-known/did.json"),
        ("GET", "/a2a/agents/echo/.well-known/agent-card.json"),
    ],
)
async def test_open_routes_need_no_credentials(gw, method, path):
    base, _ = gw
    assert (await send(base, method, path, None, {})).status_code == 200


async def test_protected_resource_metadata_names_the_issuer(gw):
    base, idp = gw
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        meta = (await send(base, "GET", path, None, {})).json()
        assert meta["resource"] == f"{base}/mcp" and meta["authorization_servers"] == [idp.issuer]
        assert meta["bearer_methods_supported"] == ["header"]


async def test_a_loopback_gateway_without_auth_config_needs_no_credentials():
    async with serve_app(create_app(test_config())) as base:
        resp = await send(base, "POST", "/tasks?wait=true", {"agent": "echo", "message": MESSAGE}, {})
        assert resp.status_code == 200
        assert (await send(base, "GET", "/.well-known/oauth-protected-resource/mcp", None, {})).status_code == 404


async def call_echo(url: str, http: httpx2.AsyncClient) -> str:
    async with streamable_http_client(url, http_client=http) as (read, write, *_):
        async with ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool("echo", {"message": "through auth"})
            return result.content[0].text


async def test_the_official_mcp_client_with_a_static_bearer_token(gw):
    base, idp = gw
    token = idp.issue(aud=f"{base}/mcp")
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=20) as http:
        assert await call_echo(f"{base}/mcp", http) == "through auth"


async def test_the_official_mcp_client_runs_the_whole_oauth_flow(gw):
    base, idp = gw
    idp.user = {"sub": "carol", "groups": ["dev"]}
    codes: list = []

    async def redirect_handler(url: str) -> None:  # a headless browser: the fixture auto-approves
        async with httpx.AsyncClient() as browser:
            resp = await browser.get(url)
        query = httpx.URL(resp.headers["location"]).params
        codes.append(AuthorizationCodeResult(code=query["code"], state=query["state"], iss=query["iss"]))

    async def callback_handler():
        return codes.pop()

    provider = OAuthClientProvider(
        f"{base}/mcp",
        OAuthClientMetadata(redirect_uris=["http://127.0.0.1:1/callback"], client_name="t", scope="mcp"),
        MemoryTokenStorage(),
        redirect_handler,
        callback_handler,
    )
    async with httpx2.AsyncClient(auth=provider, timeout=20) as http:
        assert await call_echo(f"{base}/mcp", http) == "through auth"
    assert idp.tokens_issued == 1 and len(idp.clients) == 1  # registered, one token, reused for every call


async def test_openapi_declares_the_configured_schemes(gw):
    base, idp = gw
    doc = (await send(base, "GET", "/openapi.json", None, {"X-API-Key": KEY})).json()
    schemes = doc["components"]["securitySchemes"]
    assert set(schemes) == {"bearer", "oidc", "apiKey"}
    assert schemes["oidc"]["openIdConnectUrl"] == f"{idp.issuer}/.well-known/openid-configuration"
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    listing = doc["paths"]["/registry/agents"]["get"]
    assert {next(iter(r)) for r in listing["security"]} == {"bearer", "oidc", "apiKey"} and "401" in listing[
        "responses"
    ]
    assert "security" not in doc["paths"]["/registry/agents"]["post"]  # signed records under the admission policy
    revoke = doc["paths"]["/registry/revocations"]["post"]  # an operator's: credentials required
    assert {next(iter(r)) for r in revoke["security"]} == {"bearer", "oidc", "apiKey"} and "401" in revoke["responses"]


async def test_openapi_of_a_gateway_without_auth_declares_no_scheme():
    async with serve_app(create_app(test_config())) as base:
        doc = (await send(base, "GET", "/openapi.json", None, {})).json()
    assert "securitySchemes" not in doc["components"]
    assert "security" not in doc["paths"]["/registry/agents"]["get"]
