"""DIDWba authentication at the gateway's ANP endpoints: every bad input is a 401 with a
``WWW-Authenticate: DIDWba`` challenge (never a 5xx), nonces are single-use across nodes, bearer
tokens expire, and DID documents are fetched over HTTPS and cached."""

from __future__ import annotations

import copy
import datetime
import ssl
import time

import httpx
import pytest
from anp.authentication.did_wba import generate_auth_header
from anp.authentication.http_signatures import generate_http_signature_headers
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.core.egress import Egress
from protocols.anp.auth import HttpsResolver
from tests.conftest import free_port, test_config, wait_until
from tests.fixtures.anp_support import LocalResolver, anp_gateway, make_caller, signed_post, signer
from tests.fixtures.tls import self_signed

BODY = {"jsonrpc": "2.0", "id": 1, "method": "send_message", "params": {"message": "hi"}}
RAW = b'{"jsonrpc":"2.0","id":1,"method":"send_message","params":{"message":"hi"}}'


@pytest.fixture
async def gw(tmp_path):
    alice, bob = make_caller(tmp_path, "alice"), make_caller(tmp_path, "bob")
    resolver = LocalResolver(alice, bob)
    async with anp_gateway(resolve=resolver) as (url, app):
        async with httpx.AsyncClient(timeout=20) as http:
            yield f"{url}/anp/agents/echo/rpc", http, alice, bob, resolver, tmp_path


def challenged(resp: httpx.Response, error: str) -> None:
    assert resp.status_code == 401, (resp.status_code, resp.text)
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith('DIDWba realm="localhost"'), challenge
    assert f'error="{error}"' in challenge, challenge
    assert resp.headers["accept-signature"].startswith('sig1=("@method" "@target-uri" "@authority" "content-digest")')
    assert resp.json()["error"]["code"] == error


def sdk_headers(caller, url: str, body: bytes = RAW, **kw) -> dict:
    headers = {"Content-Type": "application/json"}
    headers.update(
        generate_http_signature_headers(
            caller.document, url, "POST", caller.sign, headers=dict(headers), body=body, **kw
        )
    )
    return headers


async def healthy(http: httpx.AsyncClient, rpc: str) -> None:
    assert (await http.get(rpc.split("/anp/")[0] + "/healthz")).status_code == 200


async def test_missing_authentication(gw):
    rpc, http, *_ = gw
    challenged(await http.post(rpc, json=BODY), "invalid_request")


@pytest.mark.parametrize(
    "headers,error",
    [
        ({"Authorization": "Basic YTpi"}, "invalid_request"),
        ({"Authorization": "DIDWba garbage"}, "invalid_request"),
        ({"Authorization": 'DIDWba did="did:wba:client.example", nonce="n"'}, "invalid_request"),
        ({"Authorization": "Bearer " + "x" * 300}, "invalid_access_token"),
        ({"Authorization": "Bearer not-a-token"}, "invalid_access_token"),
        ({"Signature-Input": "garbage", "Signature": "sig1=:AAAA:"}, "invalid_request"),
        ({"Signature-Input": 'sig1=("@method" "@target-uri");created=1'}, "invalid_request"),
        (
            {
                "Signature-Input": 'sig1=("@method" "@target-uri");created=1;keyid="nofragment"',
                "Signature": "sig1=:AAAA:",
            },
            "invalid_verification_method",
        ),
        (
            {
                "Signature-Input": (
                    'sig1=("@method" "@target-uri" "content-digest");created=1;keyid="did:wba:a.example#k"'
                ),
                "Signature": "sig1=:AAAA:",
                "Content-Digest": "sha-256=:AAAA:",
            },
            "invalid_signature",
        ),
        (
            {
                "Signature-Input": 'sig1=("@method" "@target-uri");created=1;keyid="did:wba:a.example#k"',
                "Signature": "sig1=:AAAA:",
            },
            "invalid_request",
        ),
    ],
)
async def test_malformed_authentication(gw, headers, error):
    rpc, http, *_ = gw
    challenged(await http.post(rpc, content=RAW, headers={"Content-Type": "application/json", **headers}), error)
    await healthy(http, rpc)


async def test_replayed_signature_and_legacy_header(gw):
    rpc, http, alice, *_ = gw
    headers = sdk_headers(alice, rpc)
    assert (await http.post(rpc, content=RAW, headers=headers)).status_code == 200
    challenged(await http.post(rpc, content=RAW, headers=headers), "invalid_nonce")
    legacy = {"Authorization": generate_auth_header(alice.document, "localhost", alice.sign)}
    assert (await http.post(rpc, json=BODY, headers=legacy)).status_code == 200
    challenged(await http.post(rpc, json=BODY, headers=legacy), "invalid_nonce")


