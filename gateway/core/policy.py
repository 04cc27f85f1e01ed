"""The operator's policy: what each caller may see and do (``--policy FILE``, issue 14).

A policy file is YAML: a mapping whose one key, ``rules``, lists rules. A rule has exactly one
effect (``allow``, ``deny`` or ``require``) whose value is a matcher, and optionally a ``name``
that decisions quote::

    rules:
      - name: research
        allow: {groups: [research], action: [call, read, cancel], agent: ["summarize*", echo]}
      - deny: {tool: "*delete*", upstream: files}
      - require: {action: register, groups: publishers}

Matchers. Every value is a name or a list of names; a name may be a glob (``*``, ``?``, ``[ab]``;
case-sensitive, ``*`` crosses ``:`` and ``/``). A list matches when any of its names does; all
the keys of one matcher must match; a key left out matches anything (``{}`` matches everything).

- Principal part: ``principal`` (the caller's id: ``{iss}#{sub}`` for a JWT, the API key's
  ``principal``, a DID, ``local`` on the loopback quick start, ``anonymous``), ``groups`` (any of
  the caller's groups), ``claims`` (``{claim: value or list}``: each named top-level claim of the
  caller's verified token equals one of the values, or, when the claim is a list, holds one;
  string values may be globs; a caller without the claim does not match).
- Action part: ``action``, one or more of
  ``call`` (start or continue a task on an agent; call an MCP tool, get a prompt, read a
  resource; what a caller may call is also all it sees: MCP lists, A2A cards, ACP ``/agents``,
  ANP descriptions, ``find_agents``, capability routing and ``POST /route``, registry reads;
  what it may not call answers as unknown), ``read`` (get, follow or list a task),
  ``cancel`` (cancel a task), ``register`` (register, renew or deregister an agent record
  through the registry API; the principal is the DID that signed it, which has no groups) and
  ``admin`` (the operator's own surfaces: revoking agent DIDs, ``/registry/revocations``, whose
  target is ``{did}``; a caller must also be in the admin group).
- Target part: ``agent`` (its registered name), ``did``, ``tags`` (any of its skills' tags),
  ``skills`` (any of its skill ids) and, for federated MCP, ``tool``, ``prompt``, ``resource``
  (the name, a resource's URI or a template's ``uriTemplate``, as the upstream lists it,
  whatever the gateway's naming) and ``upstream`` (the upstream's name). A request whose target
  lacks an attribute does not match a rule that names it: ``deny: {tool: "*delete*"}`` concerns
  tool calls only.

Semantics (agentgateway's ``mcpAuthorization``, with matchers where it has CEL):

1. no rules (``rules: []``): everything is allowed;
2. a ``deny`` whose every part matches denies;
3. a ``require`` whose action and target parts match denies unless its principal part holds
   (``require: {tool: drop_table, groups: dba}``: only DBAs may drop tables);
4. then an ``allow`` whose every part matches allows;
5. nothing matched: denied when the file has any ``allow`` rule (an allow list closes every action
   it does not open: ``read``, ``cancel`` and ``register`` included), allowed when it has none.

The policy binds every caller: ``LOCAL`` and the admin group too (the admin group widens task
ownership only, which the runtime enforces apart from this). A deny an admin could step around
would not be a deny; "everyone but admins" is a ``require`` on the admin group. The gateway's
own work (``SYSTEM``: push dispatch, forwarding) is no caller's request and is not put to it.

Why matchers and not CEL: the maintained CEL evaluators for Python need native wheels (Rust or
C++, 6-52 MB) or are beta with a native dependency (``cel-python`` needs ``google-re2``); a
matcher cannot fail to evaluate (agentgateway's CEL ``deny`` that errors does not deny), is
auditable by reading, and is checked entirely when the file is parsed.

A file that does not parse is refused with a one-line ValueError naming the rule (1-based) and
key: unknown keys, wrong types, unknown actions, a ``require`` that names nothing that must hold,
an empty file (a half-written file must never read as "no rules"); bad YAML and a key given twice
in one mapping (YAML would keep the last silently) name the line and column.

``PolicyFile`` holds the current policy of a file and reloads it when the file changes (polled
``stat``: inode, size, mtime; a change is loaded once the file has stood still for one interval,
so a half-written file is rarely seen) or on SIGHUP. A reload that fails keeps the last good
policy and logs why (logger ``interlace.policy``); it never raises.

Use: ``policy.decide(principal, Action.CALL, Target(agent="echo")) -> Decision(allowed, reason,
rule)``; ``policy.allows(...)`` for the bool; ``Target.of_record(record, skill=None, tool=...)``
builds a target from an agent record. Take ``policy`` once per request (``runtime.policy``) so a
list is filtered by one policy even if a reload lands meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import fnmatch
import logging
import re
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from gateway.core.aio import wait_cancelled
from gateway.core.hangup import off_hangup, on_hangup
from gateway.core.settings import yaml_problem
from gateway.core.watched_file import file_version, watch

if TYPE_CHECKING:  # read by attribute only
    from gateway.core.principal import Principal
    from schemas.agent_record import AgentRecord

log = logging.getLogger("interlace.policy")


class Action(enum.StrEnum):
    CALL = "call"
    READ = "read"
    CANCEL = "cancel"
    REGISTER = "register"
    ADMIN = "admin"


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What a request is about; attributes it has nothing for stay empty."""

    agent: str | None = None
    did: str | None = None
    tags: Collection[str] = ()
    skills: Collection[str] = ()
    tool: str | None = None
    prompt: str | None = None
    resource: str | None = None
    upstream: str | None = None

    @classmethod
    def of_record(cls, record: AgentRecord, skill: str | None = None, **mcp: str | None) -> Target:
        """An agent, or one of its skills: its name, DID, and every (or that) skill's id and tags."""
        skills = [s for s in record.skills if skill is None or s.id == skill]
        return cls(
            agent=record.name,
            did=record.did,
            skills=tuple(s.id for s in skills),
            tags=frozenset(t for s in skills for t in s.tags),
            **mcp,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # for the audit log and POST /route explanations: which rule, or why none
    rule: int | None = None  # 1-based index of the deciding rule in the file


# ---- matchers ---------------------------------------------------------------------------------


class _Names:
    """A list of names and globs, compiled: a set lookup for plain names, one regex for the globs."""

    __slots__ = ("exact", "glob")

    def __init__(self, names: Iterable[str]) -> None:
        names = list(names)
        self.exact = frozenset(n for n in names if not _is_glob(n))
        globs = [fnmatch.translate(n) for n in names if _is_glob(n)]
        self.glob = re.compile("|".join(globs)).match if globs else None  # translate() anchors with \Z

    def one(self, value: str) -> bool:
        return value in self.exact or (self.glob is not None and self.glob(value) is not None)


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


# One key of a matcher: (attribute, plain names, glob matcher or None, whether the attribute is a
# collection). Plain tuples, evaluated inline by ``_holds`` and ``Policy.decide``: on the hot path
# a call per key would cost more than the comparisons.
_Field = tuple[str, frozenset[str], Callable[[str], Any] | None, bool]


def _field(attr: str, names: list[str], many: bool) -> _Field:
    compiled = _Names(names)
    return (attr, compiled.exact, compiled.glob, many)


class _Claim:
    """``claims: {name: values}``: a scalar claim equal to (a string: matching) one of the values,
    or a list claim holding one."""

    __slots__ = ("name", "names", "others")

    def __init__(self, name: str, values: list[str | int | bool]) -> None:
        self.name = name
        self.names = _Names(v for v in values if isinstance(v, str))
        self.others = frozenset((type(v), v) for v in values if not isinstance(v, str))  # as _scalars has them

    def __call__(self, principal: Principal) -> bool:
        return any(
            self.names.one(v) if kind is str else (kind, v) in self.others
            for kind, v in _scalars(principal.claims.get(self.name))
        )


def _scalars(claim: Any) -> tuple[tuple[type, str | int], ...]:
    """What a rule can match of a claim: its strings, integers and booleans, each with its type
    (so that true never equals 1), hashable. (Type tuples, not unions: isinstance is faster.)"""
    if isinstance(claim, (str, int)):  # bool is an int
        return ((type(claim), claim),)
    if isinstance(claim, (list, tuple)):
        return tuple((type(v), v) for v in claim if isinstance(v, (str, int)))
    return ()


def _holds(fields: tuple[_Field, ...], obj: Any) -> bool:
    """Whether every field matches ``obj`` (a Principal or a Target)."""
    for attr, exact, glob, many in fields:
        value = getattr(obj, attr)
        if many:
            if exact.isdisjoint(value) and (glob is None or not any(glob(v) for v in value)):
                return False
        elif value is None or (value not in exact and (glob is None or glob(value) is None)):
            return False
    return True


_TARGET_ONE = ("agent", "did", "tool", "prompt", "resource", "upstream")
_TARGET_ANY = ("tags", "skills")
_PRINCIPAL_KEYS = ("principal", "groups", "claims")
_MATCHER_KEYS = (*_PRINCIPAL_KEYS, "action", *_TARGET_ONE, *_TARGET_ANY)
_EFFECTS = ("allow", "deny", "require")
_ORDER = {"deny": 0, "require": 1, "allow": 2}
_ACTIONS = frozenset(a.value for a in Action)


@dataclasses.dataclass(frozen=True)
class Rule:
    index: int  # 1-based, as the file reads
    effect: str  # allow | deny | require
    name: str | None
    actions: frozenset[Action] | None  # None: every action
    principal: tuple[_Field, ...]
    claims: tuple[_Claim, ...]
    target: tuple[_Field, ...]

    def label(self) -> str:
        named = f" {self.name!r}" if self.name else ""
        return f"rule {self.index}{named} ({self.effect})"

    def principal_holds(self, principal: Principal) -> bool:
        return _holds(self.principal, principal) and all(claim(principal) for claim in self.claims)


# ---- the policy -------------------------------------------------------------------------------

_EVERYTHING = Target()


_Concerned = tuple[tuple[Rule, Decision], ...]  # rules in the order they decide, each with its decision
_MAX_VIEWS = 4096  # callers whose view of the rules is kept (the oldest view goes first)


class Policy:
    """Rules, indexed by action and, lazily, by caller.

    ``decide`` first takes the caller's view: per action, the deny and allow rules whose principal
    part holds for the caller and the require rules whose principal part does not. Those are all
    that can decide for this caller, so a decision is then the first of them whose target part
    matches. A view depends only on what rules read of a principal (id, groups, the claims the
    rules name), which is its cache key; a reload builds a new Policy, so views never go stale.
    """

    EMPTY: ClassVar[Policy]

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules = tuple(rules)
        self.has_allow = any(r.effect == "allow" for r in self.rules)
        # per action: (position in rules, rule, its decision), deny, then require, then allow
        self._by_action: dict[str, tuple[tuple[int, Rule, Decision], ...]] = {}
        for action in Action:
            concerned = [(i, r) for i, r in enumerate(self.rules) if r.actions is None or action in r.actions]
            ordered = sorted(concerned, key=lambda ir: _ORDER[ir[1].effect])  # stable: file order within an effect
            self._by_action[action] = tuple((i, r, self._decision_of(r)) for i, r in ordered)
        self._claim_names = tuple(sorted({c.name for r in self.rules for c in r.claims}))
        self._views: dict[Any, dict[str, _Concerned]] = {}
        if not self.rules:
            self._closed = Decision(True, "no policy rules: everything is allowed")
        elif self.has_allow:
            self._closed = Decision(False, "denied: no allow rule matches")
        else:
            self._closed = Decision(True, "allowed: no deny or require rule applies (the policy has no allow rules)")

    @staticmethod
    def _decision_of(rule: Rule) -> Decision:
        if rule.effect == "deny":
            return Decision(False, f"denied by {rule.label()}", rule.index)
        if rule.effect == "require":
            return Decision(False, f"denied by {rule.label()}: the caller does not hold what it requires", rule.index)
        return Decision(True, f"allowed by {rule.label()}", rule.index)

    def _view(self, principal: Principal) -> dict[str, _Concerned]:
        # Principal equality covers id and groups but not claims: add the values of those rules read.
        key = (
            (principal, *(_scalars(principal.claims.get(n)) for n in self._claim_names))
            if self._claim_names
            else principal
        )
        view = self._views.get(key)
        if view is None:
            decides = [(r.effect == "require") != r.principal_holds(principal) for r in self.rules]
            view = {
                action: tuple((r, d) for i, r, d in concerned if decides[i])
                for action, concerned in self._by_action.items()
            }
            if len(self._views) >= _MAX_VIEWS:
                self._views.pop(next(iter(self._views)), None)
            self._views[key] = view
        return view

    def decide(self, principal: Principal, action: Action | str, target: Target = _EVERYTHING) -> Decision:
        """Whether ``principal`` may do ``action`` to ``target``, and the rule that says so."""
        if not self.rules:
            return self._closed
        try:
            concerned = self._view(principal)[action]
        except KeyError:
            raise ValueError(f"unknown policy action {action!r}") from None
        for rule, decision in concerned:
            if _holds(rule.target, target):
                return decision
        return self._closed

    def allows(self, principal: Principal, action: Action | str, target: Target = _EVERYTHING) -> bool:
        return self.decide(principal, action, target).allowed

    @classmethod
    def parse(cls, data: Any, source: str = "the policy") -> Policy:
        """A policy from the YAML document ``data``; a ValueError names ``source``, the rule and the key."""
        if data is None:
            raise ValueError(f"{source} is empty: write 'rules: []' to allow everything")
        if not isinstance(data, dict) or "rules" not in data:
            raise ValueError(f"{source} must be a mapping with one key, 'rules' (a list of rules)")
        if set(data) != {"rules"}:
            raise ValueError(f"{source}: unknown key {_listed(set(data) - {'rules'})} (the only key is 'rules')")
        rules = data["rules"]
        if not isinstance(rules, list):
            raise ValueError(f"{source}: 'rules' must be a list of rules (write 'rules: []' to allow everything)")
        return cls(_parse_rule(entry, i, f"{source}, rule {i}") for i, entry in enumerate(rules, 1))


Policy.EMPTY = Policy()


def _parse_rule(entry: Any, index: int, where: str) -> Rule:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping like {{allow: {{...}}}}")
    unknown = set(entry) - {*_EFFECTS, "name"}
    if unknown:
        raise ValueError(f"{where}: unknown key {_listed(unknown)} (a rule has allow, deny or require, and a name)")
    effects = [e for e in _EFFECTS if e in entry]
    if len(effects) != 1:
        raise ValueError(f"{where}: a rule has exactly one of allow, deny or require")
    effect = effects[0]
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"{where}, name: expected a non-empty string")
    matcher = entry[effect]
    if matcher is None:
        matcher = {}
    if not isinstance(matcher, dict):
        raise ValueError(f"{where}, {effect}: expected a mapping of {', '.join(_MATCHER_KEYS)}")
    unknown = set(matcher) - set(_MATCHER_KEYS)
    if unknown:
        raise ValueError(f"{where}, {effect}: unknown key {_listed(unknown)} (expected {', '.join(_MATCHER_KEYS)})")
    principal: list[_Field] = []
    claims: list[_Claim] = []
    target: list[_Field] = []
    actions = None
    for key, value in matcher.items():
        at = f"{where}, {key}"
        if key == "action":
            names = _name_list(value, at)
            bad = [n for n in names if n not in _ACTIONS]
            if bad:
                raise ValueError(f"{at}: {bad[0]!r} is not an action ({', '.join(Action)})")
            actions = frozenset(Action(n) for n in names)
        elif key == "claims":
            claims.extend(_claims(value, at))
        elif key == "principal":
            principal.append(_field("id", _name_list(value, at), many=False))
        elif key == "groups":
            principal.append(_field("groups", _name_list(value, at), many=True))
        else:
            target.append(_field(key, _name_list(value, at), many=key in _TARGET_ANY))
    if effect == "require" and not (principal or claims):
        raise ValueError(f"{where}, require: name what must hold (principal, groups or claims)")
    return Rule(index, effect, name, actions, tuple(principal), tuple(claims), tuple(target))


