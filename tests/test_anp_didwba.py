"""did:wba and request signatures, checked against the official ``anp`` package both ways:
what the SDK makes, the gateway verifies; what the gateway makes, the SDK verifies."""

from __future__ import annotations

import base64
import copy

import pytest
from anp.authentication.did_wba import (
    compute_multikey_fingerprint,
    generate_auth_header,
    validate_did_document_binding,
    verify_auth_header_signature,
)
from anp.authentication.http_signatures import generate_http_signature_headers, verify_http_message_signature
from anp.proof import verify_w3c_proof
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.core import httpsig
from gateway.core.httpsig import SignatureError
from protocols.anp.didwba import (
    DidError,
    check_document,
    did_for_host,
    document_url,
    find_method,
    gateway_document,
    key_of,
    parse_did,
)
from protocols.anp.httpsig import legacy_header, parse_legacy
from registry.identity import Identity
from tests.fixtures.anp_support import make_caller


def test_did_for_host_and_resolution_urls():
    assert did_for_host("gw.example.com") == "did:wba:gw.example.com"
    assert did_for_host("GW.example.com:8443") == "did:wba:gw.example.com%3A8443"
    assert document_url("did:wba:example.com") == "https://example.com/.well-known/did.json"
    assert document_url("did:wba:example.com:user:alice") == "https://example.com/user/alice/did.json"
    assert document_url("did:wba:example.com%3A3000:user:alice") == "https://example.com:3000/user/alice/did.json"
    assert parse_did("did:wba:example.com%3A3000:a") == ("example.com:3000", ["a"])
    for bad in [
        "did:web:example.com",
        "did:wba:",
        "did:wba:ex ample.com",
        "did:wba:example.com:..",
        "did:wba:a@b.com",
        "did:wba:example.com%2Fevil",
        "did:wba:[::1]",
        42,
    ]:
        with pytest.raises(DidError):
            document_url(bad)  # type: ignore[arg-type]
    with pytest.raises(DidError):
        did_for_host("evil.com/path")


def test_gateway_document_is_e1_shaped_and_verifies_with_the_sdk():
    identity = Identity.generate()
    did = did_for_host("gw.example.com:8443")
    doc = gateway_document(identity, did, "https://gw.example.com:8443/anp/ad.json")
    vm = doc["verificationMethod"][0]
    assert vm["type"] == "Multikey" and vm["id"] == f"{did}#key-1"
    assert vm["publicKeyMultibase"] == identity.did.removeprefix("did:key:")  # the node's did:key fingerprint
    assert doc["authentication"] == doc["assertionMethod"] == [f"{did}#key-1"]
    assert doc["service"] == [
        {"id": f"{did}#ad", "type": "AgentDescription", "serviceEndpoint": "https://gw.example.com:8443/anp/ad.json"}
    ]
    assert doc["proof"]["type"] == "DataIntegrityProof" and doc["proof"]["cryptosuite"] == "eddsa-jcs-2022"
    public = ed25519.Ed25519PublicKey.from_public_bytes(bytes(identity.verify_key))
    assert verify_w3c_proof(doc, public, expected_purpose="assertionMethod")
    assert validate_did_document_binding(doc, verify_proof=True)
    tampered = copy.deepcopy(doc)
    tampered["service"][0]["serviceEndpoint"] = "https://evil.example/ad.json"
    assert not verify_w3c_proof(tampered, public)


def test_sdk_documents_pass_the_binding_check_and_tampering_fails(tmp_path):
    for profile in ("e1", "k1", "plain_legacy"):
        caller = make_caller(tmp_path, f"c-{profile}", profile=profile)
        check_document(caller.document, caller.did)
        key = key_of(find_method(caller.document, f"{caller.did}#key-1"))
        assert key.curve == ("ed25519" if profile == "e1" else "secp256k1")
    e1 = make_caller(tmp_path, "e1b")
    key = key_of(find_method(e1.document, f"{e1.did}#key-1"))
    assert key.thumbprint() == compute_multikey_fingerprint(e1.key.public_key())
    other = make_caller(tmp_path, "other")
    swapped = copy.deepcopy(e1.document)
    swapped["verificationMethod"][0]["publicKeyMultibase"] = other.document["verificationMethod"][0][
        "publicKeyMultibase"
    ]
    with pytest.raises(DidError):
        check_document(swapped, e1.did)
    no_proof = {k: v for k, v in e1.document.items() if k != "proof"}
    with pytest.raises(DidError):
        check_document(no_proof, e1.did)
    with pytest.raises(DidError):
        check_document(e1.document, other.did)  # the document of another DID
    k1 = make_caller(tmp_path, "k1b", profile="k1")
    wrong = copy.deepcopy(k1.document)
    wrong["id"] = k1.did[:-4] + "AAAA"
    with pytest.raises(DidError):
        check_document(wrong, wrong["id"])


