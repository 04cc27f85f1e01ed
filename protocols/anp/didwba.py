"""did:wba: identifiers, verification keys, Data Integrity proofs and the gateway's DID document.

* ``did:wba:<host>[%3A<port>][:<path>...]`` resolves (over HTTPS only) to
  ``https://<host>[:<port>]/.well-known/did.json``, or ``https://<host>/<path...>/did.json``.
* Keys accepted for callers: Ed25519 (``Multikey``, ``Ed25519VerificationKey2018/2020``,
  ``JsonWebKey2020`` OKP), secp256k1 (``EcdsaSecp256k1VerificationKey2019``, Multikey ``0xe7``)
  and P-256 (``EcdsaSecp256r1VerificationKey2019``, Multikey ``0x1200``). Ed25519 uses PyNaCl;
  the two ECDSA curves need ``cryptography`` (the ``didwba`` extra) and are refused without it.
* Path binding as the ``anp`` package checks it: a DID whose last segment is ``e1_<thumbprint>``
  must carry an ``eddsa-jcs-2022`` DataIntegrityProof by an assertionMethod Ed25519 key whose
  RFC 7638 JWK thumbprint is that suffix; ``k1_<thumbprint>`` needs an authentication secp256k1
  key with that thumbprint. Other DIDs (a bare host, ``plain_legacy``) bind nothing.
* The gateway's document is the ``e1`` shape the ``anp`` package creates (without its E2EE keys):
  ``#key-1`` is a Multikey Ed25519 key (the node's key: its ``publicKeyMultibase`` is the node's
  did:key fingerprint), listed under authentication and assertionMethod, plus a ``service`` entry
  of type AgentDescription and an ``eddsa-jcs-2022`` proof whose proofValue is base64url, as
  ``anp.proof.generate_w3c_proof`` writes it (the multibase ``z`` form is accepted on input).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import nacl.exceptions
import nacl.signing
import rfc8785

from registry.identity import Identity, b58decode, b58encode, b64url_encode

DID_WBA = "did:wba:"
PROOF_TYPE = "DataIntegrityProof"
CRYPTOSUITE = "eddsa-jcs-2022"
ED25519_TYPES = {"Ed25519VerificationKey2018", "Ed25519VerificationKey2020"}
KEY_TYPES = ED25519_TYPES | {
    "Multikey",
    "JsonWebKey2020",
    "EcdsaSecp256k1VerificationKey2019",
    "EcdsaSecp256r1VerificationKey2019",
}
CONTEXTS = [
    "https://www.w3.org/ns/did/v1",
    "https://w3id.org/security/data-integrity/v2",
    "https://w3id.org/security/multikey/v1",
]
_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._~%-]{1,128}$")
_MAX_DID = 512


class DidError(ValueError):
    """A malformed DID, document, key or proof."""


# ---- identifiers ---------------------------------------------------------------------------


def did_for_host(host: str, path: list[str] | None = None) -> str:
    """``gw.example.com:8443`` -> ``did:wba:gw.example.com%3A8443`` (plus ``:segment``s)."""
    host = host.strip().lower()
    if not _HOST.fullmatch(host):
        raise DidError(f"not a host name (with an optional port): {host[:80]!r}")
    name, _, port = host.partition(":")
    did = DID_WBA + name + (quote(":" + port) if port else "")
    for seg in path or []:
        if not _SEGMENT.fullmatch(seg):
            raise DidError(f"bad DID path segment {seg[:80]!r}")
        did += ":" + seg
    return did


def parse_did(did: str) -> tuple[str, list[str]]:
    """The host (with port) and path segments of a did:wba; raises DidError."""
    if not isinstance(did, str) or not did.startswith(DID_WBA) or len(did) > _MAX_DID:
        raise DidError(f"not a did:wba: {str(did)[:80]!r}")
    parts = did[len(DID_WBA) :].split(":")
    host = unquote(parts[0]).lower()
    if not _HOST.fullmatch(host):
        raise DidError(f"did:wba host is not a host name: {host[:80]!r}")
    path = parts[1:]
    for seg in path:
        if not _SEGMENT.fullmatch(seg) or unquote(seg) in (".", ".."):
            raise DidError(f"bad did:wba path segment {seg[:80]!r}")
    return host, path


def document_url(did: str) -> str:
    """Where a did:wba document lives (always HTTPS)."""
    host, path = parse_did(did)
    if path:
        return f"https://{host}/" + "/".join(path) + "/did.json"
    return f"https://{host}/.well-known/did.json"


# ---- keys ----------------------------------------------------------------------------------


def b64url_decode_lenient(text: str) -> bytes:
    """base64url with or without padding (signatures from other implementations)."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise DidError("not base64url")
    try:
        return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise DidError("not base64url") from None


