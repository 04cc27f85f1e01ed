"""The operator's policy (gateway/core/policy.py): rule semantics, parse errors, hot reload on
change and on SIGHUP, the runtime's seam, the CLI's refusal of a bad file and the README's example.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import types
from pathlib import Path

import pytest
import yaml

from gateway.core.config import Config
from gateway.core.policy import Action, Decision, Policy, PolicyFile, Target, load_policy
from gateway.core.principal import LOCAL, Principal
from gateway.core.runtime import Runtime
from registry.identity import Identity
from tests.conftest import REPO, interlace_cmd, running_gateway, subprocess_env, test_config
from tests.test_registry import record as registry_record

ISS = "https://idp.example"


def who(pid: str, *groups: str, **claims) -> Principal:
    return Principal(id=pid, kind="jwt", groups=frozenset(groups), claims=types.MappingProxyType(claims))


ALICE = who(f"{ISS}#alice", "research", dept="eng", roles=["reader", "writer"], email_verified=True, level=3)
BOB = who("bob", "publishers")
MALLORY = who("mallory")
ADMIN = who("root", "admin")


def policy(*rules: dict) -> Policy:
    return Policy.parse({"rules": list(rules)})


def decide(p: Policy, principal: Principal, action: str, **target) -> Decision:
    return p.decide(principal, action, Target(**target))


# ---- semantics --------------------------------------------------------------------------------


def test_no_rules_allow_everything(tmp_path):
    for p in (Policy.EMPTY, policy(), load_policy_text("rules: []", tmp_path)):
        for action in Action:
            d = p.decide(MALLORY, action, Target(agent="x", tool="drop_table"))
            assert d.allowed and d.rule is None and "no policy rules" in d.reason
    assert Policy.EMPTY.allows(LOCAL, Action.ADMIN)


SEMANTICS = policy(
    {"name": "research", "allow": {"groups": "research", "action": ["call", "read"], "agent": ["summarize*", "echo"]}},
    {"allow": {"principal": "bob", "action": "register"}},
    {"name": "no-v0", "deny": {"agent": "*-v0"}},
    {"require": {"action": "cancel", "groups": "admin"}},
    {"allow": {"action": "cancel"}},
)


@pytest.mark.parametrize(
    ("principal", "action", "target", "allowed", "rule"),
    [
        (ALICE, "call", {"agent": "summarize-long"}, True, 1),  # glob
        (ALICE, "read", {"agent": "echo"}, True, 1),  # exact name
        (ALICE, "call", {"agent": "translate"}, False, None),  # an allow list closes the rest ...
        (ALICE, "register", {"agent": "echo"}, False, None),  # ... every action included
        (ALICE, "admin", {}, False, None),
        (ALICE, "call", {"agent": "summarize-v0"}, False, 3),  # deny wins over an earlier allow
        (ALICE, "call", {}, False, None),  # a target without an agent is not "summarize*"
        (BOB, "register", {"agent": "anything"}, True, 2),
        (BOB, "call", {"agent": "echo"}, False, None),  # bob is not in research
        (MALLORY, "cancel", {"agent": "echo"}, False, 4),  # require: the principal part must hold
        (ADMIN, "cancel", {"agent": "echo"}, True, 5),  # ... it holds: then an allow must match
        (ADMIN, "cancel", {"agent": "old-v0"}, False, 3),  # deny still wins for an admin
        (ADMIN, "call", {"agent": "echo"}, False, None),  # the admin group has no bypass
        (LOCAL, "call", {"agent": "echo"}, False, None),  # nor has the unrestricted local principal
    ],
)
def test_deny_wins_then_require_then_allow(principal, action, target, allowed, rule):
    d = decide(SEMANTICS, principal, action, **target)
    assert (d.allowed, d.rule) == (allowed, rule), d.reason
    assert SEMANTICS.allows(principal, Action(action), Target(**target)) is allowed


def test_a_decision_names_its_rule():
    assert decide(SEMANTICS, ALICE, "call", agent="echo").reason == "allowed by rule 1 'research' (allow)"
    assert decide(SEMANTICS, ALICE, "call", agent="x-v0").reason == "denied by rule 3 'no-v0' (deny)"
    assert decide(SEMANTICS, MALLORY, "cancel").reason.startswith("denied by rule 4 (require)")
    assert decide(SEMANTICS, ALICE, "call", agent="other").reason == "denied: no allow rule matches"


def test_only_deny_and_require_rules_leave_the_rest_allowed():
    p = policy({"deny": {"tool": "*delete*"}}, {"require": {"upstream": "prod", "groups": "ops"}})
    assert decide(p, MALLORY, "call", tool="list_files").allowed
    assert decide(p, MALLORY, "call", agent="echo").allowed  # no tool: the deny does not concern it
    assert not decide(p, MALLORY, "call", tool="bulk_delete").allowed
    assert not decide(p, MALLORY, "call", upstream="prod", tool="list").allowed
    assert decide(p, who("ops-1", "ops"), "call", upstream="prod", tool="list").allowed
    assert "no allow rules" in decide(p, MALLORY, "admin").reason


@pytest.mark.parametrize(
    ("key", "pattern", "hit", "miss"),
    [
        ("agent", "summ*", {"agent": "summarize"}, {"agent": "asummarize"}),
        ("did", "did:key:z6Mk*", {"did": "did:key:z6MkAbc"}, {"did": "did:wba:example.com"}),
        ("tags", ["nlp", "vision"], {"tags": ("audio", "vision")}, {"tags": ("audio",)}),
        ("skills", "sum?", {"skills": ["x", "sum1"]}, {"skills": ["sum12"]}),
        ("tool", "*delete*", {"tool": "bulk_delete_all"}, {"tool": "list"}),
        ("prompt", "[ab]-draft", {"prompt": "b-draft"}, {"prompt": "c-draft"}),
        ("resource", "file:///etc/*", {"resource": "file:///etc/passwd"}, {"resource": "file:///home/x"}),
        ("upstream", "files", {"upstream": "files"}, {"upstream": "files2"}),
    ],
)
def test_each_target_kind_matches_by_name_or_glob(key, pattern, hit, miss):
    p = policy({"deny": {key: pattern}})
    assert not decide(p, MALLORY, "call", **hit).allowed
    assert decide(p, MALLORY, "call", **miss).allowed
    assert decide(p, MALLORY, "call").allowed  # a target without that attribute is not concerned


@pytest.mark.parametrize(
    ("matcher", "principal", "holds"),
    [
        ({"principal": f"{ISS}#*"}, ALICE, True),
        ({"principal": f"{ISS}#*"}, BOB, False),
        ({"principal": ["bob", "carol"]}, BOB, True),
        ({"groups": ["ops", "research"]}, ALICE, True),  # any of
        ({"groups": ["ops", "publishers-*"]}, BOB, False),
        ({"groups": "research", "principal": "bob"}, ALICE, False),  # every key of a matcher
        ({"claims": {"dept": "eng"}}, ALICE, True),
        ({"claims": {"dept": ["ops", "e*"]}}, ALICE, True),  # one of, globs
        ({"claims": {"dept": "ops"}}, ALICE, False),
        ({"claims": {"roles": "writer"}}, ALICE, True),  # a list claim holding the value
        ({"claims": {"roles": ["admin", "root"]}}, ALICE, False),
        ({"claims": {"email_verified": True}}, ALICE, True),
        ({"claims": {"level": 3}}, ALICE, True),
        ({"claims": {"level": "3"}}, ALICE, False),  # equal, not alike
        ({"claims": {"email_verified": 1}}, ALICE, False),  # true is not 1
        ({"claims": {"dept": "eng", "level": 4}}, ALICE, False),  # every claim named
        ({"claims": {"dept": "eng"}}, BOB, False),  # no such claim
    ],
)
def test_the_principal_part(matcher, principal, holds):
    p = policy({"allow": matcher})
    assert decide(p, principal, "call", agent="echo").allowed is holds


def test_callers_alike_but_for_a_claim_get_their_own_decisions():
    # Principal equality leaves claims out; decisions must not be shared between such callers.
    p = policy({"allow": {"claims": {"tier": "gold"}}})
    gold, silver = who("same", tier="gold"), who("same", tier="silver")
    assert gold == silver
    for _ in range(2):  # the second round is answered from each caller's cached view
        assert p.allows(gold, "call") and not p.allows(silver, "call")


def test_actions_are_checked():
    p = policy({"allow": {"action": "read"}})
    assert p.allows(MALLORY, "read") and p.allows(MALLORY, Action.READ) and not p.allows(MALLORY, "call")
    with pytest.raises(ValueError, match="unknown policy action 'write'"):
        p.decide(MALLORY, "write")


def test_a_target_from_an_agent_record():
    skills = [
        {"id": "summarize", "name": "Summarize", "tags": ["nlp"]},
        {"id": "ocr", "name": "OCR", "tags": ["vision"]},
    ]
    rec = registry_record(Identity.generate(), name="summarizer", skills=skills)
    whole = Target.of_record(rec)
    assert (whole.agent, whole.did, set(whole.skills), set(whole.tags)) == (
        "summarizer",
        rec.did,
        {"summarize", "ocr"},
        {"nlp", "vision"},
    )
    ocr = Target.of_record(rec, skill="ocr")
    assert (tuple(ocr.skills), set(ocr.tags)) == (("ocr",), {"vision"})
    p = policy({"allow": {"tags": "nlp"}})
    assert p.allows(MALLORY, "call", whole) and not p.allows(MALLORY, "call", ocr)


# ---- parse errors -----------------------------------------------------------------------------


def load_policy_text(text: str, tmp: Path) -> Policy:
    path = tmp / "policy.yaml"
    path.write_text(text)
    return load_policy(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty: write 'rules: []'"),
        ("- allow: {}", "must be a mapping with one key, 'rules'"),
        ("rules: []\nrule: []", "unknown key 'rule'"),
        ("rules:", "'rules' must be a list"),
        ("rules: [allow]", "rule 1: expected a mapping"),
        ("rules:\n  - allow: {}\n  - permit: {}", "rule 2: unknown key 'permit'"),
        ("rules:\n  - {allow: {}, deny: {}}", "rule 1: a rule has exactly one of allow, deny or require"),
        ("rules:\n  - name: x", "rule 1: a rule has exactly one of"),
        ("rules:\n  - {name: 3, allow: {}}", "rule 1, name: expected a non-empty string"),
        ("rules:\n  - allow: [groups]", "rule 1, allow: expected a mapping"),
        ("rules:\n  - allow: {tools: x}", "rule 1, allow: unknown key 'tools'"),
        ("rules:\n  - allow: {}\n  - deny: {action: write}", "rule 2, action: 'write' is not an action"),
        ("rules:\n  - allow: {agent: []}", "rule 1, agent: expected a name or a non-empty list"),
        ("rules:\n  - allow: {agent: [echo, 7]}", "rule 1, agent: expected a name"),
        ("rules:\n  - allow: {groups: yes}", "rule 1, groups: expected a name"),
        ("rules:\n  - allow: {claims: [dept]}", "rule 1, claims: expected a mapping"),
        ("rules:\n  - allow: {claims: {level: 1.5}}", "rule 1, claims, level: expected a value"),
        ("rules:\n  - require: {action: register}", "rule 1, require: name what must hold"),
        ("rules:\n  - deny: {tool: a, tool: b}", "(line 2, column 21): duplicate key 'tool'"),
        ("rules:\n  - deny: {tool: [a}", "is not valid YAML (line 2"),
    ],
)
def test_a_file_that_does_not_parse_is_refused_naming_the_rule_and_key(tmp_path, text, message):
    with pytest.raises(ValueError) as refused:
        load_policy_text(text, tmp_path)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert "policy file" in str(refused.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot read the policy file .*missing.yaml"):
        PolicyFile(tmp_path / "missing.yaml")


# ---- reload -----------------------------------------------------------------------------------

ALLOW_ECHO = "rules:\n  - allow: {agent: echo}\n"
ALLOW_BOTH = "rules:\n  - allow: {agent: [echo, summarize]}\n"
BROKEN = "rules:\n  - allow: {agent: echo, agnet: x}\n"


def replace(path: Path, text: str) -> None:
    """As an operator should: write a copy, then rename it over the file (a new inode)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Reloads:
    """Successful reloads (a PolicyFile listener) and refused ones (error logs), as events to await."""

    def __init__(self, pf: PolicyFile) -> None:
        self.loaded: asyncio.Queue[Policy] = asyncio.Queue()
        self.refused: asyncio.Queue[str] = asyncio.Queue()
        pf.subscribe(self.loaded.put_nowait)
        self.handler = logging.Handler(logging.ERROR)
        self.handler.emit = lambda record: self.refused.put_nowait(record.reason)  # type: ignore[method-assign]
        logging.getLogger("interlace.policy").addHandler(self.handler)

    def close(self) -> None:
        logging.getLogger("interlace.policy").removeHandler(self.handler)


