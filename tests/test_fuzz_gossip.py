"""Fuzzing gossip: ``POST /gossip/packet`` with any body, and with envelopes a node really signed
whose SWIM messages or relayed records are fuzzed (registry/gossip: envelope.py, messages.py,
sync.py). Never a 5xx; a refusal is ``{"error": {code, message}}`` with the envelope's reason code;
what a peer relays and the registry refuses leaves it unchanged and logs no error.

The node's outbound gossip client is replaced by one that reaches no peer: a fuzzed address (an
``Alive``, a ``PingReq`` target, a push/pull member) never makes the gateway send a packet
anywhere."""

from __future__ import annotations

import time

import httpx
import pytest

pytest.importorskip("hypothesis", reason="the fuzz suite needs Hypothesis: pip install -e '.[dev]'")

from hypothesis import example, given, reject
from hypothesis import strategies as st

from registry.gossip.envelope import EnvelopeRejected, open_envelope, seal
from registry.gossip.messages import WireError, decode_packet
from registry.identity import Identity
from tests.conftest import wait_until
from tests.fixtures.fuzz import (
    TOO_DEEP,
    dumps,
    fuzz_config,
    gateway_error,
    in_process,
    ints,
    json_values,
    maybe,
    no_server_error,
    objects,
    one_field_fuzzed,
    raw_bodies,
    texts,
)
from tests.test_fuzz_registry import RECORD_FIELDS, record_body, signed

PEER = Identity.generate()
ADDR = "http://127.0.0.1:9"
CODES = {"malformed", "wrong_network", "bad_signature", "untrusted", "stale", "replayed"}

addrs = st.sampled_from([ADDR, "http://127.0.0.1:9/base", "not an address", ""])
states = maybe(st.sampled_from(["alive", "suspect", "dead", "left"]))
members = st.lists(st.one_of(st.tuples(texts, addrs, ints, states).map(list), json_values(max_leaves=3)), max_size=3)
MESSAGES = {
    "ping": {"seq": maybe(ints), "target": maybe(texts)},
    "ack": {"seq": maybe(ints)},
    "nack": {"seq": maybe(ints)},
    "ping-req": {"seq": maybe(ints), "target": maybe(texts), "target_addr": addrs},
    "alive": {"node": maybe(texts), "addr": addrs, "incarnation": maybe(ints)},
    "suspect": {"node": maybe(texts), "incarnation": maybe(ints), "accuser": maybe(texts)},
    "dead": {"node": maybe(texts), "incarnation": maybe(ints), "accuser": maybe(texts)},
    "push-pull": {
        "join": maybe(st.booleans()),
        "reply": maybe(st.booleans()),
        "members": maybe(members),
        "user_state": maybe(objects({"digest": maybe(st.dictionaries(texts, ints, max_size=3))})),
    },
    "user": {"key": maybe(texts), "payload": maybe(objects({"record": json_values(max_leaves=4), "origin": texts}))},
}
messages = st.sampled_from(sorted(MESSAGES)).flatmap(
    lambda kind: objects({"type": st.just(kind), **MESSAGES[kind]}, required=("type", *MESSAGES[kind]))
)
relayed_records = st.one_of(
    json_values(max_leaves=6),
    st.builds(
        lambda body, origin: {"record": signed(body), "origin": origin},
        one_field_fuzzed(record_body(seq=10), RECORD_FIELDS),
        maybe(texts),
    ),
)
payloads = {
    "swim": st.one_of(st.lists(messages, min_size=1, max_size=4), json_values(max_leaves=4)),
    "records": st.one_of(objects({"entries": maybe(st.lists(relayed_records, max_size=3))}), json_values(max_leaves=4)),
}


def envelope(kind: str, payload) -> dict:
    """``payload`` sealed by ``PEER`` now; a payload without canonical bytes cannot be signed
    and is no input."""
    try:
        return seal(PEER, network="interlace", node="peer", addr=ADDR, kind=kind, payload=payload, sent_at=now_ms())
    except ValueError:  # rfc8785: a float, an integer past 2^53, a key with an unpaired surrogate
        reject()


def now_ms() -> int:
    return int(time.time() * 1000)


class Unreachable(httpx.AsyncBaseTransport):
    """Every peer unreachable, as a node without a network would find them."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no packet leaves a fuzzed node", request=request)


@pytest.fixture
async def gateway():
    async with in_process(fuzz_config(gossip=True)) as gateway:
        gateway.app.state.cluster.gossip.client = httpx.AsyncClient(transport=Unreachable())
        yield gateway


async def check_packet(gateway, body: bytes) -> None:
    registry, sync = gateway.runtime.registry, gateway.app.state.cluster.sync
    before = registry.digest()
    resp = await gateway.request("POST", "/gossip/packet", content=body)
    no_server_error(resp)
    if resp.status_code >= 400:
        assert gateway_error(resp)["code"] in CODES | {"invalid_json"}
        assert registry.digest() == before
    else:
        assert resp.status_code == 204
        await wait_until(_queue_empty(sync), timeout=5)  # relayed records are applied in the background
    gateway.errors.check()


def _queue_empty(sync):
    async def empty() -> bool:
        return sync._queue.empty() and not sync._expect

    return empty


@given(body=raw_bodies)
@example(body=TOO_DEEP)
async def test_any_body(gateway, body):
    await check_packet(gateway, body)


@given(kind=st.sampled_from(["swim", "records"]), data=st.data())
async def test_signed_envelopes_with_fuzzed_payloads(gateway, kind, data):
    payload = data.draw(payloads[kind])
    await check_packet(gateway, dumps(envelope(kind, payload)))


@pytest.mark.parametrize(
    "payload",
    [
        [{"type": []}],
        [{"type": "push-pull", "join": False, "reply": False, "members": [["n", ADDR, 0, []]], "user_state": {}}],
    ],
)
async def test_payloads_that_were_server_errors(gateway, payload):
    """A node's signed packet whose message type, or a push/pull member's state, is a list (500
    before: unhashable in a set lookup)."""
    await check_packet(gateway, dumps(envelope("swim", payload)))


@given(
    body=one_field_fuzzed(
        envelope("swim", [{"type": "ping", "seq": 1, "target": "x"}]),
        ["network", "from", "node", "addr", "sent_at", "kind", "payload", "signature"],
    )
)
async def test_envelope_with_one_field_fuzzed(gateway, body):
    """An authentic envelope with one field changed: refused (malformed, bad_signature, ...)."""
    await check_packet(gateway, dumps(body))


@given(data=json_values(max_leaves=16), now=st.integers(0, 2**53))
def test_open_envelope(data, now):
    try:
        open_envelope(data, network="interlace", now_ms=now, max_age_ms=60_000)
    except EnvelopeRejected as exc:
        assert exc.code in CODES


@given(packet=st.one_of(st.lists(messages, max_size=4), json_values(max_leaves=8)))
@example(
    packet=[{"type": "push-pull", "join": False, "reply": False, "members": [["n", ADDR, 0, []]], "user_state": {}}]
)
@example(packet=[{"type": []}])
def test_decode_packet(packet):
    try:
        decode_packet(packet)
    except WireError:
        pass
