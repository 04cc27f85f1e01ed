"""Signed gossip envelopes (each refusal reason, unit and over HTTP), network isolation and the
trust list between in-process gateways, and the federation's configuration."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from gateway.app import create_app
from gateway.cli import build_parser
from gateway.cluster import advertised_url, check_config, seed_urls
from gateway.core.config import Config
from registry.gossip.envelope import EnvelopeRejected, ReplayCache, open_envelope, seal
from registry.gossip.messages import Ping, encode_packet
from registry.identity import Identity
from tests.conftest import free_port, interlace_cmd, running_gateway, serve_app, subprocess_env, test_config, wait_until

NET = "interlace"
NOW = 1_767_225_600_000
AGE = 300_000


def envelope(identity: Identity, *, network=NET, sent_at=NOW, kind="swim", payload=None, addr="http://127.0.0.1:9"):
    return seal(
        identity,
        network=network,
        node="node-x",
        addr=addr,
        kind=kind,
        payload=payload if payload is not None else encode_packet([Ping(1, "node-y")]),
        sent_at=sent_at,
    )


def check(data, *, trusted=None, replay=None, now=NOW):
    return open_envelope(data, network=NET, now_ms=now, max_age_ms=AGE, trusted=trusted, replay=replay)


def reason(data, **kw) -> str:
    with pytest.raises(EnvelopeRejected) as caught:
        check(data, **kw)
    return caught.value.code


def test_a_sealed_envelope_opens_and_names_its_sender():
    me = Identity.generate()
    env = check(envelope(me))
    assert (env.sender, env.node, env.addr, env.kind, env.sent_at) == (
        me.did,
        "node-x",
        "http://127.0.0.1:9",
        "swim",
        NOW,
    )
    assert env.payload == [{"type": "ping", "seq": 1, "target": "node-y"}]


def test_wrong_network_is_refused():
    assert reason(envelope(Identity.generate(), network="other")) == "wrong_network"


def test_bad_signature_is_refused():
    me, other = Identity.generate(), Identity.generate()
    tampered = envelope(me)
    tampered["payload"] = encode_packet([Ping(2, "node-y")])
    assert reason(tampered) == "bad_signature"
    readdressed = envelope(me)
    readdressed["addr"] = "http://127.0.0.1:10"  # the answer address is signed too
    assert reason(readdressed) == "bad_signature"
    impostor = envelope(other)
    impostor["from"] = me.did  # signed by another key than the DID it names
    assert reason(impostor) == "bad_signature"
    not_a_key = envelope(me)
    not_a_key["from"] = "did:web:example.com"
    assert reason(not_a_key) == "bad_signature"


def test_untrusted_sender_is_refused():
    me, friend = Identity.generate(), Identity.generate()
    assert reason(envelope(me), trusted=frozenset({friend.did})) == "untrusted"
    assert check(envelope(friend), trusted=frozenset({friend.did})).sender == friend.did


def test_stale_or_future_sent_at_is_refused():
    me = Identity.generate()
    assert reason(envelope(me, sent_at=NOW - AGE - 1)) == "stale"
    assert reason(envelope(me, sent_at=NOW + AGE + 1)) == "stale"
    assert check(envelope(me, sent_at=NOW - AGE)).sent_at == NOW - AGE


def test_replayed_envelope_is_refused():
    me, cache = Identity.generate(), ReplayCache()
    data = envelope(me)
    check(data, replay=cache)
    assert reason(data, replay=cache) == "replayed"
    check(envelope(me, sent_at=NOW + 1), replay=cache)  # a new envelope is fine


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("sent_at"),
        lambda e: e.update(extra=1),
        lambda e: e.update(sent_at=float(NOW)),
        lambda e: e.update(kind="gossip"),
        lambda e: e.update(addr="not a url"),
        lambda e: e.update(node=""),
    ],
)
def test_malformed_envelope_is_refused(mutate):
    data = envelope(Identity.generate())
    mutate(data)
    assert reason(data) == "malformed"
    assert reason(["not", "an", "object"]) == "malformed"


async def test_the_packet_endpoint_answers_each_refusal_with_a_status_and_code(tmp_path):
    friend, stranger = Identity.generate(), Identity.generate()
    trust = tmp_path / "trust"
    trust.write_text(f"# nodes we gossip with\n{friend.did}\n")
    async with (
        running_gateway(test_config(trust=str(trust))) as (url, app),
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        now = int(time.time() * 1000)
        good = envelope(friend, sent_at=now)
        assert (await http.post("/gossip/packet", json=good)).status_code == 204
        cases = {
            "replayed": (good, 401),
            "wrong_network": (envelope(friend, network="other", sent_at=now), 403),
            "untrusted": (envelope(stranger, sent_at=now), 403),
            "stale": (envelope(friend, sent_at=now - 3_600_000), 401),
            "bad_signature": ({**envelope(friend, sent_at=now + 1), "node": "node-z"}, 401),
            "malformed": ({"hello": "world"}, 400),
        }
        for code, (data, status) in cases.items():
            resp = await http.post("/gossip/packet", json=data)
            assert resp.status_code == status and resp.json()["error"]["code"] == code, (code, resp.text)
        bad_packet = envelope(friend, sent_at=now + 2, payload=[{"type": "nonsense"}])
        resp = await http.post("/gossip/packet", json=bad_packet)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "malformed"
        assert (await http.post("/gossip/packet", content=b"{not json")).status_code == 400
        stats = (await http.get("/cluster/members")).json()["stats"]
        assert stats["gossip.received"] == 1 and stats["gossip.rejected.untrusted"] == 1
        # The fault switch is off unless configured.
        assert (await http.post("/gossip/faults", json={"block": ["*"]})).status_code == 404


def node_config(port: int, **kw) -> Config:
    return test_config(port=port, gossip_profile="fast", **kw)


async def members(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    body = (await http.get(f"{url}/cluster/members")).json()
    return {m["id"]: m["state"] for m in body["members"]}


async def test_two_networks_never_mix():
    px, py = free_port(), free_port()
    x = create_app(node_config(px, node_id="x", network="alpha"))
    y = create_app(node_config(py, node_id="y", network="beta", join=f"127.0.0.1:{px}"))
    async with serve_app(x, px) as ux, serve_app(y, py) as uy, httpx.AsyncClient(timeout=10) as http:

        async def refused():
            stats = (await http.get(f"{ux}/cluster/members")).json()["stats"]
            return stats.get("gossip.rejected.wrong_network", 0) >= 2  # y's join retries are refused

        await wait_until(refused, 10)
        assert await members(http, ux) == {"x": "alive"}
        assert await members(http, uy) == {"y": "alive"}


async def test_trust_list_admits_only_listed_nodes(tmp_path):
    friend_key = tmp_path / "friend.key"
    friend = Identity.generate()
    friend.save(friend_key)
    trust = tmp_path / "trust"
    trust.write_text(friend.did + "\n")
    ps, pf, pz = free_port(), free_port(), free_port()
    seed = create_app(node_config(ps, node_id="seed", trust=str(trust)))
    good = create_app(node_config(pf, node_id="friend", node_key=str(friend_key), join=f"127.0.0.1:{ps}"))
    stranger = create_app(node_config(pz, node_id="stranger", join=f"127.0.0.1:{ps}"))
    async with (
        serve_app(seed, ps) as us,
        serve_app(good, pf) as uf,
        serve_app(stranger, pz),
        httpx.AsyncClient(timeout=10) as http,
    ):

        async def friend_in():
            return (await members(http, us)).get("friend") == "alive"

        async def stranger_refused():
            stats = (await http.get(f"{us}/cluster/members")).json()["stats"]
            return stats.get("gossip.rejected.untrusted", 0) >= 2

        await wait_until(friend_in, 10)
        await wait_until(stranger_refused, 10)
        assert "stranger" not in await members(http, us)
        assert (await members(http, uf)).get("seed") == "alive"


def test_serve_flags_reach_the_config():
    args = build_parser().parse_args(
        [
            "serve",
            "--join",
            "10.0.0.1:8080, node-b:8080",
            "--trust",
            "/etc/trust",
            "--public-url",
            "https://a.example.com/",
            "--gossip-profile",
            "fast",
        ]
    )
    config = Config.load({k: v for k, v in vars(args).items() if k not in ("command", "kind")}, env={})
    assert (config.join, config.trust, config.public_url, config.gossip_profile, config.gossip) == (
        "10.0.0.1:8080, node-b:8080",
        "/etc/trust",
        "https://a.example.com/",
        "fast",
        True,
    )
    assert Config.load({"gossip": False}, env={}).gossip is False
    assert seed_urls(config.join) == ["http://10.0.0.1:8080", "http://node-b:8080"]
    assert seed_urls("https://x.example.com/,") == ["https://x.example.com"]
    assert advertised_url("127.0.0.1", 8080, None) == "http://127.0.0.1:8080"
    assert advertised_url("0.0.0.0", 8080, "https://a.example.com/") == "https://a.example.com"
    with pytest.raises(ValueError, match="gossip profile"):
        create_app(test_config(gossip_profile="warp"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--public-url", "ftp://x"], "not a base URL"),
        (["--join", "http://a b:1"], "not a base URL"),
        (["--trust", "/nonexistent/trust"], "cannot read the trust file"),
    ],
)
def test_bad_gossip_settings_are_a_clear_cli_error(args, message):
    out = subprocess.run(
        interlace_cmd("serve", "--port", str(free_port()), *args),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_a_public_url_may_have_a_path_prefix():
    me = Identity.generate()
    data = envelope(me, addr="https://gw.example.com/interlace")
    assert check(data).addr == "https://gw.example.com/interlace"
    check_config(test_config(public_url="https://gw.example.com/interlace", join="a:1,https://b.example.com/x"))
    with pytest.raises(ValueError, match="gossip profile"):
        check_config(test_config(gossip_profile="warp"))
    check_config(test_config(gossip=False, gossip_profile="warp"))  # off: nothing to check
