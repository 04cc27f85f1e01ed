"""``/registry/revocations``: an operator revokes an agent's DID, or lifts the revocation.

  POST   /registry/revocations         {"did": ...}  201 the signed revocation, and what it dropped
  DELETE /registry/revocations/{did}                 200 the signed lifting; 404 if not revoked
  GET    /registry/revocations                       200 {"revocations": [...]} (in force only)

Every route needs a principal of the admin group (``--admin-group``, default ``admin``; on a
loopback gateway that authenticates nobody the local principal is one), and the policy's
``admin`` action on the target ``{did}`` (``runtime.allows``), so a policy may narrow who revokes
what; else 403 (``forbidden`` or ``denied_by_policy``), audited like every decision here
(action ``admin``, target the DID).

A revocation is signed by this node's key (``Registry.revoke``) and travels the store feed and
gossip to every node, where the DID's record is dropped and any registration by it is refused
(403 ``revoked``) until it is lifted; nodes believe a relayed revocation only from a node they
trust (``gateway.cluster``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core import audit
from gateway.core.http import HttpError, json_response, read_model
from gateway.core.policy import Action, Target
from gateway.core.principal import principal_of
from schemas.agent_record import Did, Revocation


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    did: Did


def _operator(request: Request, did: str | None) -> None:
    """403 unless the caller may administer revocations (of ``did``; None: all of them)."""
    rt = request.app.state.runtime
    caller = principal_of(request)
    if not caller.is_admin(rt.config.admin_group):
        audit.record(caller, "admin", did, "denied")
        raise HttpError(403, "forbidden", f"revocations are for principals of the {rt.config.admin_group!r} group")
    if not rt.allows(caller, Action.ADMIN, Target(did=did)):
        audit.record(caller, "admin", did, "denied")
        raise HttpError(403, "denied_by_policy", "this gateway's policy does not let the caller administer that DID")


def _body(revocation: Revocation, **extra: object) -> dict:
    return {**revocation.dump(), **extra}


async def revoke(request: Request) -> Response:
    did = (await read_model(request, RevokeBody)).did
    _operator(request, did)
    rt = request.app.state.runtime
    dropped = rt.registry.get(did)
    revocation = await rt.registry.revoke(did, rt.identity)
    audit.record(principal_of(request), "admin", did, "ok")
    return json_response(_body(revocation, dropped=dropped.name if dropped is not None else None), 201)


async def unrevoke(request: Request) -> Response:
    did = request.path_params["did"]
    _operator(request, did)
    rt = request.app.state.runtime
    if not rt.registry.revoked(did):
        raise HttpError(404, "not_found", f"{did} is not revoked")
    revocation = await rt.registry.revoke(did, rt.identity, revoked=False)
    audit.record(principal_of(request), "admin", did, "ok")
    return json_response(_body(revocation))


async def list_revocations(request: Request) -> Response:
    _operator(request, None)
    held = request.app.state.runtime.registry.revocations()
    return json_response({"revocations": [r.dump() for r in sorted(held, key=lambda r: r.did) if r.revoked]})


routes = [
    Route("/registry/revocations", revoke, methods=["POST"]),
    Route("/registry/revocations", list_revocations, methods=["GET"]),
    Route("/registry/revocations/{did}", unrevoke, methods=["DELETE"]),
]