@pytest.fixture
async def watched(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW_ECHO)
    pf = PolicyFile(path, interval_s=0.02)
    reloads = Reloads(pf)
    pf.start()
    try:
        yield path, pf, reloads
    finally:
        await pf.stop()
        reloads.close()


def echo_and_summarize(p: Policy) -> tuple[bool, bool]:
    return p.allows(MALLORY, "call", Target(agent="echo")), p.allows(MALLORY, "call", Target(agent="summarize"))


async def test_a_changed_file_is_reloaded_and_served(watched):
    path, pf, reloads = watched
    assert echo_and_summarize(pf.current) == (True, False)
    replace(path, ALLOW_BOTH)
    async with asyncio.timeout(5):
        assert echo_and_summarize(await reloads.loaded.get()) == (True, True)
    assert echo_and_summarize(pf.current) == (True, True)
    path.write_text(ALLOW_ECHO + "  - deny: {agent: echo}\n")  # edited in place: same inode
    async with asyncio.timeout(5):
        await reloads.loaded.get()
    assert echo_and_summarize(pf.current) == (False, False)


async def test_a_broken_file_keeps_the_last_good_policy_and_says_why(watched, caplog):
    path, pf, reloads = watched
    good = pf.current
    replace(path, BROKEN)
    async with asyncio.timeout(5):
        reason = await reloads.refused.get()
    assert "rule 1, allow: unknown key 'agnet'" in reason
    assert pf.current is good
    assert any(
        r.name == "interlace.policy" and r.levelname == "ERROR" and "keeping the last good one" in r.getMessage()
        for r in caplog.records
    )
    path.unlink()  # a deleted file: the same
    async with asyncio.timeout(5):
        assert "cannot read the policy file" in await reloads.refused.get()
    replace(path, ALLOW_BOTH)  # the watcher kept watching
    async with asyncio.timeout(5):
        await reloads.loaded.get()
    assert echo_and_summarize(pf.current) == (True, True)
    assert reloads.refused.empty()  # each broken version was logged once, not at every poll


