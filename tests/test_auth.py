"""The authentication seam (gateway/core/auth.py) against a real authorization server over HTTP.

The issuer is tests/fixtures/oauth_server.py on a loopback port: discovery, JWKS, /token; nothing
of the HTTP layer is mocked. The CLI's refusal of a public bind without authentication, and the
secret files and flags, run as the user runs them (a subprocess).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import subprocess
import time

import httpx
import httpx2
import jwt
import pytest
import yaml
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.core.auth import (
    ANONYMOUS,
    LOCAL,
    Authenticator,
    AuthError,
    AuthMode,
    Principal,
    api_key_digest,
    new_api_key,
    require_scopes,
)
from gateway.core.config import Config
from tests.conftest import free_port, interlace_cmd, serve_app, stop_process, subprocess_env, wait_until
from tests.fixtures.oauth_server import OAuthServer, b64url, make_key, running_oauth_server

AUD = "http://127.0.0.1:8080"


@contextlib.asynccontextmanager
async def authenticator(idp: OAuthServer | None = None, **kw):
    async with httpx.AsyncClient(timeout=5) as http:
        kw.setdefault("mode", AuthMode.REQUIRED)
        if idp is not None:
            kw.setdefault("issuer", idp.issuer)
            kw.setdefault("audience", AUD)
        auth = Authenticator(http=http, **kw)
        yield auth
        await auth.aclose()


@pytest.fixture
async def idp():
    async with running_oauth_server() as server:
        yield server


async def refused(
    auth: Authenticator,
    header: str | None,
    *,
    status: int = 401,
    error: str | None = "invalid_token",
    match: str = "",
    **kw,
) -> AuthError:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(header, **kw)
    assert (info.value.status, info.value.error) == (status, error), info.value.description
    assert match in info.value.description
    return info.value


# ---- valid tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_valid_token_becomes_a_principal_with_groups_and_scopes(idp, alg):
    token = idp.issue(alg=alg, sub="alice", aud=AUD, scope="mcp tasks", groups=["dev", "admin"], email="a@x")
    async with authenticator(idp) as auth:
        p = await auth.authenticate(f"Bearer {token}")
    assert p.id == f"{idp.issuer}#alice" and p.kind == "jwt"
    assert p.groups == {"dev", "admin"} and p.scopes == {"mcp", "tasks"}
    assert p.claims["email"] == "a@x" and p.is_admin() and not p.is_admin("ops")
    assert token not in repr(p) and token not in json.dumps(dict(p.claims))  # claims, never the token
    with pytest.raises(TypeError):
        p.claims["sub"] = "mallory"  # type: ignore[index]  # read-only


async def test_roles_scp_nested_group_claims_and_an_audience_list(idp):
    token = idp.issue(
        aud=["https://other.example", "HTTP://127.0.0.1:8080/"],
        scp=["read", "write"],
        roles=["ops"],
        realm_access={"roles": ["auditor"]},
    )
    async with authenticator(idp, groups_claims=("groups", "roles", "realm_access.roles")) as auth:
        p = await auth.authenticate(f"bearer {token}")  # the scheme is case-insensitive
    assert p.groups == {"ops", "auditor"} and p.scopes == {"read", "write"}


async def test_audience_override_for_an_mcp_resource(idp):
    token = idp.issue(aud=f"{AUD}/mcp")
    async with authenticator(idp) as auth:
        assert (await auth.authenticate(f"Bearer {token}", audience=f"{AUD}/mcp")).id.endswith("#alice")
        # The same token, cached, is still refused where the audience differs.
        await refused(auth, f"Bearer {token}", match="audience")
        await refused(auth, f"Bearer {idp.issue(aud=AUD)}", audience=f"{AUD}/mcp", match="audience")


async def test_a_token_from_the_token_endpoint(idp):
    idp.add_client("ci", "s3cret", groups=["builders"], scope="tasks")
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            f"{idp.endpoints}/token", auth=("ci", "s3cret"), data={"grant_type": "client_credentials", "resource": AUD}
        )
    assert resp.status_code == 200, resp.text
    async with authenticator(idp) as auth:
        p = await auth.authenticate(f"Bearer {resp.json()['access_token']}")
    assert p.id == f"{idp.issuer}#ci" and p.groups == {"builders"} and p.scopes == {"tasks"}


# ---- bad tokens: a clear 401 each, and nothing cached ---------------------------------------------


async def test_expired_and_not_yet_valid_tokens(idp):
    now = time.time()
    async with authenticator(idp, leeway_s=60) as auth:
        await refused(auth, f"Bearer {idp.issue(aud=AUD, now=now - 400, lifetime_s=300)}", match="expired")
        await refused(auth, f"Bearer {idp.issue(aud=AUD, nbf=int(now) + 600)}", match="nbf")
        await refused(auth, f"Bearer {idp.issue(aud=AUD, now=now + 600)}", match="not valid yet")
        # Within the leeway: a clock 30 s off either way is accepted.
        await auth.authenticate(f"Bearer {idp.issue(aud=AUD, now=now - 300, lifetime_s=270)}")
        await auth.authenticate(f"Bearer {idp.issue(aud=AUD, nbf=int(now) + 30)}")
        assert len(auth._cache) == 2


async def test_wrong_audience_issuer_and_missing_claims(idp):
    async with authenticator(idp) as auth:
        await refused(auth, f"Bearer {idp.issue(aud='http://127.0.0.1:9999')}", match="audience")
        await refused(auth, f"Bearer {idp.issue()}", match="audience")  # no aud at all
        await refused(auth, f"Bearer {idp.issue(aud=AUD, iss='http://evil.example')}", match="not issued by")
        await refused(auth, f"Bearer {idp.issue(aud=AUD, iss=idp.issuer + '/')}", match="not issued by")  # exact
        await refused(auth, f"Bearer {idp.issue(aud=AUD, exp=None)}", match="'exp'")
        await refused(auth, f"Bearer {idp.issue(aud=AUD, sub=None)}", match="'sub'")
        assert not auth._cache


async def test_a_token_from_another_issuer_with_a_kid_of_its_own(idp):
    async with running_oauth_server() as other, authenticator(idp) as auth:
        await refused(auth, f"Bearer {other.issue(aud=AUD, iss=idp.issuer)}", match="no key")


async def test_alg_none_and_hs256_signed_with_the_public_key_are_refused_before_any_key_lookup(idp):
    claims = {"iss": idp.issuer, "sub": "mallory", "aud": AUD, "exp": int(time.time()) + 300}
    rsa = idp.keys["RS256"]
    unsigned = [f"{b64url({'alg': alg, 'typ': 'JWT'})}.{b64url(claims)}." for alg in ("none", "None", "NONE")]
    forged = []
    for secret in (rsa.public_pem, json.dumps(rsa.jwk).encode()):  # the classic key-confusion forgeries
        signing_input = f"{b64url({'alg': 'HS256', 'kid': rsa.kid})}.{b64url(claims)}"
        forged.append(f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}")
    async with authenticator(idp) as auth:
        for token in unsigned:
            await refused(auth, f"Bearer {token}", match="alg none")
        for token in forged:
            await refused(auth, f"Bearer {token}", match="HS256")
        hs512 = f"{b64url({'alg': 'HS512'})}.{b64url(claims)}.c2ln"
        await refused(auth, f"Bearer {hs512}", match="HS512")
        await refused(auth, f"Bearer {b64url({'alg': 'PS256'})}.{b64url(claims)}.c2ln", match="PS256 refused")
    assert idp.jwks_requests == 0  # refused on the header alone: no key was even fetched


async def test_a_token_whose_alg_does_not_match_its_key_is_refused(idp):
    es = idp.keys["ES256"]
    # EdDSA-signed, but naming the EC key: the key's algorithm is fixed by the key set, not the token.
    token = idp.issue(aud=AUD, key=make_key("EdDSA", kid=es.kid))
    async with authenticator(idp) as auth:
        await refused(auth, f"Bearer {token}", match="is for ES256")


async def test_malformed_tokens_and_bearer_values(idp):
    good = idp.issue(aud=AUD)
    header, payload, sig = good.split(".")
    async with authenticator(idp) as auth:
        await refused(auth, "Bearer a.b.c", match="malformed token")
        await refused(auth, f"Bearer {b64url(b'[1]')}.{payload}.{sig}", match="malformed token")
        await refused(auth, f"Bearer {header}.{payload}.{sig[:-4]}AAAA", match="signature")
        await refused(auth, f"Bearer {header}.{b64url({'iss': idp.issuer, 'sub': 'x'})}.{sig}", match="signature")
        await refused(auth, f"Bearer {header}.!!.{sig}", match="neither a valid token nor a known API key")
        await refused(auth, "Bearer not-a-token", match="neither a valid token nor a known API key")
        await refused(auth, "Bearer ", match="empty")
        await refused(auth, "Bearer " + "a" * 20_000, match="longer than")
        e = await refused(auth, "Basic YWxpY2U6cHc=", error=None, match="unsupported authorization scheme")
        assert e.challenge() == "Bearer"
        e = await refused(auth, None, error=None, match="authentication required")
        assert (
            e.challenge(resource_metadata="http://x/.well-known/oauth-protected-resource")
            == 'Bearer resource_metadata="http://x/.well-known/oauth-protected-resource"'
        )


def test_challenges_carry_error_description_and_scope_safely():
    e = AuthError(401, "invalid_token", 'bad "token"\n')
    assert (
        e.challenge(realm="interlace")
        == 'Bearer realm="interlace", error="invalid_token", error_description="bad \'token\'?"'
    )
    with pytest.raises(AuthError) as info:
        require_scopes(Principal(id="u", kind="jwt", scopes=frozenset({"read"})), ["read", "write"])
    assert (info.value.status, info.value.error, info.value.scopes) == (403, "insufficient_scope", ("read", "write"))
    assert 'scope="read write"' in info.value.challenge()
    require_scopes(LOCAL, ["anything"])


# ---- keys: rotation, rate limit, shared fetch, cache ------------------------------------------------


async def test_a_rotated_key_is_picked_up_by_one_refresh(idp):
    async with authenticator(idp, min_refresh_s=0) as auth:
        await auth.authenticate(f"Bearer {idp.issue(aud=AUD)}")
        assert idp.jwks_requests == 1
        idp.rotate("RS256")
        p = await auth.authenticate(f"Bearer {idp.issue(aud=AUD, sub='bob')}")
        assert p.id.endswith("#bob") and idp.jwks_requests == 2
        # An unknown kid after the refresh is still refused.
        await refused(auth, f"Bearer {idp.issue(aud=AUD, key=make_key('RS256'))}", match="no key")


async def test_unknown_kids_cannot_hammer_the_issuer(idp):
    async with authenticator(idp, min_refresh_s=30) as auth:
        await auth.authenticate(f"Bearer {idp.issue(aud=AUD)}")
        bogus = [idp.issue(aud=AUD, key=make_key("ES256")) for _ in range(20)]
        results = await asyncio.gather(*(auth.authenticate(f"Bearer {t}") for t in bogus), return_exceptions=True)
        assert all(isinstance(r, AuthError) and "no key" in r.description for r in results)
        assert idp.jwks_requests == 1  # the first fetch only: the refresh interval has not passed
        # A legitimately rotated key waits for the interval too (the trade-off of the limit).
        idp.rotate("RS256")
        await refused(auth, f"Bearer {idp.issue(aud=AUD)}", match="no key")
        auth._attempt_at -= 30  # as if 30 s had passed
        await auth.authenticate(f"Bearer {idp.issue(aud=AUD)}")
        assert idp.jwks_requests == 2


async def test_concurrent_callers_share_one_key_fetch(idp):
    idp.jwks_delay_s = 0.3
    tokens = [idp.issue(alg=alg, aud=AUD, sub=f"u{i}") for i in range(10) for alg in ("RS256", "ES256", "EdDSA")]
    async with authenticator(idp, min_refresh_s=0) as auth:
        principals = await asyncio.gather(*(auth.authenticate(f"Bearer {t}") for t in tokens))
        assert len({p.id for p in principals}) == 10 and idp.jwks_requests == 1
        idp.rotate("EdDSA")
        fresh = [idp.issue(alg="EdDSA", aud=AUD, sub=f"v{i}") for i in range(10)]
        await asyncio.gather(*(auth.authenticate(f"Bearer {t}") for t in fresh))
        assert idp.jwks_requests == 2


async def test_stale_keys_are_refreshed_in_the_background_and_a_removed_key_stops_working(idp):
    async with authenticator(idp, jwks_max_age_s=0, min_refresh_s=0) as auth:
        await auth.authenticate(f"Bearer {idp.issue(aud=AUD, sub='a')}")
        old_key = idp.keys["RS256"]
        idp.rotate("RS256")
        idp.jwks_delay_s = 0.5
        started = time.monotonic()
        await auth.authenticate(f"Bearer {idp.issue(aud=AUD, sub='b', key=old_key)}")
        assert time.monotonic() - started < 0.3  # answered with the keys it had, not after the fetch

        async def refreshed():
            return idp.jwks_requests == 2 and auth._fetch is None

        await wait_until(refreshed)
        idp.jwks_delay_s = 0
        await refused(auth, f"Bearer {idp.issue(aud=AUD, sub='c', key=old_key)}", match="no key")
        await auth.authenticate(f"Bearer {idp.issue(aud=AUD, sub='d')}")


async def test_a_cached_token_costs_no_fetch_and_no_validation(idp):
    token = idp.issue(aud=AUD, groups=["dev"])
    async with authenticator(idp) as auth:
        first = await auth.authenticate(f"Bearer {token}")
        fetches = idp.jwks_requests
        for _ in range(100):
            assert await auth.authenticate(f"Bearer {token}") is first
        assert idp.jwks_requests == fetches == 1
        assert auth.stats["validations"] == 1 and auth.stats["cache_hits"] == 100


async def test_the_cache_is_bounded_and_ends_at_exp(idp):
    async with authenticator(idp, cache_size=3, leeway_s=0) as auth:
        tokens = [idp.issue(aud=AUD, sub=f"u{i}") for i in range(5)]
        for t in tokens:
            await auth.authenticate(f"Bearer {t}")
        assert len(auth._cache) == 3
        await auth.authenticate(f"Bearer {tokens[-1]}")
        assert auth.stats["validations"] == 5  # the newest is still cached ...
        await auth.authenticate(f"Bearer {tokens[0]}")
        assert auth.stats["validations"] == 6  # ... the oldest was evicted
        short = idp.issue(aud=AUD, lifetime_s=1)
        await auth.authenticate(f"Bearer {short}")
        await asyncio.sleep(1.1)
        await refused(auth, f"Bearer {short}", match="expired")


async def test_a_cached_token_outlives_an_issuer_outage_and_a_new_one_gets_503():
    async with running_oauth_server() as idp:
        token = idp.issue(aud=AUD)
        auth_cm = authenticator(idp)
        auth = await auth_cm.__aenter__()
        await auth.authenticate(f"Bearer {token}")
    try:
        assert (await auth.authenticate(f"Bearer {token}")).id.endswith("#alice")  # issuer gone: still cached
    finally:
        await auth_cm.__aexit__(None, None, None)
    async with authenticator(idp) as cold:  # never fetched the keys, and the issuer is down
        await refused(cold, f"Bearer {token}", status=503, error=None, match="could not be fetched")


async def test_a_root_issuer_spelled_with_a_trailing_slash():
    async with running_oauth_server(path="") as idp:
        idp.issuer += "/"  # as Auth0 spells it; the operator may leave the slash out
        for configured in (idp.issuer, idp.issuer.rstrip("/")):
            async with authenticator(idp, issuer=configured) as auth:
                assert (await auth.authenticate(f"Bearer {idp.issue(aud=AUD)}")).id == f"{idp.issuer}#alice"
                # iss is compared exactly with the discovery document's spelling of the issuer.
                await refused(auth, f"Bearer {idp.issue(aud=AUD, iss=idp.issuer.rstrip('/'))}", match="issued by")


# ---- API keys ---------------------------------------------------------------------------------


def key_file(tmp_path, *entries) -> str:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(list(entries)))
    return str(path)


async def test_api_keys_by_bearer_and_x_api_key(tmp_path):
    key = new_api_key()
    path = key_file(
        tmp_path,
        {"principal": "ci-bot", "key_sha256": api_key_digest(key), "groups": ["builders"]},
        {"principal": "ops", "key_sha256": api_key_digest("other-key"), "groups": ["admin"]},
    )
    async with authenticator(api_keys=path) as auth:
        p = await auth.authenticate(f"Bearer {key}")
        assert (p.id, p.kind, p.groups, p.is_admin()) == ("ci-bot", "api_key", {"builders"}, False)
        assert await auth.authenticate(None, key) == p
        assert (await auth.authenticate("Bearer other-key")).is_admin()
        one_byte_changed = key[:-1] + ("A" if key[-1] != "A" else "B")
        await refused(auth, f"Bearer {one_byte_changed}", match="unknown API key")
        await refused(auth, None, api_key=one_byte_changed, match="unknown API key")


async def test_api_key_file_reload_keeps_the_last_good_set(tmp_path, caplog):
    path = key_file(tmp_path, {"principal": "a", "key_sha256": api_key_digest("k1"), "groups": []})
    async with authenticator(api_keys=path) as auth:
        await auth.authenticate("Bearer k1")
        (tmp_path / "keys.yaml").write_text("- principal: [unclosed\n")
        with pytest.raises(ValueError, match=r"not valid YAML \(line 2, column 1\)") as refused_file:
            auth.reload()
        assert "\n" not in str(refused_file.value)  # one line: the CLI prints it as one
        assert "keeping the last good set" in caplog.text
        assert (await auth.authenticate("Bearer k1")).id == "a"
        key_file(tmp_path, {"principal": "b", "key_sha256": api_key_digest("k2")})
        assert auth.reload() == 1
        await refused(auth, "Bearer k1", match="unknown API key")
        assert (await auth.authenticate("Bearer k2")).id == "b"


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"principal": "a", "key_sha256": "abc"}, "64 hex digits"),
        ({"principal": "did:key:z6Mk", "key_sha256": "0" * 64}, "principal must be a name"),
        ({"principal": "local", "key_sha256": "0" * 64}, "principal must be a name"),
        ({"principal": "a", "key_sha256": "0" * 64, "groups": "admin"}, "groups must be a list"),
        ({"principal": "a", "key": "plaintext"}, "unknown field"),
    ],
)
def test_a_bad_api_key_file_names_its_problem(tmp_path, entry, problem):
    with pytest.raises(ValueError, match=problem):
        Authenticator(api_keys=key_file(tmp_path, entry))


async def test_jwts_and_api_keys_together(idp, tmp_path):
    path = key_file(tmp_path, {"principal": "ci", "key_sha256": api_key_digest("k"), "groups": []})
    async with authenticator(idp, api_keys=path) as auth:
        assert (await auth.authenticate("Bearer k")).kind == "api_key"
        assert (await auth.authenticate(f"Bearer {idp.issue(aud=AUD)}")).kind == "jwt"
        await refused(auth, "Bearer nope", match="neither a valid token nor a known API key")
        await refused(auth, None, api_key=idp.issue(aud=AUD), match="unknown API key")  # X-API-Key: keys only


# ---- modes and configuration ----------------------------------------------------------------------


async def test_modes(tmp_path):
    path = key_file(tmp_path, {"principal": "ci", "key_sha256": api_key_digest("k")})
    async with authenticator(mode=AuthMode.LOCAL) as auth:
        assert await auth.authenticate(None) is LOCAL and await auth.authenticate("Bearer junk") is LOCAL
        assert LOCAL.is_admin("whatever-the-group-is-called")
    async with authenticator(mode=AuthMode.OPTIONAL, api_keys=path) as auth:
        assert await auth.authenticate(None) is ANONYMOUS and not ANONYMOUS.is_admin()
        await refused(auth, "Bearer junk", match="unknown API key")  # bad credentials are not downgraded
        assert (await auth.authenticate("Bearer k")).id == "ci"
    async with authenticator(mode=AuthMode.REQUIRED, api_keys=path) as auth:
        await refused(auth, None, error=None)
    assert Principal.for_did("did:key:z6Mkx").kind == "did"


def test_effective_auth_and_audience():
    assert Config(host="127.0.0.1").effective_auth() is AuthMode.LOCAL
    assert Config(host="::1").effective_auth() is AuthMode.LOCAL
    assert Config(host="127.0.0.2", allow_anonymous=True).effective_auth() is AuthMode.LOCAL
    with pytest.raises(ValueError, match="--auth-issuer URL or --api-keys FILE"):
        Config(host="0.0.0.0").effective_auth()
    assert Config(host="0.0.0.0", allow_anonymous=True).effective_auth() is AuthMode.LOCAL
    assert Config(host="0.0.0.0", api_keys="k.yaml").effective_auth() is AuthMode.REQUIRED
    assert Config(host="127.0.0.1", auth_issuer="https://idp").effective_auth() is AuthMode.REQUIRED
    assert Config(host="0.0.0.0", api_keys="k", allow_anonymous=True).effective_auth() is AuthMode.OPTIONAL
    assert Config(auth_issuer="https://idp", port=9000).effective_audience() == "http://127.0.0.1:9000"
    assert (
        Config(auth_issuer="https://idp", public_url="https://gw.example/").effective_audience() == "https://gw.example"
    )
    assert Config(host="0.0.0.0", auth_issuer="i", auth_audience="https://a").effective_audience() == "https://a"
    with pytest.raises(ValueError, match="--auth-audience or --public-url"):
        Config(host="0.0.0.0", auth_issuer="https://idp").effective_audience()


async def test_from_config(idp, tmp_path):
    config = Config(auth_issuer=idp.issuer, auth_audience=AUD, admin_group="ops")
    async with httpx.AsyncClient() as http:
        auth = Authenticator.from_config(config, http=http)
        p = await auth.authenticate(f"Bearer {idp.issue(aud=AUD, groups=['ops'])}")
        assert auth.mode is AuthMode.REQUIRED and p.is_admin(auth.admin_group)


def test_secrets_from_files(tmp_path):
    (tmp_path / "reg").write_text("r3g-token\n")
    (tmp_path / "wrk").write_text("w0rker\n")
    (tmp_path / "empty").write_text("\n")
    config = Config.load(
        {"registration_token_file": str(tmp_path / "reg")}, env={"INTERLACE_WORKER_TOKEN_FILE": str(tmp_path / "wrk")}
    )
    assert (config.registration_token, config.worker_token) == ("r3g-token", "w0rker")
    with pytest.raises(ValueError, match="not both"):
        Config.load({"registration_token_file": str(tmp_path / "reg")}, env={"INTERLACE_REGISTRATION_TOKEN": "x"})
    with pytest.raises(ValueError, match="is empty"):
        Config.load({"worker_token_file": str(tmp_path / "empty")}, env={})
    with pytest.raises(ValueError, match="cannot read the secret file"):
        Config.load({"worker_token_file": str(tmp_path / "missing")}, env={})


# ---- the command line -------------------------------------------------------------------------


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(interlace_cmd(*args), env=subprocess_env(**env), capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    "args, says",
    [
        (("--host", "0.0.0.0"), "binding to 0.0.0.0 needs authentication: --auth-issuer URL or --api-keys FILE"),
        (("--host", "0.0.0.0", "--registration-token", "t"), "needs authentication"),  # before the admission check
        (("--api-keys", "/nonexistent/keys.yaml"), "cannot read the API key file /nonexistent/keys.yaml"),
        (("--registration-token-file", "/nonexistent/tok"), "cannot read the secret file /nonexistent/tok"),
        (("--host", "0.0.0.0", "--auth-issuer", "https://idp.example"), "--auth-audience or --public-url"),
    ],
)
def test_serve_refuses_with_one_line_and_exit_status_2(args, says):
    out = run_cli("serve", "--port", "0", *args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("interlace: ") and "Traceback" not in out.stderr
    assert says in out.stderr


async def test_serve_warns_about_secret_flags_and_anonymous_callers_and_reads_secret_files(tmp_path):
    (tmp_path / "worker-token").write_text("w0rker\n")
    port = free_port()
    proc = subprocess.Popen(
        interlace_cmd(
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--no-gossip",
            "--allow-anonymous",
            "--registration-token",
            "r3g",
            "--worker-token-file",
            str(tmp_path / "worker-token"),
        ),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                assert time.monotonic() < deadline and proc.poll() is None, "the gateway did not start"
                await asyncio.sleep(0.1)
    finally:
        stop_process(proc)
    logs = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line.startswith("{")]
    warnings = [entry["msg"] for entry in logs if entry["level"] == "warning"]
    assert any(m.startswith("--registration-token puts a secret on the command line") for m in warnings), warnings
    assert not any(m.startswith("--worker-token puts") for m in warnings)  # a file: nothing to warn about
    assert any(m.startswith("--allow-anonymous") and "every right" in m for m in warnings), warnings


# ---- the fixture authorization server drives the official mcp client's OAuth providers --------------
# A test-local protected resource (RFC 9728 metadata and a Bearer challenge built from AuthError)
# stands in for the MCP adapter, which is wired later; the providers run discovery, registration,
# the PKCE code flow or client credentials with ``resource``, then retry with the token.


class MemoryTokenStorage:
    def __init__(self) -> None:
        self.tokens = self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info) -> None:
        self.client_info = client_info


@contextlib.asynccontextmanager
async def protected_resource(idp: OAuthServer):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    prm_url = f"{base}/.well-known/oauth-protected-resource/mcp"
    http = httpx.AsyncClient()
    auth = Authenticator(issuer=idp.issuer, audience=f"{base}/mcp", http=http)

    async def prm(request):
        return JSONResponse(
            {
                "resource": f"{base}/mcp",
                "authorization_servers": [idp.issuer],
                "scopes_supported": ["mcp"],
                "bearer_methods_supported": ["header"],
            }
        )

    async def mcp(request):
        try:
            principal = await auth.authenticate(request.headers.get("authorization"))
        except AuthError as exc:
            return JSONResponse(
                {"error": exc.description},
                status_code=exc.status,
                headers={"WWW-Authenticate": exc.challenge(resource_metadata=prm_url)},
            )
        return JSONResponse({"principal": principal.id, "groups": sorted(principal.groups)})

    app = Starlette(
        routes=[Route("/.well-known/oauth-protected-resource/mcp", prm), Route("/mcp", mcp, methods=["GET", "POST"])]
    )
    async with serve_app(app, port):
        yield f"{base}/mcp"
    await http.aclose()


async def test_the_mcp_sdk_oauth_client_provider_runs_the_code_flow_against_the_fixture(idp):
    idp.user = {"sub": "carol", "groups": ["dev"]}
    result: dict[str, AuthorizationCodeResult] = {}

    async def redirect_handler(url: str) -> None:  # a headless browser: the fixture auto-approves
        async with httpx.AsyncClient() as browser:
            resp = await browser.get(url)
        assert resp.status_code == 302, resp.text
        query = httpx.URL(resp.headers["location"]).params
        result["r"] = AuthorizationCodeResult(code=query["code"], state=query["state"], iss=query["iss"])

    async def callback_handler() -> AuthorizationCodeResult:
        return result.pop("r")

    async with protected_resource(idp) as url:
        storage = MemoryTokenStorage()
        provider = OAuthClientProvider(
            url,
            OAuthClientMetadata(redirect_uris=["http://127.0.0.1:1/callback"], client_name="t", scope="mcp"),
            storage,
            redirect_handler,
            callback_handler,
        )
        async with httpx2.AsyncClient(auth=provider) as client:
            resp = await client.post(url, json={})
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"principal": f"{idp.issuer}#carol", "groups": ["dev"]}
            assert (await client.get(url)).status_code == 200  # the stored token, no new flow
    assert storage.client_info.client_id in idp.clients  # registered dynamically (RFC 7591)
    assert jwt_claims(storage.tokens.access_token)["aud"] == url  # resource -> aud (RFC 8707)
    assert idp.tokens_issued == 1


async def test_the_mcp_sdk_client_credentials_provider_against_the_fixture(idp):
    idp.add_client("robot", "r0b0t", groups=["builders"], scope="mcp")
    async with protected_resource(idp) as url:
        provider = ClientCredentialsOAuthProvider(
            url, MemoryTokenStorage(), "robot", "r0b0t", scope="mcp", issuer=idp.issuer
        )
        async with httpx2.AsyncClient(auth=provider) as client:
            resp = await client.get(url)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"principal": f"{idp.issuer}#robot", "groups": ["builders"]}


def jwt_claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})