def test_key_formats():
    raw = bytes(range(32))
    b64 = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert key_of({"type": "JsonWebKey2020", "publicKeyJwk": {"kty": "OKP", "crv": "Ed25519", "x": b64}}).raw == raw
    for bad in [
        {"type": "Multikey"},
        {"type": "Unknown", "publicKeyMultibase": "z6Mk"},
        {"type": "JsonWebKey2020", "publicKeyJwk": {"kty": "OKP", "crv": "Ed25519", "x": b64, "d": b64}},
        {"type": "JsonWebKey2020", "publicKeyJwk": {"kty": "OKP", "crv": "X25519", "x": b64}},
        {"type": "Multikey", "publicKeyMultibase": "z0OIl"},
        {"type": "EcdsaSecp256k1VerificationKey2019", "publicKeyJwk": {"kty": "OKP", "crv": "Ed25519", "x": b64}},
    ]:
        with pytest.raises(DidError):
            key_of(bad)


def test_sdk_http_signatures_verify_and_tampering_fails(tmp_path):
    caller = make_caller(tmp_path, "alice")
    key = key_of(find_method(caller.document, f"{caller.did}#key-1"))
    url, body = "https://gw.example.com/anp/rpc?x=1", b'{"jsonrpc":"2.0"}'
    headers = generate_http_signature_headers(caller.document, url, "POST", caller.sign, body=body)
    lower = {k.lower(): v for k, v in headers.items()}
    sig = httpsig.parse_signature(lower)
    assert sig.did == caller.did and sig.params["nonce"] and sig.components[-1] == "content-digest"
    httpsig.check_content_digest(lower["content-digest"], body)
    assert key.verify(httpsig.signature_base(sig.components, sig.params_text, "POST", url, lower), sig.signature)
    assert not key.verify(httpsig.signature_base(sig.components, sig.params_text, "GET", url, lower), sig.signature)
    assert not key.verify(
        httpsig.signature_base(sig.components, sig.params_text, "POST", url + "2", lower), sig.signature
    )
    with pytest.raises(SignatureError):
        httpsig.check_content_digest(lower["content-digest"], body + b" ")


def test_gateway_signatures_verify_with_the_sdk():
    identity = Identity.generate()
    did = did_for_host("gw.example.com")
    doc = gateway_document(identity, did, "https://gw.example.com/anp/ad.json")
    url, body = "https://remote.example/rpc", b'{"a":1}'
    headers = httpsig.sign_request(identity, f"{did}#key-1", "POST", url, body)
    ok, message, _ = verify_http_message_signature(doc, "POST", url, headers, body)
    assert ok, message
    assert not verify_http_message_signature(doc, "POST", url, headers, b'{"a":2}')[0]
    for version in ("1.1", "1.0"):
        header = legacy_header(identity, did, "remote.example", version=version)
        assert verify_auth_header_signature(header, doc, "remote.example") == (True, "Verification successful")
        assert not verify_auth_header_signature(header, doc, "other.example")[0]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"signature-input": 'sig1=("@method");created=1;keyid="did:wba:a#k"'},
        {"signature-input": "garbage", "signature": "sig1=:AAAA:"},
        {"signature-input": 'sig1=("@method";sf);created=1', "signature": "sig1=:AAAA:"},
        {"signature-input": 'sig1=("@method");created=1', "signature": "sig1=:not base64!:"},
        {"signature-input": 'sig1=("@method");created=1', "signature": "sig2=:AAAA:"},
        {"signature-input": 'sig1=("@method";created=1', "signature": "sig1=:AAAA:"},
        {"signature-input": 'sig1=("@method");created=1;keyid="x' + "a" * 9000 + '"', "signature": "sig1=:AAAA:"},
    ],
)
def test_malformed_signature_headers_are_refused(headers):
    with pytest.raises(SignatureError):
        httpsig.parse_signature(headers)


def test_legacy_header_parsing(tmp_path):
    caller = make_caller(tmp_path, "bob")
    header = generate_auth_header(caller.document, "gw.example.com", caller.sign, version="1.0")
    auth = parse_legacy(header)
    assert auth.did == caller.did and auth.version == "1.0" and auth.domain_fields() == ["service", "aud"]
    assert parse_legacy(header.replace('v="1.0", ', "")).domain_fields() == ["aud", "service"]
    for bad in ["Basic abc", "DIDWba", 'DIDWba did="x"', "DIDWba " + "x" * 9000]:
        with pytest.raises(SignatureError):
            parse_legacy(bad)