def test_reload_returns_whether_it_took_the_file(tmp_path, caplog):
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW_ECHO)
    pf = PolicyFile(path)
    path.write_text(BROKEN)
    with caplog.at_level(logging.ERROR, "interlace.policy"):
        assert pf.reload() is False
    assert "unknown key 'agnet'" in caplog.records[-1].reason
    assert echo_and_summarize(pf.current) == (True, False)
    path.write_text(ALLOW_BOTH)
    assert pf.reload() is True and echo_and_summarize(pf.current) == (True, True)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
async def test_sighup_reloads_at_once(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW_ECHO)
    pf = PolicyFile(path, interval_s=3600)  # the watcher will not see it: only the signal can
    reloads = Reloads(pf)
    pf.start()
    try:
        replace(path, ALLOW_BOTH)
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(5):
            assert echo_and_summarize(await reloads.loaded.get()) == (True, True)
    finally:
        await pf.stop()
        reloads.close()


# ---- the runtime's seam, the app and the CLI --------------------------------------------------


def test_the_runtime_holds_the_policy_in_force(tmp_path):
    assert Runtime(test_config()).policy is Policy.EMPTY
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW_ECHO)
    rt = Runtime(test_config(policy=str(path)))
    assert rt.policy is rt.policy_file.current and echo_and_summarize(rt.policy) == (True, False)
    path.write_text(BROKEN)
    with pytest.raises(ValueError, match="rule 1, allow: unknown key 'agnet'"):
        Runtime(test_config(policy=str(path)))


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
async def test_a_running_gateway_reloads_on_sighup_and_tells_the_agent_watchers(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW_ECHO)
    async with running_gateway(test_config(policy=str(path))) as (_, app):
        rt: Runtime = app.state.runtime
        changed = asyncio.Event()
        rt.watch_agents(changed.set)  # what each caller sees may have changed
        replace(path, ALLOW_BOTH)
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(5):
            await changed.wait()
        assert echo_and_summarize(rt.policy) == (True, True)


