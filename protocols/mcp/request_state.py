"""The gateway's ``requestState`` for input-required results (2026-07-28 MRTR): signed, bound,
expiring and single-use, so that any node of the cluster can take the retry.

The spec (basic/patterns/mrtr.mdx) makes the echoed ``requestState`` attacker-controlled input
that MUST be integrity-protected when it influences anything, and recommends binding it to the
authenticated principal, a short expiry and the originating request; it adds that a state which
must be consumed at most once needs a server-side check. Ours decides what a retry resumes (a
parked upstream call, a canonical task), so it gets all four:

- **Signed with the node key.** A state is ``<payload>.<signature>``: base64url of a JSON
  payload, and the Ed25519 signature of exactly those payload characters by the minting node's
  key (``runtime.identity``), whose ``did:key`` the payload names (``iss``). The retry may reach
  any node, and each node has its own key, so a verifier needs the minter's public key and a
  reason to believe the minter is a node of its cluster: the ``did:key`` carries the key, and the
  cluster is who the node trusts: itself; the nodes of its ``--trust`` file when it has one (the
  operator's list of member nodes, the list gossip and node-signed requests use); else the nodes
  that share its backend, each of which announces its DID in the shared key/value store. Nodes
  that share Redis already trust each other with every task and session, so that announcement
  adds no one the store did not already trust; a cluster-wide HMAC secret would need a secret
  distributed to every node, which this deployment has nowhere to keep, and one leaked node
  secret would forge states for every node, where a node key forges only its own.
- **Bound to the caller**: ``sub`` is a digest of the principal's id; another caller's state is
  refused.
- **Bound to the request**: ``m`` is the method and ``r`` a digest of its target and arguments
  (tools/call: name and arguments, prompts/get: name and arguments, resources/read: the URI); a
  state presented on another request is refused.
- **Expiring**: ``exp`` (Unix seconds); a lapsed state is refused.
- **Single-use**: ``n`` is a random nonce; the first accepted retry claims it in the shared
  key/value store (``set(..., only_new=True)``, until the state would have expired anyway), so a
  replay is refused on this node and on every other node sharing the store.

Every refusal is -32602 (Invalid params), the code the spec's conformance kit expects for state
that fails verification, and happens before anything runs: a refused state changes nothing
(the nonce is claimed only once everything else verified). The payload is readable by the
client (it is signed, not encrypted): it holds ids and digests, never a secret or the caller's id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from typing import Any

from protocols.mcp.wire import INVALID_PARAMS, MCPError
from registry.did_list import load_did_list
from registry.identity import Identity, IdentityError, verify

ANNOUNCE_TTL_S = 86400  # a node's DID stays announced a day, re-announced well before
ANNOUNCE_EVERY_S = 3600
MAX_STATE = 8192  # far above any state this module mints


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def digest(value: Any) -> str:
    """A short digest of a JSON value (keys sorted: the same value has one digest)."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def request_digest(method: str, params: dict[str, Any]) -> str:
    """What identifies the originating request: its target and arguments."""
    if method == "resources/read":
        return digest({"uri": params.get("uri")})
    return digest({"name": params.get("name"), "arguments": params.get("arguments") or {}})


def refused(why: str) -> MCPError:
    return MCPError(INVALID_PARAMS, f"Invalid requestState: {why}")


class RequestStates:
    """Mints and verifies this node's request states (module docstring)."""

    def __init__(self, identity: Identity, kv: Any, *, trust_file: str | None, ttl_s: float) -> None:
        self.identity, self.kv, self.ttl_s = identity, kv, ttl_s
        self.trusted = load_did_list(trust_file) if trust_file else None
        self._announced = 0.0

    async def announce(self) -> None:
        """Say in the shared store that this node mints states (for nodes without a trust file)."""
        now = time.monotonic()
        if self._announced and now - self._announced < ANNOUNCE_EVERY_S:
            return
        await self.kv.set(f"mcp:mrtr:node:{self.identity.did}", "1", ANNOUNCE_TTL_S)
        self._announced = now

    async def mint(self, principal_id: str, method: str, params: dict[str, Any], resume: dict[str, Any]) -> str:
        """A state that lets ``principal_id`` retry ``method`` with ``params``, resuming ``resume``."""
        await self.announce()
        payload = {
            "iss": self.identity.did,
            "sub": digest(principal_id),
            "m": method,
            "r": request_digest(method, params),
            "exp": int(time.time() + self.ttl_s),
            "n": secrets.token_urlsafe(12),
            "x": resume,
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{_b64(self.identity.sign(body.encode('ascii')))}"

    async def redeem(self, state: Any, principal_id: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """What ``state`` resumes, once: MCPError -32602 when it is malformed, not signed by a
        node of the cluster, another caller's, for another request, expired or used already."""
        if not isinstance(state, str) or len(state) > MAX_STATE or state.count(".") != 1:
            raise refused("malformed")
        body, signature = state.split(".")
        try:
            payload = json.loads(_unb64(body))
            issuer = payload["iss"]
            verify(issuer, body.encode("ascii"), _unb64(signature))
        except (ValueError, binascii.Error, KeyError, TypeError, IdentityError):
            raise refused("its signature does not verify") from None
        if not await self._trusts(issuer):
            raise refused("not minted by a node of this cluster")
        if payload.get("sub") != digest(principal_id):
            raise refused("it belongs to another caller")
        if payload.get("m") != method or payload.get("r") != request_digest(method, params):
            raise refused("it belongs to another request")
        expires = payload.get("exp")
        if not isinstance(expires, int) or expires <= time.time():
            raise refused("expired")
        resume, nonce = payload.get("x"), payload.get("n")
        if not isinstance(resume, dict) or not isinstance(nonce, str):
            raise refused("malformed")
        left = max(1, int(expires - time.time()) + 1)
        if not await self.kv.set(f"mcp:mrtr:used:{nonce}", "1", left, only_new=True):
            raise refused("already used")
        return resume

    async def _trusts(self, did: str) -> bool:
        if did == self.identity.did:
            return True
        if self.trusted is not None:
            return did in self.trusted
        return await self.kv.get(f"mcp:mrtr:node:{did}") is not None
