"""A2A with caller authentication (issue 14): cards declare the security schemes (1.0 and 0.3
names) and stay signed; the official ``a2a-sdk`` client sends credentials through its
``AuthInterceptor`` and a credential service; calls without credentials are refused with 401 in
the binding's own shape; the extended card is served to authenticated callers only. A loopback
gateway without authentication keeps its cards as they were.
"""

from __future__ import annotations

import httpx
import nacl.signing
import pytest
import pytest_asyncio
import yaml
from a2a.client import A2ACardResolver, A2AClientError, AuthInterceptor, ClientCallContext
from a2a.client import InMemoryContextCredentialStore as CredentialStore
from a2a.types import GetExtendedAgentCardRequest
from a2a.utils.signing import InvalidSignaturesError, create_signature_verifier
from jwt import PyJWK

from agents.echo import EchoWorker
from gateway.app import create_app
from gateway.core.auth import api_key_digest
from protocols.a2a import A2AOptions, mount
from protocols.a2a.card import canonical_bytes
from registry.identity import b64url_decode, b64url_encode
from tests.conftest import free_port, running_gateway, serve_app, test_config
from tests.fixtures.a2a_support import V10, as_dict, message, request, sdk_client, texts
from tests.fixtures.oauth_server import running_oauth_server

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

KEY = "k-alice-a2a-0123456789abcdef"
BINDINGS = ["JSONRPC", "HTTP+JSON"]
VERSIONS = ["1.0", "0.3"]
SESSION = "s1"
V03 = {"A2A-Version": "0.3"}  # explicit: the SDK clients set 1.0 on the shared httpx client


class Gateway:
    def __init__(self, base: str, idp, legacy_base: str) -> None:
        self.base, self.idp, self.legacy_base = base, idp, legacy_base

    def token(self) -> str:
        return self.idp.issue(aud=self.base)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(tmp_path_factory):
    """A gateway with an issuer and API keys, and a second one with 0.3-compatible cards."""
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"principal": "alice", "key_sha256": api_key_digest(KEY), "groups": ["dev"]}]))
    async with running_oauth_server() as idp:
        port, port2 = free_port(), free_port()
        base, base2 = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port2}"
        config = test_config(port=port, auth_issuer=idp.issuer, api_keys=str(keys), public_url=base)
        config2 = test_config(port=port2, auth_issuer=idp.issuer, api_keys=str(keys), public_url=base2)
        legacy = create_app(config2, workers=[EchoWorker()])
        mount(legacy, A2AOptions(card_v03_compat=True))
        async with serve_app(create_app(config), port), serve_app(legacy, port2):
            # Both gateways accept tokens for their own URL; the 0.3 one's tokens name base2.
            yield Gateway(base, idp, base2)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http():
    async with httpx.AsyncClient(timeout=20) as c:
        yield c


def expected_schemes(issuer: str) -> dict:
    return {
        "bearer": {
            "httpAuthSecurityScheme": {
                "scheme": "Bearer",
                "bearerFormat": "JWT",
                "description": f"A JWT issued by {issuer}",
            }
        },
        "oidc": {
            "openIdConnectSecurityScheme": {
                "openIdConnectUrl": f"{issuer}/.well-known/openid-configuration",
                "description": "Tokens from this OpenID Connect issuer, sent as Authorization: Bearer",
            }
        },
        "apiKey": {
            "apiKeySecurityScheme": {
                "location": "header",
                "name": "X-API-Key",
                "description": "An API key in X-API-Key (Authorization: Bearer <key> works too)",
            }
        },
    }


REQUIREMENTS = [{"schemes": {n: {"list": []}}} for n in ("bearer", "oidc", "apiKey")]
EXTENDED = {"jsonrpc": "2.0", "id": 7, "method": "GetExtendedAgentCard"}
CARD_PATHS = ["/.well-known/agent-card.json", "/a2a/agents/echo/.well-known/agent-card.json"]


# ---- cards ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CARD_PATHS, ids=["gateway", "agent"])
async def test_cards_declare_the_schemes_and_stay_signed(gw, http, path):
    card = (await http.get(gw.base + path)).json()
    assert card["securitySchemes"] == expected_schemes(gw.idp.issuer)
    assert card["securityRequirements"] == REQUIREMENTS
    assert card["capabilities"]["extendedAgentCard"] is True
    assert "security" not in card and "url" not in card  # a strict 1.0 card: no 0.3 keys

    jwks = (await http.get(gw.base + "/a2a/jwks.json")).json()
    sig = card["signatures"][0]
    key = nacl.signing.VerifyKey(b64url_decode(jwks["keys"][0]["x"]))
    key.verify(f"{sig['protected']}.{b64url_encode(canonical_bytes(card))}".encode(), b64url_decode(sig["signature"]))
    verifier = create_signature_verifier(lambda kid, jku: PyJWK(jwks["keys"][0]), ["EdDSA"])
    base = gw.base + path.removesuffix("/.well-known/agent-card.json")
    parsed = await A2ACardResolver(http, base).get_agent_card(signature_verifier=verifier)
    assert set(parsed.security_schemes) == {"bearer", "oidc", "apiKey"}
    # The schemes are signed (where a client sends its secrets). Scope-less requirements are not:
    # A2A's canonical form drops empty values, so {"schemes": {"bearer": {"list": []}}} vanishes.
    parsed.security_schemes["apiKey"].api_key_security_scheme.name = "X-Steal-Me"
    with pytest.raises(InvalidSignaturesError):
        verifier(parsed)