def _name_list(value: Any, at: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{at}: expected a name or a non-empty list of names (quote numbers and yes/no)")
    return values


def _claims(value: Any, at: str) -> list[_Claim]:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{at}: expected a mapping {{claim: value or list of values}}")
    checks: list[_Claim] = []
    for name, wanted in value.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if not isinstance(name, str) or not name:
            raise ValueError(f"{at}: claim names are strings")
        if not values or not all(isinstance(v, str | int | bool) and v != "" for v in values):
            raise ValueError(f"{at}, {name}: expected a value (string, integer, true/false) or a list of them")
        checks.append(_Claim(name, values))
    return checks


def _listed(keys: Iterable[Any]) -> str:
    return ", ".join(repr(k) for k in sorted(map(str, keys)))


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (YAML keeps the last, silently,
    which would drop half of ``{tool: a, tool: b}``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class refuses it with its own message
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_policy(path: str | Path) -> Policy:
    """The policy of a YAML file; a ValueError names the file, the rule and the key."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the policy file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        raise ValueError(f"the policy file {path} is not valid YAML{yaml_problem(exc)}") from None
    return Policy.parse(data, f"the policy file {path}")


# ---- the file, reloaded -----------------------------------------------------------------------


class PolicyFile:
    """The current policy of a file: loaded at construction (ValueError if it does not parse),
    then reloaded on change and on SIGHUP while started (see the module docstring)."""

    def __init__(self, path: str | Path, *, interval_s: float = 1.0) -> None:
        self.path, self.interval_s = Path(path), interval_s
        self._seen: tuple[int, ...] | None = None  # the file version last loaded or tried
        self._listeners: list[Callable[[Policy], None]] = []
        self._watcher: asyncio.Task | None = None
        self._hup = False  # whether SIGHUP reloads it (gateway.core.hangup)
        self.current = Policy.EMPTY
        self.load()

    def load(self) -> Policy:
        """Read and parse the file now, make it current and return it; ValueError if it does not parse."""
        self._seen = file_version(self.path)  # taken first: a write during the read shows as a newer version
        self.current = load_policy(self.path)
        return self.current

    def reload(self) -> bool:
        """``load``, except that a file that does not parse keeps the last good policy and is logged."""
        try:
            policy = self.load()
        except ValueError as exc:
            log.error(
                "policy not reloaded, keeping the last good one",
                extra={"path": str(self.path), "reason": str(exc), "rules": len(self.current.rules)},
            )
            return False
        log.info("policy reloaded", extra={"path": str(self.path), "rules": len(policy.rules)})
        for listener in self._listeners:
            try:
                listener(policy)
            except Exception:
                log.exception("policy listener failed")
        return True

    def subscribe(self, listener: Callable[[Policy], None]) -> None:
        """Call ``listener(policy)`` after each successful reload."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Watch the file, and reload on SIGHUP where the running loop can take signals."""
        if self._watcher is not None:
            return
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="policy-watcher")
        self._hup = on_hangup(self.reload)
        if not self._hup:
            log.info("no SIGHUP here: the policy file is reloaded when it changes", extra={"path": str(self.path)})

    async def stop(self) -> None:
        if self._hup:
            off_hangup(self.reload)
            self._hup = False
        if self._watcher is not None:
            await wait_cancelled(self._watcher)
            self._watcher = None

    async def _watch(self) -> None:
        await watch(self.path, lambda: self._seen, self.reload, self.interval_s)
