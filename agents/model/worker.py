"""The model-backed worker: a ``Worker`` whose handler runs a local model.

Input: the task's history (user -> ``user``, agent -> ``assistant``; text parts, data parts as
JSON). Options come from the task's metadata, overridden by the last user message's metadata:

  ``max_tokens``   1 .. the worker's limit (default 256)
  ``temperature``  0 (greedy, default) .. 5
  ``top_p``        (0, 1]
  ``stop``         a string or a list of up to 8 strings; generation ends before the first one
  ``seed``         integer, for reproducible sampling
  ``system``       a system prompt (chat and summarize)
  ``skill``        ``chat`` (default), ``text-generation`` (the last user text is continued
                   raw, without the chat template) or ``summarize``; the router's choice
                   (``task.route.skill``) wins over this
  ``ignore_eos``   keep generating to ``max_tokens`` (benchmarks)

Output: one artifact ``response`` streamed as appended text chunks (the last chunk has
``last_chunk``), then a ``completed`` status whose metadata carries ``usage``
(prompt/completion tokens, finish reason). Cancel closes the generation (its batch slot is
free after the step in flight). Out of memory fails only the affected task(s), with a clear
message, and the worker keeps serving. A backend whose engine is down raises ``Unavailable``:
the task is released for redelivery, not failed (``agents.model.engine_worker``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from agents.model.base import GenOptions, ModelBackend, ModelError, ModelOOM, Prompt, Usage
from agents.worker import TaskFailed, Unavailable, Worker
from schemas import Artifact, DataPart, Task, TaskEvent, TaskState, TextPart

log = logging.getLogger("interlace.model")

SKILLS = ("chat", "text-generation", "summarize")
ALIASES = {"summarise": "summarize", "generate": "text-generation", "completion": "text-generation"}
SUMMARY_INSTRUCTION = "Summarise the following text in a few sentences.\n\n"
ARTIFACT_ID = "response"


class ModelWorker(Worker):
    def __init__(
        self,
        backend: ModelBackend,
        *,
        agent: str = "model",
        concurrency: int | None = None,
        default_max_tokens: int = 256,
        max_tokens_limit: int = 4096,
        metrics: Any = None,
    ) -> None:
        self.backend = backend
        self.agent = agent
        self.concurrency = concurrency or max(4, 2 * backend.max_batch)
        self.default_max_tokens = default_max_tokens
        self.max_tokens_limit = max_tokens_limit
        self.metrics = metrics
        self.hints: dict[str, int] = {}

    # ---- start-up measurement and the skills it advertises ------------------------------------

    async def calibrate(self, tokens: int = 16) -> dict[str, int]:
        """Time one short generation: first-token latency and ms per further token."""
        usage, started = Usage(), time.monotonic()
        prompt = Prompt(messages=[{"role": "user", "content": "Say hello in one short sentence."}])
        async for _ in self.backend.generate(prompt, GenOptions(max_tokens=tokens, ignore_eos=True), usage):
            pass
        total = time.monotonic() - started
        first = usage.first_token_s if usage.first_token_s is not None else total
        per_token = (total - first) / max(1, usage.completion_tokens - 1)
        ms_per_token = max(1, round(per_token * 1000))
        self.hints = {
            "latency_first_token_ms": max(1, round(first * 1000)),
            "latency_ms_per_token": ms_per_token,
            # Local compute has no price: cost is device-milliseconds per 1000 tokens, single stream.
            "cost": ms_per_token * 1000,
            "max_batch": int(self.backend.max_batch),
            "context_tokens": int(self.backend.context_length),
            "max_tokens": int(self.max_tokens_limit),
        }
        log.info("model calibrated", extra={"agent": self.agent, **self.hints})
        return self.hints

    @property
    def description(self) -> str:  # type: ignore[override]
        b = self.backend
        return f"Local language model {b.model_name} ({b.kind} on {b.device}): chat, text generation, summaries."

    def skills(self) -> list[dict[str, Any]]:
        """Skill dicts in the registry's ``Skill`` shape. What they cost and how fast they are
        (measured by ``calibrate``) is the same for all three, so it goes in the record's
        ``cost`` and ``labels`` (see ``card``), which are integers and strings as records require."""
        name = self.backend.model_name
        common = {"input_modes": ["text/plain"], "output_modes": ["text/plain"]}
        return [
            {
                "id": "chat",
                "name": "Chat",
                "description": f"Answer a conversation with the local model {name} (chat template applied).",
                "tags": ["chat", "llm", "text-generation"],
                "examples": ["What are the primary colors?"],
                **common,
            },
            {
                "id": "text-generation",
                "name": "Text generation",
                "description": f"Continue a raw text prompt with {name}, without the chat template.",
                "tags": ["text-generation", "completion", "llm"],
                "examples": ["Once upon a time"],
                **common,
            },
            {
                "id": "summarize",
                "name": "Summarise",
                "description": f"Summarise a text in a few sentences with {name}.",
                "tags": ["summarization", "summarize", "llm"],
                "examples": ["Summarise: Interlace is a gateway that lets agents talk over many protocols."],
                **common,
            },
        ]

    def labels(self) -> dict[str, str]:
        """String labels for the agent record: the model, where it runs, and the measured speed."""
        out = {
            "model": self.backend.model_name,
            "model.backend": self.backend.kind,
            "model.device": self.backend.device,
            "model.max_batch": str(self.backend.max_batch),
            "model.context_tokens": str(self.backend.context_length),
        }
        for key in ("latency_ms_per_token", "latency_first_token_ms"):
            if key in self.hints:
                out[f"model.{key}"] = str(self.hints[key])
        return out

    def card(self) -> dict[str, Any]:
        """The fields of the worker's agent record (``schemas.agent_record.record_from_card``)."""
        card: dict[str, Any] = {
            "name": self.agent,
            "description": self.description,
            "version": "1",
            "skills": self.skills(),
            "endpoints": {"bus": self.agent},
            "labels": self.labels(),
        }
        if "cost" in self.hints:
            card["cost"] = self.hints["cost"]
        return card

    # ---- handling a task ----------------------------------------------------------------------

    async def handle(self, task: Task) -> AsyncIterator[TaskEvent]:
        outcome: str | None = "failed"
        try:
            options, prompt = self.parse(task)
            usage = Usage()
            first = True
            pieces = self.backend.generate(prompt, options, usage)
            try:
                async for piece in pieces:
                    yield task.artifact_event(_chunk(piece), append=not first)
                    first = False
            finally:
                await pieces.aclose()
            yield task.artifact_event(_chunk(""), append=not first, last_chunk=True)
            # Counted before the final event: the runner stops iterating once it has it.
            self._count("completed")
            outcome = None
            yield task.status_event(TaskState.COMPLETED, usage=usage.as_dict(), model=self.backend.model_name)
        except ModelOOM as exc:
            outcome = "oom"
            raise TaskFailed(str(exc)) from None
        except ModelError as exc:
            raise TaskFailed(str(exc)) from None
        except Unavailable:
            outcome = "released"
            raise
        except BaseException as exc:
            if outcome and not isinstance(exc, Exception):  # canceled (or shut down): the slot is already freed
                outcome = "canceled"
            raise
        finally:
            if outcome:
                self._count(outcome)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.finished(outcome)

    def parse(self, task: Task) -> tuple[GenOptions, Prompt]:
        user = [m for m in task.history if m.role == "user"]
        if not user:
            raise TaskFailed("the task has no user message")
        opts = {**(task.metadata or {}), **(user[-1].metadata or {})}
        options = GenOptions(
            max_tokens=_int(opts, "max_tokens", self.default_max_tokens, 1, self.max_tokens_limit),
            temperature=_float(opts, "temperature", 0.0, 0.0, 5.0),
            top_p=_float(opts, "top_p", 1.0, 1e-6, 1.0),
            stop=_stops(opts.get("stop")),
            seed=_int(opts, "seed", None, 0, 2**63 - 1),
            ignore_eos=bool(opts.get("ignore_eos", False)),
        )
        skill = (task.route.skill if task.route and task.route.skill else None) or opts.get("skill") or "chat"
        skill = ALIASES.get(str(skill), str(skill))
        if skill not in SKILLS:
            raise TaskFailed(f"unknown skill {skill!r}; this worker has {', '.join(SKILLS)}")
        system = opts.get("system")
        if system is not None and not isinstance(system, str):
            raise TaskFailed("option 'system' must be a string")
        turns = []
        for message in task.history:
            text = _message_text(message.parts)
            if text:
                turns.append({"role": "user" if message.role == "user" else "assistant", "content": text})
        if not turns or turns[-1]["role"] != "user":
            raise TaskFailed("the last user message has no text to answer")
        if skill == "text-generation":
            return options, Prompt(text=turns[-1]["content"])
        if skill == "summarize":
            turns = [{"role": "user", "content": SUMMARY_INSTRUCTION + turns[-1]["content"]}]
        if system:
            turns.insert(0, {"role": "system", "content": system})
        return options, Prompt(messages=turns)


def _chunk(text: str) -> Artifact:
    return Artifact(artifact_id=ARTIFACT_ID, name="response", parts=[TextPart(text=text)])


def _message_text(parts: list) -> str:
    out = []
    for part in parts:
        if isinstance(part, TextPart):
            out.append(part.text)
        elif isinstance(part, DataPart):
            out.append(json.dumps(part.data, ensure_ascii=False))
    return "\n".join(t for t in out if t)


def _int(opts: dict, key: str, default: int | None, low: int, high: int) -> int | None:
    value = opts.get(key)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # A2A metadata is a protobuf Struct: every number arrives as a double
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TaskFailed(f"option {key!r} must be an integer in [{low}, {high}]")
    return value


def _float(opts: dict, key: str, default: float, low: float, high: float) -> float:
    value = opts.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise TaskFailed(f"option {key!r} must be a number in [{low:g}, {high:g}]")
    return float(value)


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or len(value) > 8
        or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in value)
    ):
        raise TaskFailed("option 'stop' must be a string or a list of up to 8 non-empty strings")
    return list(value)
