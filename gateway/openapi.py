"""``/openapi.json``: the OpenAPI 3.1 description of the registry routes, from the same pydantic
models that validate them, so the document cannot drift from the code. With caller
authentication configured it declares the security schemes and requires them for the reads and
for the operators' revocation routes."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import __version__
from schemas.agent_record import AgentRecord, Revocation, Tombstone

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def _json(schema_ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": _json("Error")} for c in codes}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    components: dict[str, Any] = {"Error": ERROR}
    for model in (AgentRecord, Tombstone, Revocation):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    did = {"name": "did", "in": "path", "required": True, "schema": {"type": "string"}}
    accepted = {
        "type": "object",
        "properties": {
            k: {"type": t}
            for k, t in (
                ("did", "string"),
                ("name", "string"),
                ("seq", "integer"),
                ("expires_at", "integer"),
                ("result", "string"),
            )
        },
    }
    components["Accepted"] = accepted
    revoke_body = {"type": "object", "required": ["did"], "properties": {"did": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Interlace registry", "version": __version__},
        "paths": {
            "/registry/agents": {
                "post": {
                    "summary": "Register or update an agent with its signed record",
                    "requestBody": {"required": True, "content": _json("AgentRecord")},
                    "responses": {
                        "201": {"description": "registered", "content": _json("Accepted")},
                        "200": {"description": "updated (higher seq)", "content": _json("Accepted")},
                        **_errors(400, 401, 403, 409, 413, 429),
                    },
                },
                "get": {
                    "summary": "List live agents",
                    "parameters": [
                        {"name": "tag", "in": "query", "schema": {"type": "string"}},
                        {"name": "protocol", "in": "query", "schema": {"enum": ["mcp", "a2a", "acp", "anp", "bus"]}},
                        {
                            "name": "q",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "words that must all appear",
                        },
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "a page of records",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "agents": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/AgentRecord"},
                                            },
                                            "total": {"type": "integer"},
                                            "next_cursor": {"type": ["string", "null"]},
                                        },
                                    }
                                }
                            },
                        },
                        **_errors(400),
                    },
                },
            },
            "/registry/agents/{did}": {
                "get": {
                    "summary": "The live record of one agent",
                    "parameters": [did],
                    "responses": {
                        "200": {"description": "the record", "content": _json("AgentRecord")},
                        **_errors(404),
                    },
                },
                "delete": {
                    "summary": "Deregister with a tombstone signed by the agent's key",
                    "parameters": [did],
                    "requestBody": {"required": True, "content": _json("Tombstone")},
                    "responses": {"200": {"description": "deregistered"}, **_errors(400, 401, 403, 404, 409, 413, 429)},
                },
            },
            "/registry/revocations": {
                "post": {
                    "summary": "Revoke an agent's DID on every node (an admin's)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": revoke_body}}},
                    "responses": {
                        "201": {"description": "the signed revocation", "content": _json("Revocation")},
                        **_errors(400, 403),
                    },
                },
                "get": {
                    "summary": "The revocations in force (an admin's)",
                    "responses": {"200": {"description": "the revocations"}, **_errors(403)},
                },
            },
            "/registry/revocations/{did}": {
                "delete": {
                    "summary": "Lift a DID's revocation (an admin's)",
                    "parameters": [did],
                    "responses": {
                        "200": {"description": "the signed lifting", "content": _json("Revocation")},
                        **_errors(403, 404),
                    },
                },
            },
        },
        "components": {"schemas": components},
    }


def security_schemes(config: Any) -> dict[str, Any]:
    """The caller authentication the gateway is configured with, as OpenAPI security schemes."""
    schemes: dict[str, Any] = {}
    if config.auth_issuer or config.api_keys:
        schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": "a JWT access token or an API key"}
    if config.auth_issuer:
        url = config.auth_issuer.rstrip("/") + "/.well-known/openid-configuration"
        schemes["oidc"] = {"type": "openIdConnect", "openIdConnectUrl": url}
    if config.api_keys:
        schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    return schemes


def secured(doc: dict[str, Any], schemes: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the schemes declared and required by the registry reads and the revocation
    routes (registrations are signed records under the admission policy)."""
    doc = copy.deepcopy(doc)
    doc["components"]["securitySchemes"] = schemes
    for route, path in doc["paths"].items():
        for method, operation in path.items():
            if method == "get" or route.startswith("/registry/revocations"):
                operation["security"] = [{name: []} for name in schemes]
                operation["responses"].update(_errors(401))
    return doc


async def serve(request: Request) -> Response:
    schemes = security_schemes(request.app.state.runtime.config)
    return JSONResponse(secured(document(), schemes) if schemes else document())
