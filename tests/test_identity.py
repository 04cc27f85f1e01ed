import os
import stat

import nacl.signing
import pytest

from registry.identity import (
    BadSignature,
    Identity,
    InvalidDid,
    KeyFileError,
    b58decode,
    b58encode,
    b64url_decode,
    b64url_encode,
    did_from_public_key,
    public_key_from_did,
    verify,
    verify_key_for,
)

# w3c-ccg/did-method-key test-vectors/ed25519-x25519.json
W3C_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
W3C_PUBLIC_KEY_B58 = "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS"


def test_w3c_vector():
    ident = Identity.from_seed(bytes(32))
    assert ident.did == W3C_DID
    assert b58encode(bytes(ident.verify_key)) == W3C_PUBLIC_KEY_B58
    assert public_key_from_did(W3C_DID) == bytes(ident.verify_key)


@pytest.mark.parametrize("data", [b"", b"\0", b"\0\0\x01", b"\xff" * 40, bytes(range(34))])
def test_base58_round_trip(data):
    assert b58decode(b58encode(data)) == data


def test_base58_rejects_bad_characters():
    for bad in ("0", "O", "I", "l", "+"):
        with pytest.raises(ValueError):
            b58decode("z6Mk" + bad)


def test_did_round_trip():
    for _ in range(20):
        ident = Identity.generate()
        assert ident.did.startswith("did:key:z6Mk")
        assert did_from_public_key(public_key_from_did(ident.did)) == ident.did
        assert verify_key_for(ident.did) == ident.verify_key


@pytest.mark.parametrize(
    "did",
    [
        "",
        "did:web:example.com",
        "did:key:",
        "did:key:6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",  # no multibase 'z'
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooW0",  # '0' is not base58
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooW",  # one byte short
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWpp",  # too long
        "did:key:z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW",  # X25519, not Ed25519
        "did:key:z" + "1" * 200,
    ],
)
def test_bad_dids(did):
    with pytest.raises(InvalidDid):
        public_key_from_did(did)


def test_non_string_did():
    with pytest.raises(InvalidDid):
        public_key_from_did(None)  # type: ignore[arg-type]


def test_sign_verify_bytes_and_base64url():
    ident = Identity.generate()
    sig = ident.sign(b"hello")
    assert len(sig) == 64
    verify(ident.did, b"hello", sig)
    verify(ident.did, b"hello", b64url_encode(sig))
    assert "=" not in b64url_encode(sig)


def test_verify_failures_are_typed():
    ident, other = Identity.generate(), Identity.generate()
    sig = ident.sign(b"hello")
    with pytest.raises(BadSignature):
        verify(ident.did, b"hellO", sig)
    with pytest.raises(BadSignature):
        verify(other.did, b"hello", sig)
    with pytest.raises(BadSignature):
        verify(ident.did, b"hello", sig[:63])
    with pytest.raises(BadSignature):
        verify(ident.did, b"hello", b64url_encode(sig) + "==")
    with pytest.raises(BadSignature):
        verify(ident.did, b"hello", "not base64!")
    with pytest.raises(InvalidDid):
        verify("did:key:zzz", b"hello", sig)


def test_b64url_is_canonical():
    assert b64url_decode(b64url_encode(b"\xfb\xff")) == b"\xfb\xff"
    for bad in ("-_9", "-_-", "ab=", "a", "a b"):  # '-_9' has non-zero trailing bits
        with pytest.raises(ValueError):
            b64url_decode(bad)


def test_from_seed_length():
    with pytest.raises(ValueError):
        Identity.from_seed(b"short")


def test_repr_hides_seed():
    ident = Identity.from_seed(bytes(32))
    assert repr(ident) == f"Identity({W3C_DID})"


def test_save_load_round_trip(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "agent.key"
    ident.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Identity.load(path)
    assert loaded.did == ident.did
    assert bytes(loaded.signing_key) == bytes(ident.signing_key)


def test_save_is_0600_even_with_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        Identity.generate().save(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_save_refuses_overwrite_unless_asked(tmp_path):
    path = tmp_path / "agent.key"
    first, second = Identity.generate(), Identity.generate()
    first.save(path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        second.save(path)
    assert Identity.load(path).did == first.did
    os.chmod(path, 0o644)  # overwrite must not inherit the old file's mode
    second.save(path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).did == second.did
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_refuses_permissive_file(tmp_path, mode):
    path = tmp_path / "agent.key"
    Identity.generate().save(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Identity.load(path)


def test_load_refuses_malformed_or_inconsistent(tmp_path):
    path = tmp_path / "agent.key"
    for body in ("not json", '{"seed": "AAAA"}', "[]", '{"no_seed": 1}'):
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, body.encode())
        os.close(fd)
        with pytest.raises(KeyFileError, match="malformed"):
            Identity.load(path)
    path.unlink()
    seed = b64url_encode(bytes(32))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f'{{"did": "{Identity.generate().did}", "seed": "{seed}"}}'.encode())
    os.close(fd)
    with pytest.raises(KeyFileError, match="but its seed gives"):
        Identity.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(KeyFileError, match="cannot open"):
        Identity.load(tmp_path / "absent")


def test_verify_key_type():
    assert isinstance(Identity.generate().verify_key, nacl.signing.VerifyKey)