@pytest.mark.parametrize("path", CARD_PATHS, ids=["gateway", "agent"])
async def test_v03_cards_carry_security_and_the_openapi_style_schemes(gw, http, path):
    card = (await http.get(gw.legacy_base + path)).json()
    issuer = gw.idp.issuer
    assert card["security"] == [{"bearer": []}, {"oidc": []}, {"apiKey": []}]
    assert card["securityRequirements"] == REQUIREMENTS and card["supportsAuthenticatedExtendedCard"] is True
    schemes = card["securitySchemes"]
    # The 0.3 keys beside the 1.0 ones, with the same values (as the Python SDK's dual cards).
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "Bearer"
    assert schemes["bearer"]["bearerFormat"] == "JWT"
    assert schemes["oidc"]["type"] == "openIdConnect"
    assert schemes["oidc"]["openIdConnectUrl"] == f"{issuer}/.well-known/openid-configuration"
    assert schemes["apiKey"]["type"] == "apiKey" and schemes["apiKey"]["in"] == "header"
    assert schemes["apiKey"]["name"] == "X-API-Key" and "location" not in schemes["apiKey"]
    for name, scheme in expected_schemes(issuer).items():
        assert {k: v for k, v in schemes[name].items() if k in scheme} == scheme

    # The 1.3 SDK reads the dual card (0.3 keys mapped) into the scheme that was signed.
    jwks = (await http.get(gw.legacy_base + "/a2a/jwks.json")).json()
    verifier = create_signature_verifier(lambda kid, jku: PyJWK(jwks["keys"][0]), ["EdDSA"])
    base = gw.legacy_base + path.removesuffix("/.well-known/agent-card.json")
    parsed = await A2ACardResolver(http, base).get_agent_card(signature_verifier=verifier)
    assert parsed.security_schemes["apiKey"].api_key_security_scheme.location == "header"
    assert parsed.security_schemes["bearer"].http_auth_security_scheme.bearer_format == "JWT"


async def test_a_loopback_gateway_without_auth_keeps_its_cards():
    async with running_gateway() as (url, _), httpx.AsyncClient(base_url=url, timeout=10) as http:
        for path in CARD_PATHS:
            card = (await http.get(path)).json()
            assert "securitySchemes" not in card and "securityRequirements" not in card
            assert card["capabilities"]["extendedAgentCard"] is False
        body = (
            await http.post("/a2a", json={"jsonrpc": "2.0", "id": 1, "method": "GetExtendedAgentCard"}, headers=V10)
        ).json()
        assert body["error"]["code"] == -32007  # ExtendedAgentCardNotConfiguredError, as before
        rest = await http.get("/a2a/rest/extendedAgentCard", headers=V10)
        assert rest.status_code == 400
        assert rest.json()["error"]["details"][0]["reason"] == "EXTENDED_AGENT_CARD_NOT_CONFIGURED"


# ---- the official client -------------------------------------------------------------------


async def credentials(scheme: str, value: str) -> CredentialStore:
    store = CredentialStore()
    await store.set_credentials(SESSION, scheme, value)
    return store


def context() -> ClientCallContext:
    return ClientCallContext(state={"sessionId": SESSION})


def base_for(gw: Gateway, version: str) -> str:
    return gw.base if version == "1.0" else gw.legacy_base


