"""``/registry/agents``: register (signed record), list/search, get, deregister (signed tombstone).

Writes pass the admission policy first (open / token / allowlist) and a per-client token bucket
(429 with Retry-After); then the signature is verified, then the operator's policy judges the
write (action ``register``: who may register, renew or deregister which names): its principal is
the DID that signed it (``Principal.for_did``), its target the record (``Target.of_record``; for a
deregistration, the live record it removes); a write the policy denies is a 403
``denied_by_policy`` naming the DID and the agent name. Then the registry's acceptance rules
(registry/service.py), names included (registry/names.py): a name belongs to the DID that
registered it first and to the replicas that DID's record names, so any other DID gets a 409
``name_taken``; a renewal that does not repeat its claim's ``claimed_at`` gets a 409
``claim_mismatch`` and a new claim dated in the past a 409 ``claim_stale`` (both name the
``claimed_at`` to sign: the time to repeat, or null for "now"); a revoked DID gets a 403
``revoked``; a lease over ``--max-lease`` a 400 ``lease_too_long``. A record whose
``mcp``/``a2a``/``acp``/``anp`` endpoint the gateway's egress policy refuses (gateway/core/egress.py;
as far as can be told at registration: a literal address, a name that resolves) is a 400
``endpoint_not_allowed``, before it can make the gateway connect anywhere. Every refusal is a 4xx
JSON error whose ``code`` names the reason; the stored record is unchanged. Writes are in the
audit log (``register`` / ``deregister``, the agent's name, ``ok``, ``denied`` or the refusal's
code). The policy judges writes made here: records relayed by gossip were judged by the node
they were written at (the name rules, revocations and the lease cap apply to them too); the
admission policy judges them here as well (``relay_refusal``, called by the gossip layer), and
their endpoints meet the egress policy when they are dialled.

Reads (list and get) act for the authenticated caller: they show only the records of agents the
caller may call (the policy's ``call``: what a caller may call is all it sees), and a record it
may not call is a 404 like one that is not registered.
"""

from __future__ import annotations

import hmac
import logging
import math

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core import audit
from gateway.core.egress import EgressRefused
from gateway.core.http import HttpError, json_response, read_json, validation_errors
from gateway.core.policy import Action, Target
from gateway.core.principal import Principal, principal_of
from registry.records import RecordRejected
from registry.service import PROTOCOLS, Registry, parse_signed
from schemas.agent_record import AgentRecord, Tombstone

log = logging.getLogger("interlace.registry")


def _bearer(request: Request) -> str | None:
    given = request.headers.get("interlace-registration-token")
    if given:
        return given
    auth = request.headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else None


def _admit(request: Request, did: str) -> None:
    rt = request.app.state.runtime
    client = request.client.host if request.client else "?"
    wait = request.app.state.registry_writes.take(client)
    if wait:
        raise HttpError(429, "rate_limited", "too many registry writes; slow down", retry_after=math.ceil(wait))
    if rt.admission == "token":
        token = _bearer(request)
        if token is None:
            raise HttpError(401, "unauthorized", "a registration token is required")
        if not hmac.compare_digest(token.encode(), rt.config.registration_token.encode()):
            raise HttpError(403, "forbidden", "the registration token is not valid")
    elif rt.admission == "allowlist" and did not in request.app.state.allowlist:
        raise HttpError(403, "not_allowed", f"{did} is not on this gateway's allowlist")


async def _read_signed(request: Request, expected: type) -> AgentRecord | Tombstone:
    limit = request.app.state.runtime.config.max_record_bytes
    if len(await request.body()) > limit:
        raise HttpError(413, "record_too_large", f"a record may be at most {limit} bytes")
    data = await read_json(request)
    try:
        model = parse_signed(data)
    except ValidationError as exc:
        raise HttpError(
            400, "invalid_record", "the record does not match the schema", errors=validation_errors(exc)
        ) from None
    if not isinstance(model, expected):
        raise HttpError(400, "invalid_record", f"expected a {expected.__name__}")
    return model


# Refusals that conflict with what the registry holds (409) or with an operator's decision (403);
# every other refusal is about the record itself (400).
_REJECTED_STATUS = {"stale_seq": 409, "name_taken": 409, "claim_mismatch": 409, "claim_stale": 409, "revoked": 403}


def _rejected(exc: RecordRejected) -> HttpError:
    return HttpError(_REJECTED_STATUS.get(exc.reason_code, 400), exc.reason_code, str(exc), **exc.details)


def _judge(request: Request, model: AgentRecord | Tombstone, record: AgentRecord, action: str) -> None:
    """Verify ``model``'s signature, then put the write to the policy: may the DID that signed it
    register (``action``: register or deregister) the agent of ``record``? 403 if not (audited)."""
    rt = request.app.state.runtime
    try:
        rt.registry.verify(model)  # the policy judges only what its DID really asked
    except RecordRejected as exc:
        raise _rejected(exc) from None
    principal = Principal.for_did(model.did)
    if not rt.allows(principal, Action.REGISTER, Target.of_record(record)):
        audit.record(principal, action, record.name, "denied")
        raise HttpError(
            403,
            "denied_by_policy",
            f"this gateway's policy does not let {model.did} {action} an agent named {record.name!r}",
        )


