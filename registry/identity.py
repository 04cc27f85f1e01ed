"""Ed25519 identities named by W3C ``did:key`` DIDs.

A ``did:key`` for Ed25519 is ``did:key:z`` + base58btc(0xed 0x01 || 32-byte public key), so it
always starts ``did:key:z6Mk``. The DID *is* the public key: verifying needs no resolver and no
network. Signatures travel as base64url without padding.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from pathlib import Path

import nacl.exceptions
import nacl.signing

DID_KEY_PREFIX = "did:key:z"
ED25519_MULTICODEC = b"\xed\x01"
_PUBLIC_KEY_LEN = 32
_SEED_LEN = 32
_SIGNATURE_LEN = 64
_MAX_DID_LEN = 128

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class IdentityError(Exception):
    """Base of this module's errors."""


class InvalidDid(IdentityError, ValueError):
    """Not a well-formed Ed25519 ``did:key``."""


class BadSignature(IdentityError):
    """The signature does not verify for the DID's key (or is not a well-formed signature)."""


class KeyFileError(IdentityError):
    """A key file is missing, malformed, unsafe (too permissive) or would be overwritten."""


def b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Decode base58btc; raises ValueError on a character outside the alphabet."""
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise ValueError(f"invalid base58btc character {c!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * zeros + body


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url, accepting only the canonical encoding.

    Non-canonical spellings (padding, stray characters, non-zero trailing bits) are refused so
    one byte string has exactly one text form.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as e:
        raise ValueError(f"not unpadded base64url: {e}") from None
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def did_from_public_key(public_key: bytes) -> str:
    if len(public_key) != _PUBLIC_KEY_LEN:
        raise ValueError(f"an Ed25519 public key is {_PUBLIC_KEY_LEN} bytes, got {len(public_key)}")
    return DID_KEY_PREFIX + b58encode(ED25519_MULTICODEC + public_key)


def public_key_from_did(did: str) -> bytes:
    """The raw 32-byte Ed25519 public key named by ``did``; raises InvalidDid."""
    if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX):
        raise InvalidDid(f"not an Ed25519 did:key (must start {DID_KEY_PREFIX!r}): {did!r:.80}")
    if len(did) > _MAX_DID_LEN:
        raise InvalidDid(f"did:key too long ({len(did)} characters)")
    try:
        raw = b58decode(did[len(DID_KEY_PREFIX) :])
    except ValueError as e:
        raise InvalidDid(f"bad did:key {did!r}: {e}") from None
    if not raw.startswith(ED25519_MULTICODEC):
        raise InvalidDid(f"did:key {did!r} is not Ed25519 (multicodec prefix {raw[:2].hex()})")
    if len(raw) != len(ED25519_MULTICODEC) + _PUBLIC_KEY_LEN:
        raise InvalidDid(f"did:key {did!r} holds {len(raw) - 2} key bytes, not {_PUBLIC_KEY_LEN}")
    return raw[len(ED25519_MULTICODEC) :]


def verify_key_for(did: str) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(public_key_from_did(did))


def verify(did: str, message: bytes, signature: bytes | str) -> None:
    """Check that ``did``'s key signed ``message``; ``signature`` is raw bytes or base64url.

    Raises InvalidDid for a bad DID and BadSignature for anything wrong with the signature.
    """
    key = verify_key_for(did)
    if isinstance(signature, str):
        try:
            signature = b64url_decode(signature)
        except ValueError as e:
            raise BadSignature(f"signature is {e}") from None
    if len(signature) != _SIGNATURE_LEN:
        raise BadSignature(f"an Ed25519 signature is {_SIGNATURE_LEN} bytes, got {len(signature)}")
    try:
        key.verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        raise BadSignature(f"signature does not verify for {did}") from None


class Identity:
    """An Ed25519 signing key and the ``did:key`` it controls."""

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self.signing_key = signing_key
        self.did = did_from_public_key(bytes(signing_key.verify_key))

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != _SEED_LEN:
            raise ValueError(f"an Ed25519 seed is {_SEED_LEN} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def verify_key(self) -> nacl.signing.VerifyKey:
        return self.signing_key.verify_key

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def __repr__(self) -> str:  # never print the seed
        return f"Identity({self.did})"

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key file with mode 0600 from the first byte on.

        Without ``overwrite`` an existing file is an error. With it, the new file is written
        beside the old one and renamed over it, so the old file's (possibly looser) mode is
        never inherited and a crash leaves either the old key or the new one.
        """
        path = Path(path)
        body = json.dumps({"type": "Ed25519", "did": self.did, "seed": b64url_encode(bytes(self.signing_key))}).encode()
        target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if overwrite else path
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{target} exists; refusing to overwrite a key file") from None
        try:
            os.fchmod(fd, 0o600)  # the umask can only clear bits; this also restores owner rw
            os.write(fd, body + b"\n")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            target.unlink(missing_ok=True)
            raise
        os.close(fd)
        if overwrite:
            os.replace(target, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file written by ``save``; refuse one that group or others can access."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise KeyFileError(f"cannot open key file {path}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                raise KeyFileError(
                    f"key file {path} is accessible by group/others (mode {mode:04o}); run: chmod 600 {path}"
                )
            raw = f.read(4096)
        try:
            doc = json.loads(raw)
            identity = cls.from_seed(b64url_decode(doc["seed"]))
        except (ValueError, KeyError, TypeError) as e:
            raise KeyFileError(f"malformed key file {path}: {e}") from None
        if doc.get("did", identity.did) != identity.did:
            raise KeyFileError(f"key file {path} names {doc['did']} but its seed gives {identity.did}")
        return identity