@pytest.mark.parametrize("scheme", ["apiKey", "bearer", "oidc"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("binding", BINDINGS)
async def test_the_sdk_client_sends_credentials_through_its_auth_interceptor(gw, http, binding, version, scheme):
    base = base_for(gw, version)
    secret = KEY if scheme == "apiKey" else gw.idp.issue(aud=base)
    interceptor = AuthInterceptor(await credentials(scheme, secret))
    client = await sdk_client(
        http, f"{base}/a2a/agents/echo", binding, version, streaming=False, interceptors=[interceptor]
    )
    text = f"secured {binding} {version} {scheme}"
    events = [as_dict(e) async for e in client.send_message(request(message(text)), context=context())]
    task = events[-1]["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED" and texts(task) == text


@pytest.mark.parametrize("streaming", [False, True], ids=["send", "stream"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("binding", BINDINGS)
async def test_the_sdk_client_without_credentials_gets_401(gw, http, binding, version, streaming):
    base = base_for(gw, version)
    bare = await sdk_client(http, f"{base}/a2a/agents/echo", binding, version, streaming=streaming)
    with pytest.raises(A2AClientError, match="401"):
        [e async for e in bare.send_message(request(message("no credentials")))]
    # A credential service that has nothing for this session sends nothing either.
    empty = AuthInterceptor(CredentialStore())
    client = await sdk_client(
        http, f"{base}/a2a/agents/echo", binding, version, streaming=streaming, interceptors=[empty]
    )
    with pytest.raises(A2AClientError, match="401"):
        [e async for e in client.send_message(request(message("no credentials")), context=context())]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("binding", BINDINGS)
async def test_the_extended_card_needs_credentials(gw, http, binding, version):
    base = base_for(gw, version)
    public = (await http.get(f"{base}/.well-known/agent-card.json")).json()
    interceptor = AuthInterceptor(await credentials("apiKey", KEY))
    client = await sdk_client(http, f"{base}/a2a", binding, version, streaming=False, interceptors=[interceptor])
    card = await client.get_extended_agent_card(GetExtendedAgentCardRequest(), context=context())
    assert card.capabilities.extended_agent_card
    assert sorted(s.id for s in card.skills) == sorted(s["id"] for s in public["skills"])  # no policy yet
    assert set(card.security_schemes) == {"bearer", "oidc", "apiKey"}

    bare = await sdk_client(http, f"{base}/a2a", binding, version, streaming=False)
    with pytest.raises(A2AClientError, match="401"):
        await bare.get_extended_agent_card(GetExtendedAgentCardRequest())


# ---- the wire ------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["/a2a", "/a2a/agents/echo"], ids=["gateway", "agent"])
async def test_refusals_have_the_binding_shape(gw, http, scope):
    rpc = await http.post(gw.base + scope, json=EXTENDED, headers=V10)
    assert rpc.status_code == 401 and rpc.headers["www-authenticate"] == "Bearer"
    body = rpc.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None and body["error"]["code"] == -32000
    assert "authentication required" in body["error"]["message"]

    for path in ("/rest/extendedAgentCard", "/rest/v1/card", "/rest/tasks/x"):
        rest = await http.get(gw.base + scope + path, headers=V10)
        assert rest.status_code == 401 and rest.headers["www-authenticate"] == "Bearer"
        assert rest.json()["error"]["code"] == 401 and rest.json()["error"]["status"] == "UNAUTHENTICATED"

    bad = await http.post(gw.base + scope, json=EXTENDED, headers={**V10, "X-API-Key": KEY[:-1] + "x"})
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert bad.json()["error"]["code"] == -32000


@pytest.mark.parametrize("scope", ["/a2a", "/a2a/agents/echo"], ids=["gateway", "agent"])
async def test_extended_card_on_the_wire_with_credentials(gw, http, scope):
    auth = {"Authorization": f"Bearer {gw.token()}"}
    card = (await http.post(gw.base + scope, json=EXTENDED, headers={**V10, **auth})).json()["result"]
    assert card["securitySchemes"] == expected_schemes(gw.idp.issuer) and card["signatures"]
    rest = await http.get(gw.base + scope + "/rest/extendedAgentCard", headers={**V10, "X-API-Key": KEY})
    assert rest.status_code == 200 and rest.json()["skills"] == card["skills"]
    legacy = await http.post(
        gw.base + scope, json={**EXTENDED, "method": "agent/getAuthenticatedExtendedCard"}, headers={**V03, **auth}
    )
    legacy_card = legacy.json()["result"]
    assert legacy_card["security"] == [{"bearer": []}, {"oidc": []}, {"apiKey": []}]
    assert legacy_card["supportsAuthenticatedExtendedCard"] is True
    v1 = await http.get(gw.base + scope + "/rest/v1/card", headers={**V03, **auth})
    assert v1.status_code == 200 and v1.json()["security"] == legacy_card["security"]


async def test_an_anonymous_caller_gets_no_extended_card(tmp_path):
    """With --allow-anonymous, callers without credentials get in, but not to the extended card."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"principal": "alice", "key_sha256": api_key_digest(KEY)}]))
    config = test_config(api_keys=str(keys), allow_anonymous=True)
    async with running_gateway(config) as (url, _), httpx.AsyncClient(base_url=url, timeout=10) as http:
        card = (await http.get("/.well-known/agent-card.json")).json()
        assert set(card["securitySchemes"]) == {"apiKey"} and card["capabilities"]["extendedAgentCard"] is True
        rpc = await http.post("/a2a", json=EXTENDED, headers=V10)
        assert rpc.status_code == 401 and rpc.headers["www-authenticate"] == "Bearer"
        assert rpc.json()["id"] == 7 and rpc.json()["error"]["code"] == -32000
        rest = await http.get("/a2a/rest/extendedAgentCard", headers=V10)
        assert rest.status_code == 401 and rest.json()["error"]["status"] == "UNAUTHENTICATED"
        public = await http.get("/a2a/rest/v1/card")  # the 0.3 card endpoint: the public card
        assert public.status_code == 200 and public.json()["security"] == [{"apiKey": []}]
        ok = await http.post("/a2a", json=EXTENDED, headers={**V10, "X-API-Key": KEY})
        assert ok.json()["result"]["name"] == card["name"]
        sent = await http.post(
            "/a2a",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "SendMessage",
                "params": {
                    "message": {"messageId": "anon", "role": "ROLE_USER", "parts": [{"text": "hi"}]},
                    "metadata": {"agent": "echo"},
                },
            },
            headers=V10,
        )
        assert sent.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