def test_the_policy_setting_comes_from_the_flag_or_the_environment():
    assert Config.load({}, env={"INTERLACE_POLICY": "/etc/interlace/policy.yaml"}).policy == (
        "/etc/interlace/policy.yaml"
    )
    from gateway.cli import build_parser

    assert build_parser().parse_args(["serve", "--policy", "p.yaml"]).policy == "p.yaml"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_serve_refuses_a_policy_that_does_not_parse(tmp_path, how):
    path = tmp_path / "policy.yaml"
    path.write_text(BROKEN)
    args, env = (["--policy", str(path)], {}) if how == "flag" else ([], {"INTERLACE_POLICY": str(path)})
    out = subprocess.run(
        interlace_cmd("serve", "--port", "0", *args),
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("interlace: ") and "Traceback" not in out.stderr
    assert str(path) in out.stderr and "rule 1, allow: unknown key 'agnet'" in out.stderr


# ---- the README's example ---------------------------------------------------------------------


def test_the_readme_example_policy_means_what_the_readme_says():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Policy file", 1)[1].split("\n## ", 1)[0]
    p = Policy.parse(yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0]), "the README's policy")
    research, ops, dba, publisher = (
        who("r", "research"),
        who("o", "ops"),
        who("d", "ops", "dba"),
        Principal.for_did("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"),  # registry writes
    )
    assert p.allows(research, "call", Target(agent="summarize-v2")) and p.allows(
        research, "cancel", Target(agent="echo")
    )
    assert not p.allows(research, "call", Target(agent="translate"))
    assert not p.allows(research, "register", Target(agent="summarize-v2"))  # allow rules close every action
    assert p.allows(ops, "call", Target(upstream="files", tool="read_file"))
    assert not p.allows(ops, "call", Target(upstream="files", tool="delete_file"))  # deny wins
    assert not p.allows(ops, "call", Target(upstream="files", tool="drop_table"))  # ops is not dba
    assert p.allows(dba, "call", Target(upstream="files", tool="drop_table"))
    assert p.allows(publisher, "register", Target(agent="team-search"))
    assert not p.allows(publisher, "register", Target(agent="echo"))
    assert not p.allows(LOCAL, "admin") and not p.allows(MALLORY, "call", Target(agent="echo"))


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
async def test_one_sighup_reloads_the_api_keys_and_the_policy(tmp_path):
    import httpx

    from gateway.core.auth import api_key_digest

    keys, policy = tmp_path / "keys.yaml", tmp_path / "policy.yaml"
    keys.write_text(yaml.safe_dump([{"principal": "old", "key_sha256": api_key_digest("old-key-123456789012")}]))
    policy.write_text(ALLOW_ECHO)
    async with running_gateway(test_config(api_keys=str(keys), policy=str(policy))) as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            new = {"Authorization": "Bearer new-key-123456789012"}
            assert (await http.get("/tasks", headers=new)).status_code == 401
            replace(keys, yaml.safe_dump([{"principal": "new", "key_sha256": api_key_digest("new-key-123456789012")}]))
            replace(policy, ALLOW_BOTH)
            changed = asyncio.Event()
            app.state.runtime.watch_agents(changed.set)
            os.kill(os.getpid(), signal.SIGHUP)
            async with asyncio.timeout(5):
                await changed.wait()  # the policy reloaded; the keys reload in the same handler, first or after
            assert (await http.get("/tasks", headers=new)).status_code == 200
            assert (
                await http.get("/tasks", headers={"Authorization": "Bearer old-key-123456789012"})
            ).status_code == 401
            # A key file that does not parse keeps the keys in force.
            replace(keys, "- {principal: [broken")
            os.kill(os.getpid(), signal.SIGHUP)
            assert (await http.get("/tasks", headers=new)).status_code == 200
