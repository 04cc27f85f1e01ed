"""Fuzzing the ANP face: JSON-RPC on ``/anp/rpc`` and ``/anp/agents/{name}/rpc`` (an authenticated
caller, fuzzed bodies and params), and its DIDWba authentication: the legacy ``DIDWba`` header
and RFC 9421 ``Signature-Input``/``Signature``/``Content-Digest`` (gateway/core/httpsig.py).

Never a 5xx or an internal error (-32603); a refused caller gets 401 with a ``DIDWba`` challenge
(or 403) in the gateway's error shape and leaves no task. DID documents come from a local
resolver only: no fuzzed DID makes the gateway fetch anything."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("hypothesis", reason="the fuzz suite needs Hypothesis: pip install -e '.[dev]'")

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.core import httpsig, strict_json
from protocols.anp import ANPOptions, mount
from protocols.anp.httpsig import parse_legacy
from tests.fixtures.anp_support import LocalResolver, make_caller, signed_post, signer
from tests.fixtures.fuzz import (
    BASE_URL,
    TOO_DEEP,
    body_json,
    dumps,
    gateway_error,
    header_values,
    in_process,
    json_values,
    jsonrpc_error,
    no_server_error,
    one_field_fuzzed,
    raw_bodies,
    request_id,
    task_ids,
    texts,
)

PATHS = st.sampled_from(["/anp/rpc", "/anp/agents/echo/rpc"])
SEND = {"jsonrpc": "2.0", "id": 1, "method": "send_message", "params": {"agent": "echo", "message": "hi", "wait_s": 2}}
SEND_FIELDS = [
    "id",
    "method",
    "params",
    *(f"params.{f}" for f in ("agent", "message", "data", "task_id", "context_id", "metadata", "wait_s")),
]
ids = st.one_of(st.integers(), texts, st.none(), st.floats(), st.booleans())
envelopes = st.builds(
    lambda rid, method, params: {"jsonrpc": "2.0", "id": rid, "method": method, "params": params},
    ids,
    st.sampled_from(["send_message", "get_task", "cancel_task", "nope"]) | texts,
    json_values(max_leaves=6),
)


@pytest.fixture
async def anp(tmp_path):
    """(gateway, headers of an authenticated caller: its bearer token from a signed first call)."""
    caller = make_caller(tmp_path, "alice")
    options = ANPOptions.from_env(resolve=LocalResolver(caller))
    async with in_process(mount=lambda app: mount(app, options)) as gateway:
        first = {"jsonrpc": "2.0", "id": 1, "method": "get_task", "params": {"task_id": "none"}}
        resp = await signed_post(gateway.client, signer(caller), f"{BASE_URL}/anp/rpc", first)
        assert resp.status_code == 200, resp.text
        yield gateway, {"Authorization": resp.headers["authorization"]}


def check_reply(msg, sent) -> bool:
    """One JSON-RPC answer; True when it is an error. jsonrpcserver echoes any number as an id."""
    rid = request_id(sent, fractions=True)
    if "error" in msg:
        jsonrpc_error(msg, rid)
        return True
    assert msg.get("jsonrpc") == "2.0" and "result" in msg and msg["id"] == rid, (msg, sent)
    return False


async def check_rpc(anp, path: str, body: bytes, sent, headers: dict | None = None) -> None:
    gateway, auth = anp
    before = await task_ids(gateway.runtime)
    resp = await gateway.request("POST", path, content=body, headers={**auth, **(headers or {})})
    no_server_error(resp)
    if resp.status_code == 204:
        return
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    reply = body_json(resp)
    if isinstance(reply, list):
        assert isinstance(sent, list) and reply, (sent, reply)
        errors = [
            check_reply(m, next((s for s in sent if request_id(s, fractions=True) == m["id"]), None)) for m in reply
        ]
        refused = all(errors)
    else:
        refused = check_reply(reply, sent if not isinstance(sent, list) else None)
    if refused:
        assert await task_ids(gateway.runtime) == before, "a refused call stored a task"
    gateway.errors.check()


@given(path=PATHS, body=raw_bodies)
@example(path="/anp/rpc", body=TOO_DEEP)
async def test_rpc_any_body(anp, path, body):
    try:
        sent = strict_json.loads(body)
    except ValueError:
        sent = None
    await check_rpc(anp, path, body, sent)


@given(path=PATHS, envelope=st.one_of(envelopes, st.lists(envelopes, min_size=1, max_size=3)))
async def test_rpc_envelopes(anp, path, envelope):
    await check_rpc(anp, path, dumps(envelope), envelope)


@given(path=PATHS, envelope=one_field_fuzzed(SEND, SEND_FIELDS))
async def test_send_message_one_field_fuzzed(anp, path, envelope):
    await check_rpc(anp, path, dumps(envelope), envelope)


# ---- DIDWba authentication --------------------------------------------------------------------

CALLER_DID = "did:wba:client.example:agents:alice"
components = st.lists(
    st.sampled_from(
        ["@method", "@target-uri", "@authority", "@path", "@query", "@status", "content-digest", "x-a", ""]
    ),
    max_size=5,
)


def _param_value(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


signature_inputs = st.one_of(
    header_values,
    st.builds(
        lambda label, comps, params: (
            f"{label}=("
            + " ".join(f'"{c}"' for c in comps)
            + ")"
            + "".join(f";{k}={_param_value(v)}" for k, v in params.items())
        ),
        st.sampled_from(["sig1", "sig2", "", "S"]),
        components,
        st.dictionaries(
            st.sampled_from(["created", "expires", "nonce", "keyid", "alg"]),
            st.one_of(
                st.integers(-(2**40), 2**40),
                st.sampled_from([int(time.time()), f"{CALLER_DID}#key-1", "did:wba:other#k", "#", "n0nce-n0nce"]),
                st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), max_size=20),
            ),
            max_size=5,
        ),
    ),
)
signatures = st.one_of(
    header_values,
    st.builds(
        lambda label, b64: f"{label}=:{b64}:",
        st.sampled_from(["sig1", "sig2"]),
        st.sampled_from(["", "AAAA", "A" * 86 + "==", "!!"]),
    ),
)
legacy = st.builds(
    lambda fields: "DIDWba " + ", ".join(f'{k}="{v}"' for k, v in fields.items()),
    st.dictionaries(
        st.sampled_from(["v", "did", "nonce", "timestamp", "verification_method", "signature"]),
        st.one_of(
            st.sampled_from(
                [CALLER_DID, "did:wba:x", "key-1", "1.1", "nan", "2024-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00"]
            ),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"'), max_size=20),
        ),
        max_size=6,
    ),
)
auth_headers = st.fixed_dictionaries(
    {},
    optional={
        "authorization": st.one_of(legacy, header_values, st.sampled_from(["Bearer ", "Bearer x", "DIDWba"])),
        "signature-input": signature_inputs,
        "signature": signatures,
        "content-digest": st.one_of(header_values, st.sampled_from(["sha-256=:AAAA:", "sha-512=:!:", "md5=:AA==:"])),
    },
)


@given(path=PATHS, headers=auth_headers, body=st.sampled_from([b"", dumps(SEND)]))
async def test_authentication_headers(anp, path, headers, body):
    """Fuzzed credentials: refused with the DIDWba challenge, never a 5xx, never a task."""
    gateway, _ = anp
    before = await task_ids(gateway.runtime)
    resp = await gateway.request("POST", path, content=body, headers=headers)
    no_server_error(resp)
    assert resp.status_code in (401, 403), (resp.status_code, resp.text[:300])
    gateway_error(resp)
    if resp.status_code == 401:
        assert resp.headers["www-authenticate"].startswith("DIDWba ")
    assert await task_ids(gateway.runtime) == before
    gateway.errors.check()


@given(headers=auth_headers, body=st.sampled_from([b"", b"{}"]))
def test_signature_parsing(headers, body):
    """RFC 9421 parsing and the checks every verifier makes: a signature or SignatureError."""
    try:
        sig = httpsig.checked(headers, body, now=time.time(), window_s=300, skew_s=60)
    except httpsig.SignatureError as exc:
        assert exc.error and str(exc)
    else:
        assert "#" in sig.keyid and isinstance(sig.params["created"], int)
        for url in ("http://localhost:8080/anp/rpc", "http://[::1]:8080/x?y"):
            try:
                httpsig.signature_base(sig.components, sig.params_text, "POST", url, headers)
            except httpsig.SignatureError:
                pass


@given(header=st.one_of(legacy, header_values))
def test_legacy_header_parsing(header):
    try:
        auth = parse_legacy(header)
    except httpsig.SignatureError:
        return
    auth.domain_fields()
    auth.signed_content("localhost", "aud")
