"""llama.cpp backend (``llama-cpp-python``): GGUF models on CPU, one request at a time.

llama.cpp's Python binding has no continuous batching, so requests take turns: the next one
waits (``waiting`` is the queue depth) until the running one finishes or is canceled. Each token
is pulled from llama.cpp's stream on one dedicated thread, so cancel is seen after at most the
token being computed; the stream is then closed on that same thread before the next request
starts. The chat template is the one stored in the GGUF (llama.cpp applies it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agents.model.base import GenOptions, ModelBackend, ModelError, ModelOOM, Prompt, PromptTooLong, Usage, is_oom

log = logging.getLogger("interlace.model")


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:
        return False
    return True


class LlamaCppBackend(ModelBackend):
    kind = "llamacpp"
    device = "cpu"

    def __init__(self, llm: Any, *, model_name: str = "model", metrics: Any = None) -> None:
        self.llm = llm
        self.model_name = model_name
        self.metrics = metrics
        self.context_length = int(llm.n_ctx())
        self.max_batch = 1
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llamacpp")
        self._waiting = 0
        self._active = 0

    @classmethod
    def load(
        cls,
        path: str,
        *,
        context: int | None = None,
        threads: int | None = None,
        model_name: str = "model",
        metrics: Any = None,
    ) -> LlamaCppBackend:
        from llama_cpp import Llama

        llm = Llama(
            model_path=str(path),
            n_ctx=context or 4096,
            n_threads=threads or max(1, os.cpu_count() or 1),
            verbose=False,
        )
        return cls(llm, model_name=model_name, metrics=metrics)

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return self._waiting

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.set_load(self._active, self._waiting)

    def _open(self, prompt: Prompt, options: GenOptions):
        kw = dict(
            stream=True,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            stop=list(options.stop),
            seed=options.seed,
        )
        if prompt.messages is not None:
            return self.llm.create_chat_completion(messages=prompt.messages, **kw)
        return self.llm.create_completion(prompt=prompt.text or "", **kw)

    async def generate(self, prompt: Prompt, options: GenOptions, usage: Usage | None = None) -> AsyncIterator[str]:
        usage = usage if usage is not None else Usage()
        loop = asyncio.get_running_loop()
        self._waiting += 1
        self._gauges()
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        self._active = 1
        self._gauges()
        started = loop.time()
        stream = None
        try:
            stream = await loop.run_in_executor(self._pool, self._open, prompt, options)
            while True:
                step = loop.time()
                chunk = await loop.run_in_executor(self._pool, next, stream, None)
                if chunk is None:
                    break
                choice = chunk["choices"][0]
                text = choice["delta"].get("content") if "delta" in choice else choice.get("text")
                if text:
                    if usage.completion_tokens == 0:
                        usage.first_token_s = loop.time() - started
                    usage.completion_tokens += 1
                    if self.metrics is not None:
                        self.metrics.generated(1, loop.time() - step)
                    yield text
                if choice.get("finish_reason"):
                    usage.finish_reason = choice["finish_reason"]
            usage.prompt_tokens = max(0, int(self.llm.n_tokens) - usage.completion_tokens)
        except (asyncio.CancelledError, GeneratorExit):
            usage.finish_reason = "canceled"
            raise
        except ModelError:
            raise
        except Exception as exc:
            usage.finish_reason = "error"
            if is_oom(exc):
                raise ModelOOM(f"out of memory while generating with llama.cpp: {exc}") from None
            if "context window" in str(exc):
                raise PromptTooLong(str(exc)) from None
            log.exception("llama.cpp generation failed")
            raise ModelError(f"generation failed: {exc.__class__.__name__}") from None
        finally:
            if stream is not None:
                self._pool.submit(stream.close)  # runs before the next request's work (one thread)
            self._active = 0
            self._lock.release()
            self._gauges()

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        closer = getattr(self.llm, "close", None)
        if closer is not None:
            closer()