async def test_expired_and_future_signatures(gw):
    rpc, http, alice, *_ = gw
    now = int(time.time())
    for kw in (
        {"created": now - 1000, "expires": now + 100},
        {"created": now + 600},
        {"created": now - 20, "expires": now - 5},
    ):
        challenged(await http.post(rpc, content=RAW, headers=sdk_headers(alice, rpc, **kw)), "invalid_timestamp")
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for ts in (old, "yesterday"):
        header = generate_auth_header(alice.document, "localhost", alice.sign, timestamp=ts)
        challenged(await http.post(rpc, json=BODY, headers={"Authorization": header}), "invalid_timestamp")


async def test_wrongly_signed_requests(gw):
    rpc, http, alice, bob, *_ = gw
    # alice's DID, bob's key
    forged = {
        "Content-Type": "application/json",
        **generate_http_signature_headers(alice.document, rpc, "POST", bob.sign, body=RAW),
    }
    challenged(await http.post(rpc, content=RAW, headers=forged), "invalid_signature")
    # a body other than the signed one (its own digest, the signed one's signature)
    other = RAW.replace(b"hi", b"ho")
    tampered = sdk_headers(alice, rpc)
    challenged(await http.post(rpc, content=other, headers=tampered), "invalid_signature")
    tampered["Content-Digest"] = sdk_headers(alice, rpc, body=other)["Content-Digest"]
    challenged(await http.post(rpc, content=other, headers=tampered), "invalid_signature")
    # signed for another URL
    challenged(
        await http.post(rpc, content=RAW, headers=sdk_headers(alice, rpc.replace("echo", "other"))), "invalid_signature"
    )
    # a body the signature does not cover
    uncovered = sdk_headers(alice, rpc, body=b"", covered_components=["@method", "@target-uri", "@authority"])
    challenged(await http.post(rpc, content=RAW, headers=uncovered), "invalid_request")
    # legacy header signed for another domain
    header = generate_auth_header(alice.document, "elsewhere.example", alice.sign)
    challenged(await http.post(rpc, json=BODY, headers={"Authorization": header}), "invalid_signature")
    await healthy(http, rpc)


async def test_legacy_header_versions(gw):
    rpc, http, alice, *_ = gw
    sdk = signer(alice, "legacy_didwba")  # v="1.1": the domain is signed as aud
    assert (await signed_post(http, sdk, rpc, BODY)).status_code == 200
    v10 = generate_auth_header(alice.document, "localhost", alice.sign, version="1.0")  # signed as service
    assert (await http.post(rpc, json=BODY, headers={"Authorization": v10})).status_code == 200
    no_v = generate_auth_header(alice.document, "localhost", alice.sign, version="1.0").replace('v="1.0", ', "")
    resp = await http.post(rpc, json=BODY, headers={"Authorization": no_v})  # agent-connect 0.3.7's shape
    assert resp.status_code == 200 and resp.json()["result"]["text"] == "hi"


async def test_unknown_and_invalid_did_documents(gw):
    rpc, http, alice, bob, resolver, tmp = gw
    carol = make_caller(tmp, "carol")  # not resolvable
    challenged(await http.post(rpc, content=RAW, headers=sdk_headers(carol, rpc)), "invalid_did")
    dave = make_caller(tmp, "dave")
    dave.document = copy.deepcopy(dave.document)
    dave.document["proof"]["proofValue"] = alice.document["proof"]["proofValue"]  # the e1 proof no longer verifies
    resolver.add(dave)
    challenged(await http.post(rpc, content=RAW, headers=sdk_headers(dave, rpc)), "invalid_did")
    erin = make_caller(tmp, "erin", host="erin.example", profile="plain_legacy")  # no proof: the document may change
    resolver.documents[erin.did] = {**erin.document, "authentication": []}  # key-1 is no authentication key
    challenged(await http.post(rpc, content=RAW, headers=sdk_headers(erin, rpc)), "invalid_verification_method")

    async def broken(did):
        raise RuntimeError("resolver bug")

    async with anp_gateway(resolve=broken) as (url, _):
        challenged(
            await http.post(
                f"{url}/anp/agents/echo/rpc", content=RAW, headers=sdk_headers(alice, f"{url}/anp/agents/echo/rpc")
            ),
            "invalid_did",
        )
    await healthy(http, rpc)


async def test_unreachable_did_document_is_401(tmp_path):
    nobody = make_caller(tmp_path, "nobody", host="localhost", port=free_port())  # nothing listens there
    async with anp_gateway() as (url, _):  # the default HTTPS resolver
        rpc = f"{url}/anp/agents/echo/rpc"
        async with httpx.AsyncClient(timeout=20) as http:
            resp = await http.post(rpc, content=RAW, headers=sdk_headers(nobody, rpc))
            challenged(resp, "invalid_did")
            assert resp.json()["error"]["message"] == "the DID document could not be resolved"  # nothing more
            await healthy(http, rpc)


async def test_did_documents_are_cached(gw):
    rpc, http, alice, _, resolver, _ = gw
    for _ in range(3):
        assert (await http.post(rpc, content=RAW, headers=sdk_headers(alice, rpc))).status_code == 200
    assert resolver.calls == 1