def _b64url_32(value: Any, what: str) -> bytes:
    raw = b64url_decode_lenient(value) if isinstance(value, str) else b""
    if len(raw) != 32:
        raise DidError(f"{what} must be 32 bytes of base64url")
    return raw


def _ec():
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils
    except ImportError:  # pragma: no cover - the didwba extra is part of dev
        raise DidError(
            "secp256k1/P-256 keys need the 'cryptography' package (pip install 'interlace[didwba]')"
        ) from None
    return ec, hashes, utils


@dataclass(frozen=True)
class PublicKey:
    """A verification key: ``curve`` is ed25519, secp256k1 or p256; ``raw`` the key or SEC1 point."""

    curve: str
    raw: bytes

    def verify(self, message: bytes, signature: bytes) -> bool:
        if self.curve == "ed25519":
            if len(signature) != 64:
                return False
            try:
                nacl.signing.VerifyKey(self.raw).verify(message, signature)
                return True
            except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
                return False
        ec, hashes, utils = _ec()
        from cryptography.exceptions import InvalidSignature

        curve = ec.SECP256K1() if self.curve == "secp256k1" else ec.SECP256R1()
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(curve, self.raw)
            if len(signature) == 64:  # IEEE P1363 r||s, as ANP sends it
                der = utils.encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                )
            else:
                der = signature
            key.verify(der, message, ec.ECDSA(hashes.SHA256()))
            return True
        except (InvalidSignature, ValueError, TypeError):
            return False

    def jwk(self) -> dict[str, str]:
        """The minimal public JWK (the members RFC 7638 hashes)."""
        if self.curve == "ed25519":
            return {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(self.raw)}
        ec, _, _ = _ec()
        curve = ec.SECP256K1() if self.curve == "secp256k1" else ec.SECP256R1()
        nums = ec.EllipticCurvePublicKey.from_encoded_point(curve, self.raw).public_numbers()
        crv = "secp256k1" if self.curve == "secp256k1" else "P-256"
        return {
            "crv": crv,
            "kty": "EC",
            "x": b64url_encode(nums.x.to_bytes(32, "big")),
            "y": b64url_encode(nums.y.to_bytes(32, "big")),
        }

    def thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint (the ``e1_``/``k1_`` DID suffix)."""
        canonical = json.dumps(self.jwk(), separators=(",", ":"), sort_keys=True)
        return b64url_encode(hashlib.sha256(canonical.encode()).digest())


_MULTICODEC = {b"\xed\x01": ("ed25519", 32), b"\xe7\x01": ("secp256k1", 33), b"\x80\x24": ("p256", 33)}
_TYPE_CURVES = {
    "EcdsaSecp256k1VerificationKey2019": {"secp256k1"},
    "EcdsaSecp256r1VerificationKey2019": {"p256"},
    "Ed25519VerificationKey2018": {"ed25519"},
    "Ed25519VerificationKey2020": {"ed25519"},
}


def _from_multibase(value: Any, vm_type: str) -> PublicKey:
    if not isinstance(value, str) or not value.startswith("z") or len(value) > 200:
        raise DidError("publicKeyMultibase must be base58btc ('z...')")
    try:
        raw = b58decode(value[1:])
    except ValueError as exc:
        raise DidError(f"publicKeyMultibase: {exc}") from None
    for prefix, (curve, size) in _MULTICODEC.items():
        if raw.startswith(prefix) and len(raw) == len(prefix) + size:
            return PublicKey(curve, raw[len(prefix) :])
    # Older documents put the bare key in the multibase value.
    if vm_type in ED25519_TYPES and len(raw) == 32:
        return PublicKey("ed25519", raw)
    if vm_type == "EcdsaSecp256k1VerificationKey2019" and len(raw) in (33, 65):
        return PublicKey("secp256k1", raw)
    raise DidError("publicKeyMultibase holds no supported key")


def _from_jwk(jwk: Any) -> PublicKey:
    if not isinstance(jwk, dict) or "d" in jwk:
        raise DidError("publicKeyJwk must be a public JWK object")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "OKP" and crv == "Ed25519":
        return PublicKey("ed25519", _b64url_32(jwk.get("x"), "JWK x"))
    if kty == "EC" and crv in ("secp256k1", "P-256"):
        x, y = _b64url_32(jwk.get("x"), "JWK x"), _b64url_32(jwk.get("y"), "JWK y")
        return PublicKey("secp256k1" if crv == "secp256k1" else "p256", b"\x04" + x + y)
    raise DidError(f"unsupported JWK (kty={kty!r}, crv={crv!r})")


def key_of(method: dict[str, Any]) -> PublicKey:
    """The public key of a verification method; raises DidError for anything unsupported."""
    vm_type = method.get("type")
    if vm_type not in KEY_TYPES:
        raise DidError(f"unsupported verification method type {str(vm_type)[:60]!r}")
    fields = [f for f in ("publicKeyMultibase", "publicKeyJwk", "publicKeyBase58") if f in method]
    if len(fields) != 1:
        raise DidError("a verification method has exactly one public key field")
    if fields[0] == "publicKeyMultibase":
        key = _from_multibase(method["publicKeyMultibase"], vm_type)
    elif fields[0] == "publicKeyJwk":
        key = _from_jwk(method["publicKeyJwk"])
    else:
        try:
            raw = b58decode(str(method["publicKeyBase58"]))
        except ValueError as exc:
            raise DidError(f"publicKeyBase58: {exc}") from None
        if len(raw) != 32:
            raise DidError("publicKeyBase58 must hold a 32-byte Ed25519 key")
        key = PublicKey("ed25519", raw)
    allowed = _TYPE_CURVES.get(vm_type)
    if allowed is not None and key.curve not in allowed:
        raise DidError(f"{vm_type} cannot hold a {key.curve} key")
    if key.curve != "ed25519":
        _ec()  # refuse early (and clearly) when cryptography is missing
    return key


# ---- documents -----------------------------------------------------------------------------


def _absolute(did: str, ref: str) -> str:
    return did + ref if ref.startswith("#") else ref


def find_method(doc: dict[str, Any], method_id: str) -> dict[str, Any] | None:
    did = doc.get("id", "")
    for rel in ("verificationMethod", "authentication", "assertionMethod"):
        for entry in doc.get(rel) or []:
            if isinstance(entry, dict) and _absolute(did, str(entry.get("id", ""))) == method_id:
                return entry
    return None


def authorized(doc: dict[str, Any], relationship: str, method_id: str) -> bool:
    """Is ``method_id`` listed under ``relationship`` (by reference or embedded)?"""
    did = doc.get("id", "")
    for entry in doc.get(relationship) or []:
        ref = entry.get("id") if isinstance(entry, dict) else entry
        if isinstance(ref, str) and _absolute(did, ref) == method_id:
            return True
    return False


def _signing_input(doc: dict[str, Any], options: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in doc.items() if k != "proof"}
    try:
        return hashlib.sha256(rfc8785.dumps(options)).digest() + hashlib.sha256(rfc8785.dumps(unsigned)).digest()
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise DidError(f"document cannot be canonicalized: {exc}") from None


def sign_document(doc: dict[str, Any], identity: Identity, method_id: str, created: str) -> dict[str, Any]:
    """Attach an eddsa-jcs-2022 DataIntegrityProof (proofValue in base64url, as ``anp`` writes it)."""
    options = {
        "type": PROOF_TYPE,
        "cryptosuite": CRYPTOSUITE,
        "created": created,
        "verificationMethod": method_id,
        "proofPurpose": "assertionMethod",
    }
    signature = identity.sign(_signing_input(doc, options))
    return {**doc, "proof": {**options, "proofValue": b64url_encode(signature)}}


def verify_proof(doc: dict[str, Any], key: PublicKey) -> bool:
    """Check an eddsa-jcs-2022 proof; its proofValue may be base64url or multibase ``z``."""
    proof = doc.get("proof")
    if not isinstance(proof, dict) or key.curve != "ed25519":
        return False
    value = proof.get("proofValue")
    if not isinstance(value, str):
        return False
    options = {k: v for k, v in proof.items() if k != "proofValue"}
    candidates: list[tuple[bytes, dict[str, Any]]] = []
    if value.startswith("z"):  # W3C form: the proof configuration carries the document's @context
        try:
            raw = b58decode(value[1:])
            if len(raw) == 64 and "z" + b58encode(raw) == value:
                with_context = dict(options)
                if "@context" in doc:
                    with_context["@context"] = doc["@context"]
                candidates.append((raw, with_context))
        except ValueError:
            pass
    try:
        candidates.append((b64url_decode_lenient(value), options))
    except DidError:
        pass
    for signature, opts in candidates:
        try:
            if key.verify(_signing_input(doc, opts), signature):
                return True
        except DidError:
            return False
    return False


def check_document(doc: Any, did: str) -> None:
    """The document is ``did``'s and its path binding (e1/k1) holds; raises DidError."""
    if not isinstance(doc, dict):
        raise DidError("the DID document is not a JSON object")
    if doc.get("id") != did:
        raise DidError("the DID document's id is not the DID")
    last = did.split(":")[-1]
    if last.startswith("e1_"):
        proof = doc.get("proof")
        if not isinstance(proof, dict) or proof.get("type") != PROOF_TYPE or proof.get("cryptosuite") != CRYPTOSUITE:
            raise DidError("an e1 DID document needs an eddsa-jcs-2022 DataIntegrityProof")
        if proof.get("proofPurpose") != "assertionMethod":
            raise DidError("the e1 proof's purpose is not assertionMethod")
        vm_id = proof.get("verificationMethod")
        method = find_method(doc, vm_id) if isinstance(vm_id, str) else None
        if method is None or not authorized(doc, "assertionMethod", vm_id):
            raise DidError("the e1 proof's key is not an assertionMethod of the document")
        key = key_of(method)
        if key.curve != "ed25519" or not verify_proof(doc, key):
            raise DidError("the e1 proof does not verify")
        if key.thumbprint() != last[3:]:
            raise DidError("the e1 DID suffix is not the thumbprint of the proof key")
    elif last.startswith("k1_"):
        for entry in doc.get("authentication") or []:
            ref = entry.get("id") if isinstance(entry, dict) else entry
            method = find_method(doc, _absolute(did, ref)) if isinstance(ref, str) else None
            if method is None:
                continue
            try:
                key = key_of(method)
            except DidError:
                continue
            if key.curve == "secp256k1" and key.thumbprint() == last[3:]:
                return
        raise DidError("no authentication key of the k1 document matches the DID suffix")


def gateway_document(identity: Identity, did: str, ad_url: str, created: str | None = None) -> dict[str, Any]:
    """The gateway's did:wba document (e1 shape, Multikey ``#key-1`` = the node's Ed25519 key)."""
    vm_id = f"{did}#key-1"
    doc = {
        "@context": list(CONTEXTS),
        "id": did,
        "verificationMethod": [
            {
                "id": vm_id,
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": "z" + b58encode(b"\xed\x01" + bytes(identity.verify_key)),
            }
        ],
        "authentication": [vm_id],
        "assertionMethod": [vm_id],
        "service": [{"id": f"{did}#ad", "type": "AgentDescription", "serviceEndpoint": ad_url}],
    }
    created = created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return sign_document(doc, identity, vm_id, created)
