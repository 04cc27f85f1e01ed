import json

import pytest
from pydantic import ValidationError

from registry.identity import Identity, b64url_encode
from registry.records import RecordRejected, check_fresh, sign, verify_signature
from schemas.agent_record import (
    AgentRecord,
    CardError,
    Endpoints,
    Skill,
    Tombstone,
    canonical_bytes,
    record_from_card,
)

NOW = 1_700_000_000
NET = "test-net"

CARD = {
    "name": "summarizer",
    "description": "Summarizes text — «quickly»",
    "version": "1.2.0",
    "skills": [
        {
            "id": "summarize",
            "name": "Summarize",
            "description": "Short summary",
            "tags": ["text", "summary"],
            "input_modes": ["text/plain"],
            "output_modes": ["text/plain", "application/json"],
            "examples": ["summarize this article"],
        }
    ],
    "endpoints": {"a2a": "http://127.0.0.1:9000/a2a", "bus": "summarizer"},
    "cost": 1500,
    "labels": {"region": "eu", "team": "nlp"},
}


@pytest.fixture
def ident():
    return Identity.generate()


@pytest.fixture
def record(ident):
    return record_from_card(CARD, ident.did, seq=1, ttl=3600, network=NET, home_node="node-a", now=NOW)


@pytest.fixture
def signed(record, ident):
    return sign(record, ident)


def tombstone(did, seq=2):
    return Tombstone(did=did, seq=seq, issued_at=NOW, network=NET)


def reparse(model, **changes):
    """Apply a change to the wire JSON and parse it back, as a tamperer would."""
    data = json.loads(model.model_dump_json())
    for key, fn in changes.items():
        data[key] = fn(data[key])
    return type(model).model_validate(data)


# --- building and parsing --------------------------------------------------------------------


def test_record_from_card(record, ident):
    assert record.did == ident.did
    assert record.issued_at == NOW and record.expires_at == NOW + 3600
    assert record.skills[0].tags == ["text", "summary"]
    assert record.endpoints.a2a == "http://127.0.0.1:9000/a2a" and record.endpoints.mcp is None
    assert record.signature is None


def test_card_minimal_defaults(ident):
    card = {"name": "echo", "version": "1", "skills": [{"id": "echo", "name": "Echo"}], "endpoints": {"bus": "echo"}}
    r = record_from_card(card, ident.did, 0, 60, NET, "node-a", now=NOW)
    assert r.skills[0].input_modes == ["text/plain"] and r.labels == {} and r.cost is None


@pytest.mark.parametrize(
    "change, match",
    [
        ({"cost": 1.5}, "floating-point numbers are not allowed .*at cost"),
        ({"version": 1.0}, "floating-point"),
        ({"version": 2}, "version: Input should be a valid string"),
        ({"endpoints": {}}, "at least one endpoint"),
        ({"endpoints": {"mcp": "file:///etc/passwd"}}, "endpoints.mcp"),
        ({"skills": []}, "skills"),
        ({"name": "has space"}, "name"),
        ({"extra": 1}, "unknown agent card field"),
        ({"cost": True}, "cost"),
        ({"cost": -1}, "cost"),
        ({"labels": {"a": 1}}, "labels.a"),
    ],
)
def test_bad_cards(ident, change, match):
    with pytest.raises(CardError, match=match):
        record_from_card(CARD | change, ident.did, 1, 60, NET, "node-a", now=NOW)


def test_bad_card_shape_and_ttl(ident):
    with pytest.raises(CardError, match="mapping"):
        record_from_card([], ident.did, 1, 60, NET, "node-a")  # type: ignore[arg-type]
    with pytest.raises(CardError, match="ttl"):
        record_from_card(CARD, ident.did, 1, 0, NET, "node-a")


def test_card_lists_every_problem(ident):
    with pytest.raises(CardError) as e:
        bad = CARD | {"version": "", "cost": -5}
        record_from_card(bad, ident.did, 1, 60, NET, "node-a", now=NOW)
    assert "version" in str(e.value) and "cost" in str(e.value)


@pytest.mark.parametrize(
    "path",
    [
        ("cost",),
        ("seq",),
        ("labels", "region"),
        ("skills", 0, "examples", 0),
        ("skills", 0, "name"),
        ("endpoints", "bus"),
    ],
)
def test_float_rejected_anywhere(signed, path):
    data = json.loads(signed.model_dump_json())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = 1.0
    with pytest.raises(ValidationError, match="floating-point numbers are not allowed"):
        AgentRecord.model_validate(data)
    with pytest.raises(ValidationError, match="floating-point numbers are not allowed"):
        AgentRecord.model_validate_json(json.dumps(data))


