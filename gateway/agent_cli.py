"""``interlace keys ...`` and ``interlace agent ...``: keys, signed registration and revocation
from a shell.

``agent register`` reads a small human-written card (agent.yaml: name, description, version,
skills, endpoints, cost, labels, replicas), builds the record, signs it with the agent's key and
posts it; re-running bumps ``seq`` above whatever the gateway holds and keeps the name's claim
(``claimed_at``: the stored record's, or the one the gateway names when it refuses another).

``agent revoke DID`` / ``agent unrevoke DID`` / ``agent revocations`` are an operator's: they
call ``/registry/revocations`` with an admin's credential (an API key or bearer token, from
``--api-key-file FILE`` or ``INTERLACE_API_KEY``; none is needed on a loopback gateway that
authenticates nobody).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx
import yaml

from gateway.core.config import read_secret
from registry.identity import Identity, IdentityError
from registry.records import sign
from schemas.agent_record import CardError, Tombstone, record_from_card


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create or show an Ed25519 key (did:key)").add_subparsers(
        dest="action", required=True
    )
    new = keys.add_parser("new", help="write a new key file (0600) and print its DID")
    new.add_argument("file")
    new.add_argument("--force", action="store_true", help="replace an existing file")
    show = keys.add_parser("show", help="print the DID of a key file")
    show.add_argument("file")

    agent = sub.add_parser("agent", help="register and inspect agents on a gateway").add_subparsers(
        dest="action", required=True
    )

    def gateway_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gateway", default="http://127.0.0.1:8080", metavar="URL")
        p.add_argument("--token", help="registration token (env INTERLACE_REGISTRATION_TOKEN)")

    reg = agent.add_parser("register", help="sign the card's record with the key and register it")
    reg.add_argument("--key", required=True, metavar="FILE")
    reg.add_argument("--card", required=True, metavar="FILE", help="agent.yaml")
    reg.add_argument("--ttl", type=int, default=3600, help="lease in seconds (re-register before it ends)")
    reg.add_argument("--network", default="interlace")
    gateway_flags(reg)
    lst = agent.add_parser("list", help="list live agents")
    lst.add_argument("--tag")
    lst.add_argument("--protocol", choices=["mcp", "a2a", "acp", "anp", "bus"])
    lst.add_argument("-q", "--query", help="words that must all appear")
    gateway_flags(lst)
    shw = agent.add_parser("show", help="show one agent's record")
    shw.add_argument("did")
    gateway_flags(shw)
    dereg = agent.add_parser("deregister", help="deregister with a tombstone signed by the key")
    dereg.add_argument("--key", required=True, metavar="FILE")
    dereg.add_argument("--network", default="interlace")
    gateway_flags(dereg)

    def operator_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gateway", default="http://127.0.0.1:8080", metavar="URL")
        p.add_argument(
            "--api-key-file", metavar="FILE", help="an admin's API key or bearer token (env INTERLACE_API_KEY)"
        )

    rev = agent.add_parser("revoke", help="revoke a DID everywhere: its records go, it may not register (admin)")
    rev.add_argument("did")
    operator_flags(rev)
    unrev = agent.add_parser("unrevoke", help="lift a DID's revocation (admin)")
    unrev.add_argument("did")
    operator_flags(unrev)
    operator_flags(agent.add_parser("revocations", help="list the DIDs revoked (admin)"))


def run(args: argparse.Namespace, token: str | None) -> int:
    try:
        out = _dispatch(args, args.__dict__.get("token") or token)
    except (CliError, IdentityError, CardError, OSError, ValueError, yaml.YAMLError) as exc:
        print(f"interlace: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"interlace: cannot reach the gateway: {exc}", file=sys.stderr)
        return 1
    if out is not None:
        print(out if isinstance(out, str) else json.dumps(out, indent=2))
    return 0


def _dispatch(args: argparse.Namespace, token: str | None):
    if args.command == "keys":
        if args.action == "new":
            identity = Identity.generate()
            identity.save(args.file, overwrite=args.force)
            return identity.did
        return Identity.load(args.file).did
    if args.action in ("revoke", "unrevoke", "revocations"):
        return _operate(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=args.gateway.rstrip("/"), headers=headers, timeout=30) as http:
        if args.action == "register":
            return _register(http, args)
        if args.action == "list":
            params = {k: v for k, v in (("tag", args.tag), ("protocol", args.protocol), ("q", args.query)) if v}
            return _ok(http.get("/registry/agents", params=params))
        if args.action == "show":
            return _ok(http.get(f"/registry/agents/{args.did}"))
        identity = Identity.load(args.key)
        tombstone = Tombstone(
            did=identity.did,
            seq=_next_seq(_stored(http, identity.did)),
            issued_at=int(time.time()),
            network=args.network,
        )
        body = json.dumps(sign(tombstone, identity).dump())
        return _ok(
            http.request(
                "DELETE", f"/registry/agents/{identity.did}", content=body, headers={"Content-Type": "application/json"}
            )
        )


def _register(http: httpx.Client, args: argparse.Namespace):
    identity = Identity.load(args.key)
    card = yaml.safe_load(Path(args.card).read_text())
    if not isinstance(card, dict):
        raise CliError(f"{args.card} must hold a mapping (name, description, skills, endpoints)")
    stored = _stored(http, identity.did)
    # A renewal repeats the claim on the name; a new name is claimed from now.
    held = stored is not None and stored.get("name") == card.get("name")
    claimed_at = (stored.get("claimed_at") or stored.get("issued_at")) if held else None
    for _ in range(2):
        record = record_from_card(
            card, identity.did, _next_seq(stored), args.ttl, args.network, args.gateway, claimed_at=claimed_at
        )
        resp = http.post("/registry/agents", json=sign(record, identity).dump())
        error = resp.json().get("error", {}) if resp.status_code == 409 else {}
        if error.get("code") not in ("claim_mismatch", "claim_stale"):
            break
        claimed_at = error.get("claimed_at")  # the claim the gateway holds (None: from now)
    return _ok(resp)


def _stored(http: httpx.Client, did: str) -> dict | None:
    """The gateway's live record of ``did``, if it shows it."""
    resp = http.get(f"/registry/agents/{did}")
    return resp.json() if resp.status_code == 200 else None


def _next_seq(stored: dict | None) -> int:
    """Above the gateway's stored seq, and time-based so separate runs keep increasing."""
    return max((stored or {}).get("seq", 0) + 1, int(time.time() * 1000))


def _operate(args: argparse.Namespace):
    """``revoke``, ``unrevoke`` and ``revocations``, with an admin's credential."""
    credential = read_secret(args.api_key_file) if args.api_key_file else os.environ.get("INTERLACE_API_KEY")
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    with httpx.Client(base_url=args.gateway.rstrip("/"), headers=headers, timeout=30) as http:
        if args.action == "revoke":
            return _ok(http.post("/registry/revocations", json={"did": args.did}))
        if args.action == "unrevoke":
            return _ok(http.delete(f"/registry/revocations/{args.did}"))
        return _ok(http.get("/registry/revocations"))


def _ok(resp: httpx.Response):
    try:
        body = resp.json()
    except ValueError:
        body = {"error": {"message": resp.text[:500]}}
    if resp.status_code >= 400:
        err = body.get("error", {})
        raise CliError(f"gateway refused ({resp.status_code} {err.get('code', '')}): {err.get('message', '')}")
    return body
