"""Transformers backend with continuous batching.

Design
------
One engine per model. Requests queue in ``waiting``; a scheduler coroutine (on the event loop)
decides what the next forward pass does, and the pass itself runs on one dedicated thread, so
the event loop keeps streaming tokens and taking requests while the model computes. Between two
passes the scheduler:

1. drops finished and canceled rows from the running batch (a canceled request is seen at the
   next step boundary, so its slot is free after at most the one pass already in flight);
2. admits waiting requests while the batch has room (``max_batch``): the newcomers are
   prefilled together in one pass (left-padded to their longest prompt, attention mask 0 on
   padding, position ids counted from each row's first real token), then merged into the
   running batch;
3. otherwise runs one decode pass for every running row (one new token each).

After a prefill the next pass is always a decode, so a stream of arrivals cannot starve the
running rows.

Per-sequence KV cache handling: the running batch owns one ``DynamicCache`` whose rows are
left-padded to a common length ``T`` plus a ``[B, T]`` attention mask. Merging pads the shorter
side's keys/values on the left with zeros (masked out, so they never contribute) and
concatenates along the batch dimension; dropping rows indexes the batch dimension and then
trims the leading columns that are padding in every remaining row. Each row carries its own
position counter, so RoPE positions are exactly those of the unbatched sequence, and masked
columns contribute exact zeros to attention: a row's greedy output is the same tokens as
decoding it alone (tested with prompts of different lengths; floating-point reduction order
can differ with the batch shape, so in rare near-ties on a real model in bf16 a token may
differ, as with any batched inference). No prompt is ever prefilled twice.

Models whose cache is not a plain full-attention ``DynamicCache`` (sliding-window or hybrid
layers) cannot be merged this way: for them the engine falls back to static batching (the
waiting requests are prefilled together as soon as the running batch has drained).

Sampling: ``temperature == 0`` is greedy (argmax); otherwise softmax(logits / T) with optional
``top_p`` nucleus filtering, from a per-request ``torch.Generator`` (seeded when ``seed`` is set).

Out of memory (``torch.OutOfMemoryError`` or ``MemoryError``): during a prefill only the
newcomers fail (the running batch is untouched, since the merge commits only after it has
succeeded); during a decode every running row fails. Either way the requests get a
``ModelOOM`` with a clear message, the CUDA cache is emptied, and the engine keeps serving.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agents.model.base import (
    GenOptions,
    ModelBackend,
    ModelError,
    ModelOOM,
    Prompt,
    PromptTooLong,
    TextStream,
    Usage,
    is_oom,
)

log = logging.getLogger("interlace.model")

_END = object()


@dataclass(eq=False)
class _Seq:
    prompt: list[int]
    options: GenOptions
    usage: Usage
    stream: TextStream
    out: asyncio.Queue
    max_new: int
    submitted: float = field(default_factory=time.monotonic)
    generator: Any = None
    cancelled: bool = False
    finished: bool = False


@dataclass
class _Batch:
    cache: Any  # DynamicCache, rows aligned with the engine's ``_active``
    mask: Any  # [B, T] long
    pos: Any  # [B] next position id of each row
    last: Any  # [B] the token each row produced last (input of the next decode)


class TransformersBackend(ModelBackend):
    kind = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 8,
        model_name: str = "model",
        metrics: Any = None,
    ) -> None:
        import torch

        self.torch = torch
        self.model, self.tokenizer = model, tokenizer
        self.device = str(next(model.parameters()).device)
        self.dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        self.max_batch = max(1, int(max_batch))
        self.model_name = model_name
        self.metrics = metrics
        cfg = model.config
        self.context_length = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
        )
        self.pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if isinstance(t, int)), 0)
        self.eos_ids = _eos_ids(model, tokenizer)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._logits_kw = "logits_to_keep" if "logits_to_keep" in params else None
        self._waiting: deque[_Seq] = deque()
        self._active: list[_Seq] = []
        self._batch: _Batch | None = None
        self._mergeable = True  # set False when the cache has layers that cannot be merged
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self.steps = 0  # forward passes done (prefills and decodes)
        self.prefills = 0

    # ---- loading ----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        directory: str,
        *,
        gguf_file: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 8,
        model_name: str | None = None,
        metrics: Any = None,
    ) -> TransformersBackend:
        """Load a Hugging Face model directory (or a GGUF file in it, dequantised) from disk only."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = pick_device(device)
        torch_dtype = pick_dtype(dtype, device)
        kw: dict[str, Any] = {"local_files_only": True}
        if gguf_file:
            kw["gguf_file"] = gguf_file
        tokenizer = AutoTokenizer.from_pretrained(directory, **kw)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype, **kw)
        model.to(device).eval()
        return cls(model, tokenizer, max_batch=max_batch, model_name=model_name or "model", metrics=metrics)

    # ---- prompts ----------------------------------------------------------------------------

    def encode(self, prompt: Prompt) -> list[int]:
        tok = self.tokenizer
        if prompt.messages is not None:
            if getattr(tok, "chat_template", None):
                text = tok.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
            else:  # a base model without a template: a plain transcript
                text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in prompt.messages) + "Assistant:"
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(prompt.text or "", add_special_tokens=True)["input_ids"])

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- the public generate ------------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def memory_bytes(self) -> dict[str, int]:
        if not self.device.startswith("cuda"):
            return {}
        cuda = self.torch.cuda
        return {
            "allocated": int(cuda.memory_allocated(self.device)),
            "reserved": int(cuda.memory_reserved(self.device)),
        }

    async def generate(self, prompt: Prompt, options: GenOptions, usage: Usage | None = None) -> AsyncIterator[str]:
        usage = usage if usage is not None else Usage()
        async for piece in self.generate_ids(self.encode(prompt), options, usage):
            yield piece

    async def generate_ids(self, ids: list[int], options: GenOptions, usage: Usage) -> AsyncIterator[str]:
        seq = self._submit(ids, options, usage)
        try:
            while True:
                items = [await seq.out.get()]
                while not seq.out.empty():  # the client fell behind: send what piled up as one piece
                    items.append(seq.out.get_nowait())
                text = "".join(i for i in items if isinstance(i, str))
                error = next((i for i in items if isinstance(i, BaseException)), None)
                if text:
                    yield text
                if error is not None:
                    raise error
                if any(i is _END for i in items):
                    return
        finally:
            if not seq.finished:
                seq.cancelled = True
                usage.cancel_step = self.steps
                usage.finish_reason = "canceled"
                if self._wake is not None:
                    self._wake.set()

    def _submit(self, ids: list[int], options: GenOptions, usage: Usage) -> _Seq:
        if not ids:
            raise ModelError("the prompt is empty")
        if len(ids) >= self.context_length:
            raise PromptTooLong(f"the prompt is {len(ids)} tokens; this model's context is {self.context_length}")
        max_new = max(1, min(options.max_tokens, self.context_length - len(ids)))
        gen = None
        if options.temperature > 0:
            gen = self.torch.Generator(device=self.device)
            gen.manual_seed(options.seed if options.seed is not None else int(time.time_ns() % (2**63)))
        stream = TextStream(self._decode, options.stop)
        seq = _Seq(ids, options, usage, stream, asyncio.Queue(), max_new, generator=gen)
        usage.prompt_tokens = len(ids)
        self._waiting.append(seq)
        self._ensure_loop()
        self._wake.set()
        self._gauges()
        return seq

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._loop_task = asyncio.create_task(self._scheduler(), name=f"model-engine-{self.model_name}")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except (asyncio.CancelledError, Exception):
                pass
        for seq in [*self._active, *self._waiting]:
            self._fail(seq, ModelError("the model worker is shutting down"))
        self._active, self._waiting, self._batch = [], deque(), None
        self._pool.shutdown(wait=True)

    # ---- the scheduler (event loop side) ------------------------------------------------------

    async def _scheduler(self) -> None:
        try:
            await self._schedule()
        except Exception as exc:  # a bug, not a model error: fail what is queued rather than hang it
            log.exception("model scheduler failed")
            for seq in [*self._active, *self._waiting]:
                self._fail(seq, ModelError(f"generation failed: {exc.__class__.__name__}"))
            self._active, self._waiting, self._batch = [], deque(), None

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        just_prefilled = False
        while True:
            for seq in [s for s in self._waiting if s.cancelled]:
                self._waiting.remove(seq)
                seq.usage.freed_step = self.steps
            keep = [s for s in self._active if not (s.cancelled or s.finished)]
            dropped = [s for s in self._active if s.cancelled or s.finished]
            admit: list[_Seq] = []
            room = self.max_batch - len(keep)
            if self._waiting and room > 0 and not just_prefilled and (self._mergeable or not keep):
                admit = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            if not admit and not keep:
                self._release(dropped, keep)
                self._batch = None
                just_prefilled = False
                self._gauges()
                if not self._waiting:
                    self._wake.clear()
                    await self._wake.wait()
                continue
            rows = [i for i, s in enumerate(self._active) if not (s.cancelled or s.finished)]
            self._gauges(len(keep) + len(admit))
            started = time.monotonic()
            self._release(dropped, keep)  # the pass below starts by dropping their rows
            tokens, failed, lost = await loop.run_in_executor(self._pool, self._forward, rows, keep, admit)
            just_prefilled = bool(admit)
            if failed is None:
                self._active = keep + admit
                for seq, tok in zip(admit or keep, tokens):
                    self._accept(seq, tok)
            else:
                for seq in [*(keep if lost else []), *admit]:
                    self._fail(seq, failed)
                self._active = [] if lost else keep
            if self.metrics is not None and tokens:
                self.metrics.generated(len(tokens), time.monotonic() - started)

    def _release(self, dropped: list[_Seq], keep: list[_Seq]) -> None:
        for seq in dropped:
            if seq.cancelled and seq.usage.freed_step is None:
                seq.usage.freed_step = self.steps
        self._active = keep

    def _gauges(self, batch: int | None = None) -> None:
        if self.metrics is not None:
            self.metrics.set_load(batch if batch is not None else len(self._active), len(self._waiting))

    def _accept(self, seq: _Seq, token: int) -> None:
        if seq.cancelled:
            return
        usage = seq.usage
        if usage.completion_tokens == 0:
            usage.first_token_s = time.monotonic() - seq.submitted
        usage.completion_tokens += 1
        if token in self.eos_ids and not seq.options.ignore_eos:
            return self._finish(seq, "stop")
        piece = seq.stream.push(token)
        if piece:
            seq.out.put_nowait(piece)
        if seq.stream.stopped:
            return self._finish(seq, "stop")
        if usage.completion_tokens >= seq.max_new:
            return self._finish(seq, "length")

    def _finish(self, seq: _Seq, reason: str) -> None:
        tail = seq.stream.finish()
        if tail:
            seq.out.put_nowait(tail)
        seq.usage.finish_reason = reason
        seq.finished = True
        seq.out.put_nowait(_END)

    def _fail(self, seq: _Seq, error: BaseException) -> None:
        seq.usage.finish_reason = "error"
        seq.finished = True
        seq.out.put_nowait(error)

    # ---- the forward passes (model thread) ----------------------------------------------------

    def _forward(
        self, rows: list[int], keep: list[_Seq], admit: list[_Seq]
    ) -> tuple[list[int], BaseException | None, bool]:
        """One pass: keep ``rows`` of the batch (the sequences ``keep``), then prefill ``admit``
        or decode every kept row. Returns (tokens, error, whether the running batch was lost)."""
        torch = self.torch
        prefilling = False
        try:
            with torch.inference_mode():
                self._select(rows)
                if admit:
                    prefilling = True
                    return self._prefill(admit), None, False
                return self._decode_step(keep), None, False
        except Exception as exc:
            # A failed prefill leaves the running batch as it was (the merge commits last);
            # anything else leaves it in an unknown state, so it is dropped.
            lost = not prefilling
            if is_oom(exc):
                error: BaseException = ModelOOM(self._oom_message(keep, admit if prefilling else []))
                log.warning(
                    "out of memory", extra={"phase": "prefill" if prefilling else "decode", "error": str(exc)[:200]}
                )
            else:
                log.exception("model step failed")
                error = ModelError(f"generation failed: {exc.__class__.__name__}")
            if lost:
                self._batch = None
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            return [], error, lost

    def _oom_message(self, keep: list[_Seq], admit: list[_Seq]) -> str:
        if admit:
            longest = max(len(s.prompt) for s in admit)
            what = f"prefilling {len(admit)} prompt(s) of up to {longest} tokens"
        else:
            what = f"decoding a batch of {len(keep)} sequence(s)"
        return (
            f"out of memory on {self.device} while {what}; the worker is still serving: "
            "retry later, or with a shorter prompt or a smaller max_tokens"
        )

    def _select(self, rows: list[int]) -> None:
        batch = self._batch
        if batch is None or len(rows) == batch.mask.shape[0]:
            return
        if not rows:
            self._batch = None
            return
        idx = self.torch.tensor(rows, device=batch.mask.device)
        batch.cache.batch_select_indices(idx)
        batch.mask, batch.pos, batch.last = batch.mask[idx], batch.pos[idx], batch.last[idx]
        if self._mergeable:  # trim the leading columns that are padding in every row left
            first = int(batch.mask.any(0).nonzero()[0, 0])
            if first:
                batch.mask = batch.mask[:, first:]
                for layer in batch.cache.layers:
                    layer.keys = layer.keys[..., first:, :]
                    layer.values = layer.values[..., first:, :]

    def _call(self, input_ids, mask, pos, cache, last_only: bool):
        kw = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": pos,
            self._cache_kw: cache,
            "use_cache": True,
        }
        if last_only and self._logits_kw:
            kw[self._logits_kw] = 1
        return self.model(**kw).logits[:, -1, :]

    def _prefill(self, admit: list[_Seq]) -> list[int]:
        torch = self.torch
        n, width = len(admit), max(len(s.prompt) for s in admit)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, seq in enumerate(admit):
            ids[i, width - len(seq.prompt) :] = torch.tensor(seq.prompt, dtype=torch.long)
            mask[i, width - len(seq.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._new_cache()
        logits = self._call(ids, mask, pos, cache, last_only=True)
        first = self._sample(logits, admit)
        new = _Batch(cache, mask, mask.sum(-1), first)
        self._batch = new if self._batch is None else self._merge(self._batch, new)
        self.steps += 1
        self.prefills += 1
        return first.tolist()

    def _new_cache(self):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # older signature
            cache = DynamicCache()
        layers = getattr(cache, "layers", None)
        if layers is None or any(type(layer) is not DynamicLayer for layer in layers):
            if self._mergeable:
                log.info("model cache cannot be merged; using static batching", extra={"model": self.model_name})
            self._mergeable = False
        return cache

    def _merge(self, old: _Batch, new: _Batch) -> _Batch:
        """Left-pad both batches to one length and stack them; commits only once all succeeded."""
        torch, F = self.torch, self.torch.nn.functional
        t_old, t_new = old.mask.shape[1], new.mask.shape[1]
        width = max(t_old, t_new)
        p_old, p_new = width - t_old, width - t_new
        merged = []
        for lo, ln in zip(old.cache.layers, new.cache.layers):
            merged.append(
                (
                    torch.cat([F.pad(lo.keys, (0, 0, p_old, 0)), F.pad(ln.keys, (0, 0, p_new, 0))], 0),
                    torch.cat([F.pad(lo.values, (0, 0, p_old, 0)), F.pad(ln.values, (0, 0, p_new, 0))], 0),
                )
            )
        mask = torch.cat([F.pad(old.mask, (p_old, 0)), F.pad(new.mask, (p_new, 0))], 0)
        pos, last = torch.cat([old.pos, new.pos]), torch.cat([old.last, new.last])
        for layer, (k, v) in zip(old.cache.layers, merged):
            layer.keys, layer.values = k, v
        return _Batch(old.cache, mask, pos, last)

    def _decode_step(self, seqs: list[_Seq]) -> list[int]:
        torch = self.torch
        batch = self._batch
        mask = torch.cat(
            [batch.mask, torch.ones((batch.mask.shape[0], 1), dtype=batch.mask.dtype, device=batch.mask.device)], 1
        )
        logits = self._call(batch.last[:, None], mask, batch.pos[:, None], batch.cache, last_only=False)
        nxt = self._sample(logits, seqs)
        batch.mask, batch.pos, batch.last = mask, batch.pos + 1, nxt
        self.steps += 1
        return nxt.tolist()

    def _sample(self, logits, seqs: list[_Seq]):
        torch = self.torch
        out = torch.argmax(logits, dim=-1)
        for i, seq in enumerate(seqs):
            temp = seq.options.temperature
            if temp <= 0:
                continue
            probs = torch.softmax(logits[i].float() / temp, dim=-1)
            if seq.options.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                cut = torch.cumsum(sorted_p, 0) - sorted_p > seq.options.top_p
                sorted_p[cut] = 0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            out[i] = torch.multinomial(probs, 1, generator=seq.generator)[0]
        return out


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(
            "--device cuda was asked for, but torch sees no CUDA device (is the CUDA build of torch installed?)"
        )
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
            "float32": torch.float32,
            "fp32": torch.float32,
        }[dtype]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r}: use auto, bfloat16, float16 or float32") from None