def test_float_rejected_in_tombstone(ident):
    with pytest.raises(ValidationError, match="floating-point"):
        Tombstone.model_validate_json(json.dumps(tombstone(ident.did).dump() | {"seq": 2.0}))


def test_no_coercion(signed):
    for key, value in (("seq", "1"), ("seq", True), ("name", 5), ("issued_at", "1700000000")):
        with pytest.raises(ValidationError):
            reparse(signed, **{key: lambda _, v=value: v})


def test_unknown_fields_rejected(signed, ident):
    data = json.loads(signed.model_dump_json())
    with pytest.raises(ValidationError, match="extra"):
        AgentRecord.model_validate(data | {"trust": "high"})
    data["skills"][0]["priority"] = "1"
    with pytest.raises(ValidationError, match="extra"):
        AgentRecord.model_validate(data)
    with pytest.raises(ValidationError, match="extra"):
        Endpoints.model_validate({"bus": "x", "grpc": "http://x"})
    with pytest.raises(ValidationError, match="extra"):
        Tombstone.model_validate(tombstone(ident.did).dump() | {"reason": "bye"})


def test_bounds(signed):
    with pytest.raises(ValidationError):
        reparse(signed, description=lambda _: "x" * 5000)
    with pytest.raises(ValidationError):
        reparse(signed, skills=lambda s: s * 65)
    with pytest.raises(ValidationError):
        reparse(signed, seq=lambda _: 2**53)
    with pytest.raises(ValidationError, match="expires_at"):
        reparse(signed, expires_at=lambda _: NOW)
    with pytest.raises(ValidationError, match="unique"):
        reparse(signed, skills=lambda s: s * 2)


def test_deeply_nested_unknown_input_is_a_validation_error(signed):
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValidationError):
        AgentRecord.model_validate(json.loads(signed.model_dump_json()) | {"x": deep})


def test_json_round_trip_every_model(signed, ident):
    t = sign(tombstone(ident.did), ident)
    models = [signed, t, signed.skills[0], signed.endpoints]
    for m in models:
        assert type(m).model_validate_json(m.model_dump_json()) == m
        assert type(m).model_validate_json(json.dumps(m.dump())) == m
        assert type(m).model_validate(m.dump()) == m
    assert Skill.model_validate(signed.skills[0].dump()).tags == ["text", "summary"]


# --- canonical bytes ------------------------------------------------------------------------


def test_canonical_bytes_exclude_signature(record, signed):
    assert canonical_bytes(record) == canonical_bytes(signed)
    assert b"signature" not in canonical_bytes(signed)


def test_canonical_bytes_stable_under_key_order(signed):
    data = json.loads(signed.model_dump_json())

    def reverse(v):
        if isinstance(v, dict):
            return {k: reverse(v[k]) for k in reversed(list(v))}
        return [reverse(x) for x in v] if isinstance(v, list) else v

    shuffled = AgentRecord.model_validate_json(json.dumps(reverse(data)))
    assert list(json.loads(json.dumps(reverse(data)))) != list(data)
    assert canonical_bytes(shuffled) == canonical_bytes(signed)
    verify_signature(shuffled)


def test_canonical_bytes_are_jcs(ident):
    t = tombstone(ident.did)
    expected = f'{{"did":"{ident.did}","issued_at":{NOW},"network":"{NET}","seq":2,"type":"tombstone"}}'
    assert canonical_bytes(t) == expected.encode()


def test_canonical_bytes_keep_non_ascii_unescaped(record):
    assert "«quickly»".encode() in canonical_bytes(record)


# --- signing and verification ---------------------------------------------------------------


def test_sign_verify(signed, ident):
    assert signed.signature is not None and len(signed.signature) == 86
    verify_signature(signed)
    verify_signature(AgentRecord.model_validate_json(signed.model_dump_json()))


def test_sign_verify_tombstone(ident):
    t = sign(tombstone(ident.did), ident)
    verify_signature(t)
    with pytest.raises(RecordRejected) as e:
        verify_signature(reparse(t, seq=lambda s: s + 1))
    assert e.value.reason_code == "bad_signature"


@pytest.mark.parametrize(
    "field, change",
    [
        ("description", lambda d: d + "!"),
        ("skills", lambda s: [s[0] | {"tags": s[0]["tags"] + ["admin"]}]),
        ("skills", lambda s: [s[0] | {"output_modes": ["text/html"]}]),
        ("seq", lambda s: s + 1),
        ("expires_at", lambda e: e + 10**6),
        ("endpoints", lambda e: e | {"a2a": "http://evil.example/a2a"}),
        ("endpoints", lambda e: e | {"mcp": "http://evil.example/mcp"}),
        ("cost", lambda c: c - 1),
        ("labels", lambda labels: labels | {"team": "ops"}),
        ("home_node", lambda _: "node-b"),
        ("network", lambda _: "other-net"),
    ],
)
def test_tamper_fails(signed, field, change):
    with pytest.raises(RecordRejected) as e:
        verify_signature(reparse(signed, **{field: change}))
    assert e.value.reason_code == "bad_signature"