async def _check_endpoints(request: Request, record: AgentRecord) -> None:
    """400 ``endpoint_not_allowed`` for an endpoint the egress policy refuses (audited; the
    reason is logged, not told: it would say what an internal name resolves to)."""
    egress = request.app.state.runtime.egress
    for kind in ("mcp", "a2a", "acp", "anp"):
        url = getattr(record.endpoints, kind)
        if url is None:
            continue
        try:
            await egress.check_endpoint(str(url))
        except EgressRefused as exc:
            log.info(
                "endpoint refused by the egress policy", extra={"did": record.did, "kind": kind, "error": str(exc)}
            )
            audit.record(Principal.for_did(record.did), "register", record.name, "endpoint_not_allowed")
            raise HttpError(
                400, "endpoint_not_allowed", f"the {kind} endpoint is not allowed by this gateway's egress policy"
            ) from None


async def _submit(request: Request, model: AgentRecord | Tombstone, name: str, action: str) -> str:
    registry: Registry = request.app.state.runtime.registry
    principal = Principal.for_did(model.did)
    try:
        outcome = await registry.submit(model)
    except RecordRejected as exc:
        audit.record(principal, action, name, exc.reason_code)
        raise _rejected(exc) from None
    audit.record(principal, action, name, "ok")
    return outcome


async def register(request: Request) -> Response:
    record = await _read_signed(request, AgentRecord)
    _admit(request, record.did)
    _judge(request, record, record, "register")
    await _check_endpoints(request, record)
    outcome = await _submit(request, record, record.name, "register")
    body = {
        "did": record.did,
        "name": record.name,
        "seq": record.seq,
        "expires_at": record.expires_at,
        "result": outcome,
    }
    return json_response(
        body, 201 if outcome == "created" else 200, headers={"Location": f"/registry/agents/{record.did}"}
    )


async def deregister(request: Request) -> Response:
    tombstone = await _read_signed(request, Tombstone)
    did = request.path_params["did"]
    if tombstone.did != did:
        raise HttpError(400, "did_mismatch", "the tombstone is for another DID than the URL names")
    _admit(request, did)
    current = request.app.state.runtime.registry.get(did)
    if current is None:
        raise HttpError(404, "not_found", f"no live record for {did}")
    _judge(request, tombstone, current, "deregister")
    await _submit(request, tombstone, current.name, "deregister")
    return json_response({"did": did, "seq": tombstone.seq, "result": "deleted"})


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise HttpError(400, "invalid_request", f"{name} must be an integer in [{low}, {high}]")
    return int(raw)


async def list_agents(request: Request) -> Response:
    q = request.query_params
    protocol = q.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        raise HttpError(400, "invalid_request", f"protocol must be one of {', '.join(PROTOCOLS)}")
    limit = _int_param(request, "limit", 50, 1, 500)
    offset = _int_param(request, "cursor", 0, 0, 10**9)
    rt, caller = request.app.state.runtime, principal_of(request)
    found = rt.registry.search(tag=q.get("tag"), protocol=protocol, text=q.get("q"))
    found = [r for r in found if rt.may_call(caller, r)]
    page = found[offset : offset + limit]
    nxt = str(offset + limit) if offset + limit < len(found) else None
    return json_response({"agents": [r.dump() for r in page], "total": len(found), "next_cursor": nxt})


async def get_agent(request: Request) -> Response:
    rt = request.app.state.runtime
    record = rt.registry.get(request.path_params["did"])
    if record is not None and not rt.may_call(principal_of(request), record):
        record = None  # not the caller's to see: as if it were not registered
    if record is None:
        raise HttpError(404, "not_found", f"no live record for {request.path_params['did']}")
    body = record.dump()
    for extra in request.app.state.record_annotations:
        body.update(extra(record))
    return json_response(body)


def relay_refusal(
    admission: str, allowlist: frozenset[str], trusted_nodes: frozenset[str] | None, did: str, via_did: str
) -> str | None:
    """Why this node's admission refuses a record (or tombstone) of ``did`` relayed by gossip from
    the node whose key is ``via_did``; None when it is admitted. The policy of ``_admit``: an
    allowlist admits the DIDs it lists wherever their records come from; a registration token
    proves nothing once relayed, so a token network admits relayed records only from the nodes
    of its ``--trust`` list (from none without one); ``open`` admits all."""
    if admission == "allowlist" and did not in allowlist:
        return "not_allowed"
    if admission == "token" and (trusted_nodes is None or via_did not in trusted_nodes):
        return "untrusted_node"
    return None


routes = [
    Route("/registry/agents", register, methods=["POST"]),
    Route("/registry/agents", list_agents, methods=["GET"]),
    Route("/registry/agents/{did}", get_agent, methods=["GET"]),
    Route("/registry/agents/{did}", deregister, methods=["DELETE"]),
]
