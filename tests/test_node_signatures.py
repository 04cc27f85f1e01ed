"""Requests signed by gateway nodes (gateway/authn.py ``NodeSignatures``, gateway/core/httpsig.py):
a trusted node's signed request runs as the owner it asserts; an untrusted, unsigned, replayed,
expired, tampered or wrongly keyed one is refused with 401, and a client's own
``Interlace-On-Behalf-Of`` means nothing. A small route answers with ``principal_of`` behind the
real middleware, reached through httpx's ASGI transport."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.authn import ON_BEHALF_OF, CallerAuthentication, NodeSignatures, on_behalf_of
from gateway.core.auth import Authenticator, api_key_digest
from gateway.core.backends.embedded import EmbeddedKeyValue
from gateway.core.httpsig import DidKeyRequests, RequestSigner, did_key_method, sign_request
from gateway.core.principal import principal_of
from registry.identity import Identity

BOB_KEY = "k-bob-0123456789abcdef"
URL = "http://gw.test/whoami"


async def whoami(request: Request) -> JSONResponse:
    p = principal_of(request)
    body = await request.body()
    return JSONResponse(
        {"id": p.id, "kind": p.kind, "groups": sorted(p.groups), "claims": dict(p.claims), "body": body.decode()}
    )


@pytest.fixture
def node():
    return Identity.generate()


@pytest.fixture
def app(tmp_path, node):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"principal": "bob", "key_sha256": api_key_digest(BOB_KEY), "groups": []}]))
    nodes = NodeSignatures(DidKeyRequests(EmbeddedKeyValue()), lambda did: did == node.did, max_body_bytes=1024)
    auth = Authenticator(api_keys=keys)
    mw = [Middleware(CallerAuthentication, authenticator=auth, nodes=nodes)]
    return Starlette(routes=[Route("/whoami", whoami, methods=["GET", "POST"])], middleware=mw)


def client(app, identity: Identity | None = None) -> httpx.AsyncClient:
    auth = RequestSigner(identity, covered_headers=[ON_BEHALF_OF]) if identity else None
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test", auth=auth, timeout=5)


def refused(resp: httpx.Response, reason: str) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"].startswith("Bearer")
    error = resp.json()["error"]
    assert error["code"] == "unauthorized" and reason in error["message"], error


async def test_a_trusted_node_runs_as_the_owner_it_asserts(app, node):
    async with client(app, node) as http:
        got = await http.post("/whoami", content=b'{"x":1}', headers=on_behalf_of("alice", ["ops", "dev"]))
        assert got.json() == {
            "id": "alice",
            "kind": "forwarded",
            "groups": ["dev", "ops"],
            "claims": {"node": node.did},
            "body": '{"x":1}',  # the body read to check its digest reaches the route whole
        }
        itself = await http.get("/whoami")  # asserting no owner: the node itself
        assert itself.json()["id"] == node.did and itself.json()["kind"] == "did"


async def test_an_asserted_owner_from_an_unsigned_or_untrusted_request_is_refused_or_ignored(app):
    alice = on_behalf_of("alice")
    async with client(app) as http:
        refused(await http.get("/whoami", headers=alice), "authentication required")
        as_bob = await http.get("/whoami", headers={**alice, "Authorization": f"Bearer {BOB_KEY}"})
        assert as_bob.json()["id"] == "bob" and as_bob.json()["kind"] == "api_key"  # the header means nothing
    async with client(app, Identity.generate()) as http:  # a valid signature by a node not trusted here
        refused(await http.get("/whoami", headers=alice), "is not a trusted gateway node")
        # a signature decides alone: an API key beside it does not rescue it
        refused(await http.get("/whoami", headers={"Authorization": f"Bearer {BOB_KEY}"}), "not a trusted")


async def test_replayed_expired_tampered_and_wrong_key_signatures_are_refused(app, node):
    body = b'{"agent":"echo"}'
    owner = on_behalf_of("alice")
    keyid = did_key_method(node.did)

    def signed(identity=node, payload=body, **kw) -> dict[str, str]:
        return {**owner, **sign_request(identity, keyid, "POST", URL, payload, covered=owner, **kw)}

    async with client(app) as http:
        once = signed()
        assert (await http.post("/whoami", content=body, headers=once)).status_code == 200
        refused(await http.post("/whoami", content=body, headers=once), "the nonce has already been used")
        refused(await http.post("/whoami", content=body, headers=signed(created=int(time.time()) - 600)), "older")
        stale = signed(created=int(time.time()) - 30, lifetime_s=10)  # recent enough, but past its expires
        refused(await http.post("/whoami", content=body, headers=stale), "expired")
        refused(await http.post("/whoami", content=body, headers=signed(created=int(time.time()) + 600)), "future")
        refused(await http.post("/whoami", content=b'{"agent":"evil"}', headers=signed()), "Content-Digest")
        refused(await http.post("/whoami", content=body, headers=signed(Identity.generate())), "does not verify")
        other = signed()
        other[ON_BEHALF_OF] = json.dumps({"id": "mallory", "groups": []})  # changed after signing
        refused(await http.post("/whoami", content=body, headers=other), "does not verify")
        bare = sign_request(node, keyid, "POST", URL, body)  # the owner header added, not covered
        refused(await http.post("/whoami", content=body, headers={**bare, **owner}), "must cover")
        wba = sign_request(node, "did:wba:gw.test#key-1", "POST", URL, body)
        refused(await http.post("/whoami", content=body, headers=wba), "did:key")
        moved = sign_request(node, keyid, "POST", "http://elsewhere.test/whoami", body)
        refused(await http.post("/whoami", content=body, headers=moved), "does not verify")


async def test_malformed_assertions_and_oversized_signed_bodies(app, node):
    async with client(app, node) as http:
        for bad in (
            "not json",
            '{"groups": []}',
            '{"id": ""}',
            '{"id": "a", "groups": "ops"}',
            '{"id": "a", "groups": [1]}',
            '{"id": "system"}',
        ):
            refused(await http.get("/whoami", headers={ON_BEHALF_OF: bad}), "Interlace-On-Behalf-Of must be")
        big = await http.post("/whoami", content=b"x" * 2048)
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