def test_tampered_name_fails(ident):
    card = {**CARD, "endpoints": {"a2a": "http://127.0.0.1:9000/a2a"}}  # a bus endpoint must carry the name
    signed = sign(record_from_card(card, ident.did, seq=1, ttl=3600, network=NET, home_node="n", now=NOW), ident)
    with pytest.raises(RecordRejected, match="bad_signature"):
        verify_signature(reparse(signed, name=lambda _: "impostor"))


def test_dropping_optional_field_fails(signed):
    data = json.loads(signed.model_dump_json())
    del data["cost"]
    with pytest.raises(RecordRejected, match="bad_signature"):
        verify_signature(AgentRecord.model_validate(data))


def test_signature_swapped_from_other_record_fails(signed, ident):
    other = sign(signed.model_copy(update={"seq": 2, "signature": None}), ident)
    with pytest.raises(RecordRejected, match="bad_signature"):
        verify_signature(signed.model_copy(update={"signature": other.signature}))


def test_signing_for_another_did_is_did_mismatch(record):
    with pytest.raises(RecordRejected) as e:
        sign(record, Identity.generate())
    assert e.value.reason_code == "did_mismatch"


def test_record_signed_by_foreign_key_fails(record):
    """Bypassing sign()'s check: the DID's key did not sign, so verification fails."""
    forged = b64url_encode(Identity.generate().sign(canonical_bytes(record)))
    with pytest.raises(RecordRejected) as e:
        verify_signature(record.model_copy(update={"signature": forged}))
    assert e.value.reason_code == "bad_signature"


def test_relabelled_did_fails(signed):
    """A relay that swaps in its own DID cannot reuse the agent's signature."""
    with pytest.raises(RecordRejected, match="bad_signature"):
        verify_signature(signed.model_copy(update={"did": Identity.generate().did}))


@pytest.mark.parametrize(
    "did",
    [
        "did:web:example.com",
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooW",
        "did:key:z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW",
    ],
)
def test_malformed_did(signed, did):
    with pytest.raises(RecordRejected) as e:
        verify_signature(signed.model_copy(update={"did": did}))
    assert e.value.reason_code == "malformed_did"


def test_unsigned(record):
    with pytest.raises(RecordRejected) as e:
        verify_signature(record)
    assert e.value.reason_code == "unsigned"


def test_signature_format_enforced_by_schema(signed):
    for bad in ("abc", signed.signature + "=", signed.signature[:-1] + "+"):
        with pytest.raises(ValidationError):
            reparse(signed, signature=lambda _, b=bad: b)


def test_did_syntax_enforced_by_schema(signed):
    for bad in ("", "key:z6Mk", "did:KEY:z6Mk", "did:key:" + "z" * 300):
        with pytest.raises(ValidationError):
            reparse(signed, did=lambda _, b=bad: b)


# --- freshness ------------------------------------------------------------------------------


def test_check_fresh_accepts_current(signed, ident):
    check_fresh(signed, NET, now=NOW, skew_s=300)
    check_fresh(signed, NET, now=NOW - 300, skew_s=300)  # our clock a little behind
    check_fresh(signed, NET, now=NOW + 3600, skew_s=300)  # lease end within skew
    check_fresh(signed, NET, now=NOW + 100, skew_s=300, max_age_s=300)
    check_fresh(tombstone(ident.did), NET, now=NOW + 10**6, skew_s=300)  # tombstones do not expire


@pytest.mark.parametrize(
    "network, now, kwargs, code",
    [
        ("other-net", NOW, {}, "wrong_network"),
        (NET, NOW - 301, {}, "issued_in_future"),
        (NET, NOW + 3600 + 300, {}, "expired"),
        (NET, NOW + 301, {"max_age_s": 300}, "stale"),
    ],
)
def test_check_fresh_codes(signed, network, now, kwargs, code):
    with pytest.raises(RecordRejected) as e:
        check_fresh(signed, network, now=now, skew_s=300, **kwargs)
    assert e.value.reason_code == code


def test_check_fresh_tombstone_codes(ident):
    t = tombstone(ident.did)
    for network, now, kwargs, code in [
        ("other-net", NOW, {}, "wrong_network"),
        (NET, NOW - 301, {}, "issued_in_future"),
        (NET, NOW + 400, {"max_age_s": 300}, "stale"),
    ]:
        with pytest.raises(RecordRejected) as e:
            check_fresh(t, network, now=now, skew_s=300, **kwargs)
        assert e.value.reason_code == code