async def test_bearer_token_expires(tmp_path):
    alice = make_caller(tmp_path, "alice")
    async with anp_gateway(resolve=LocalResolver(alice), token_ttl_s=1) as (url, _):
        rpc = f"{url}/anp/agents/echo/rpc"
        async with httpx.AsyncClient(timeout=20) as http:
            first = await http.post(rpc, content=RAW, headers=sdk_headers(alice, rpc))
            assert "expires_in=1" in first.headers["authentication-info"]
            bearer = {"Authorization": first.headers["authorization"], "Content-Type": "application/json"}
            assert (await http.post(rpc, content=RAW, headers=bearer)).status_code == 200

            async def refused():
                return (await http.post(rpc, content=RAW, headers=bearer)).status_code == 401

            await wait_until(refused, timeout=10, interval=0.2)
            challenged(await http.post(rpc, content=RAW, headers=bearer), "invalid_access_token")


async def test_nonce_and_token_are_shared_across_nodes(tmp_path, redis_server):
    redis_server.flush()
    alice = make_caller(tmp_path, "alice")
    public = "http://gw.test"
    rpc_public = f"{public}/anp/agents/echo/rpc"
    cfg = dict(redis_url=redis_server.url)
    async with (
        anp_gateway(test_config(**cfg), resolve=LocalResolver(alice), public_url=public) as (url_a, _),
        anp_gateway(test_config(**cfg), resolve=LocalResolver(alice), public_url=public) as (url_b, _),
    ):
        async with httpx.AsyncClient(timeout=20) as http:
            headers = sdk_headers(alice, rpc_public)  # signed for the public URL both nodes serve
            first = await http.post(f"{url_a}/anp/agents/echo/rpc", content=RAW, headers=headers)
            assert first.status_code == 200
            replay = await http.post(f"{url_b}/anp/agents/echo/rpc", content=RAW, headers=headers)
            assert replay.status_code == 401 and 'error="invalid_nonce"' in replay.headers["www-authenticate"]
            fresh = await http.post(f"{url_b}/anp/agents/echo/rpc", content=RAW, headers=sdk_headers(alice, rpc_public))
            assert fresh.status_code == 200
            bearer = {"Authorization": first.headers["authorization"], "Content-Type": "application/json"}
            assert (await http.post(f"{url_b}/anp/agents/echo/rpc", content=RAW, headers=bearer)).status_code == 200


async def test_did_documents_resolve_over_https(tmp_path):
    import uvicorn

    port = free_port()
    frank = make_caller(tmp_path, "frank", host="localhost", port=port)
    path = (
        "/" + "/".join(frank.did.split(":")[3:]) + "/did.json"
    )  # did:wba:localhost%3Aport:agents:frank:e1_... -> /agents/frank/e1_.../did.json
    hits = []

    async def document(request):
        hits.append(request.url.path)
        return JSONResponse(frank.document)

    cert, key = self_signed(tmp_path)
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route(path, document)]),
            host="127.0.0.1",
            port=port,
            ssl_certfile=cert,
            ssl_keyfile=key,
            log_config=None,
            lifespan="off",
        )
    )
    import asyncio

    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: _started(server), timeout=10)
        # A resolver of the test's own: the gateway's egress policy is given only to its default one.
        loopback = Egress(["loopback"])
        resolver = HttpsResolver(verify=ssl.create_default_context(cafile=cert), egress=loopback)
        async with anp_gateway(resolve=resolver) as (url, _):
            rpc = f"{url}/anp/agents/echo/rpc"
            async with httpx.AsyncClient(timeout=20) as http:
                for _ in range(2):
                    resp = await http.post(rpc, content=RAW, headers=sdk_headers(frank, rpc))
                    assert resp.status_code == 200, resp.text
        assert hits == [path]  # fetched over HTTPS once, then cached
        await resolver.aclose()
        untrusted = HttpsResolver(egress=loopback)  # the self-signed certificate is not trusted by default
        with pytest.raises(Exception, match="could not be fetched"):
            await untrusted(frank.did)
        await untrusted.aclose()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _started(server) -> bool:
    return server.started


async def test_secp256k1_callers(gw):
    """k1 (path-bound) and plain_legacy documents hold secp256k1 keys: ECDSA signatures verify."""
    rpc, http, _, _, resolver, tmp = gw
    k1 = make_caller(tmp, "kay", profile="k1")
    legacy = make_caller(tmp, "lee", host="lee.example", profile="plain_legacy")
    resolver.add(k1)
    resolver.add(legacy)
    assert (await http.post(rpc, content=RAW, headers=sdk_headers(k1, rpc))).status_code == 200
    header = generate_auth_header(legacy.document, "localhost", legacy.sign, version="1.0")
    assert (await http.post(rpc, json=BODY, headers={"Authorization": header})).status_code == 200
    forged = {
        "Content-Type": "application/json",
        **generate_http_signature_headers(k1.document, rpc, "POST", legacy.sign, body=RAW),
    }
    challenged(await http.post(rpc, content=RAW, headers=forged), "invalid_signature")
