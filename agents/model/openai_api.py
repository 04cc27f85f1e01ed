"""An inference engine that speaks the OpenAI-compatible HTTP API, as a model backend.

vLLM, SGLang, llama.cpp's server, Ollama and LM Studio all serve ``/v1/models`` and
``/v1/chat/completions`` (and ``/v1/completions``) with server-sent streaming, and batch requests
themselves. ``OpenAIEngine`` sends each request as one streamed call: chat messages to
``/chat/completions``, a raw text prompt (the ``text-generation`` skill) to ``/completions``.

* Options map onto the request: ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``
  (``system`` is a message); ``ignore_eos`` is sent as the extensions engines honour
  (``ignore_eos``, and ``min_tokens`` = ``max_tokens``).
* Cancel: closing the iterator closes the HTTP connection, which is how every one of these
  engines learns to abort the request (there is no cancel call in the API).
* The engine's own refusals (an HTTP error with a JSON body: context length exceeded, model not
  found, overloaded) raise ``ModelError`` with the engine's message: that task fails, nothing
  else. An engine that cannot be reached, drops the connection mid-stream, or answers 502/503/504
  without an error body (a proxy in front of a dead engine) raises ``EngineDown``: the worker
  releases the task for redelivery and waits for the engine (``agents.model.engine_worker``).
  Some engines (llama.cpp's Python server) refuse a streamed request by ending the stream with
  neither a finish reason nor ``[DONE]``: then the request is sent once more, unstreamed and
  with ``max_tokens: 1``, to learn the engine's reason (a refusal costs it nothing; otherwise
  one prefill), and the task fails with it.
* ``describe()`` reads ``/v1/models``: the served model's id and, where the engine says it, its
  context length (vLLM ``max_model_len``, LM Studio ``max_context_length``, others
  ``context_length``).

The client is aiohttp (the worker's hot path: one pooled session, no per-call client). The API
key, when there is one, goes in ``Authorization: Bearer`` and nowhere else (never logged).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from agents.model.base import GenOptions, ModelBackend, ModelError, Prompt, PromptTooLong, Usage
from agents.worker import Unavailable

CONTEXT_KEYS = ("max_model_len", "max_context_length", "context_length", "context_window")
DOWN_STATUSES = (502, 503, 504)
MAX_ERROR_BYTES = 64 * 1024  # an engine's error body is read up to this much


class EngineDown(Unavailable):
    """The engine cannot serve now (unreachable, connection lost, or a proxy says it is down)."""


@dataclass(frozen=True)
class Served:
    """What the engine serves under the configured model name."""

    model: str
    context_length: int | None = None


class OpenAIEngine(ModelBackend):
    kind = "openai"
    device = "engine"
    context_length = 0  # unknown until /v1/models says it

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_inflight: int = 8,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 300.0,
        metrics: Any = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model_name = model
        self.max_batch = max_inflight  # the engine batches; this bounds what the worker sends it
        self.metrics = metrics
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # sock_read bounds the wait for each streamed chunk, not the whole generation.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._active = 0

    @property
    def active(self) -> int:
        return self._active

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=0),  # max_inflight bounds it, not the pool
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def describe(self) -> Served:
        """What ``/v1/models`` says of the configured model; ModelError when it is not served,
        EngineDown when the engine does not answer."""
        try:
            async with self._http().get(f"{self.base_url}/models") as resp:
                if resp.status != 200:
                    raise await _refusal(resp)
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise EngineDown(f"the engine at {self.base_url} does not answer: {_why(exc)}") from None
        models = body.get("data") if isinstance(body, dict) else None
        if not isinstance(models, list):
            raise EngineDown(f"the engine at {self.base_url} answered /models without a model list")
        ids = [m.get("id") for m in models if isinstance(m, dict)]
        for entry in models:
            if isinstance(entry, dict) and entry.get("id") == self.model_name:
                return Served(self.model_name, _context_length(entry))
        raise ModelError(f"the engine does not serve {self.model_name!r}; it serves {', '.join(map(str, ids))}")

    async def generate(self, prompt: Prompt, options: GenOptions, usage: Usage | None = None) -> AsyncIterator[str]:
        usage = usage if usage is not None else Usage()
        path, body = self._request(prompt, options)
        started = time.monotonic()
        self._active += 1
        try:
            try:
                resp = await self._http().post(f"{self.base_url}{path}", json=body)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise EngineDown(f"the engine at {self.base_url} does not answer: {_why(exc)}") from None
            finished = False
            try:
                if resp.status != 200:
                    raise await _refusal(resp)
                async for chunk in _sse(resp):
                    choice = (chunk.get("choices") or [{}])[0]
                    piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                    if chunk.get("usage"):
                        usage.prompt_tokens = int(chunk["usage"].get("prompt_tokens") or 0)
                        usage.completion_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                    if choice.get("finish_reason"):
                        usage.finish_reason = choice["finish_reason"]
                        finished = True
                    if piece:
                        if usage.first_token_s is None:
                            usage.first_token_s = time.monotonic() - started
                        if not chunk.get("usage"):
                            usage.completion_tokens += 1  # one chunk per token, until the engine counts
                        if self.metrics is not None:
                            self.metrics.generated(1)
                        yield piece
                if not finished:
                    raise await self._why_unfinished(path, body)
            finally:
                # Early exit (cancel) closes the connection: how the engine learns to stop.
                resp.close()
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise EngineDown(f"the engine dropped the connection: {_why(exc)}") from None
        except TimeoutError:
            raise EngineDown("the engine stopped sending tokens") from None
        finally:
            self._active -= 1

    async def _why_unfinished(self, path: str, body: dict[str, Any]) -> Exception:
        """The reason a stream ended unfinished: the engine's own, asked for unstreamed."""
        probe = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "min_tokens", "ignore_eos")}
        probe["max_tokens"] = 1
        try:
            async with self._http().post(f"{self.base_url}{path}", json=probe) as resp:
                if resp.status != 200:
                    return await _refusal(resp)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return EngineDown(f"the engine at {self.base_url} does not answer: {_why(exc)}")
        return ModelError("the engine ended the stream before finishing the request, without saying why")

    def _request(self, prompt: Prompt, options: GenOptions) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "stream": True,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
        }
        if options.stop:
            body["stop"] = options.stop
        if options.seed is not None:
            body["seed"] = options.seed
        if options.ignore_eos:  # vLLM and SGLang know ignore_eos; vLLM and llama.cpp min_tokens
            body["ignore_eos"] = True
            body["min_tokens"] = options.max_tokens
        if prompt.messages is not None:
            body["messages"] = prompt.messages
            body["stream_options"] = {"include_usage": True}
            return "/chat/completions", body
        body["prompt"] = prompt.text or ""
        return "/completions", body


async def _sse(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON of each ``data:`` line up to ``[DONE]`` (engines send one event per line)."""
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise EngineDown("the engine sent a malformed stream event") from None
        if isinstance(event, dict) and "error" in event:  # an error reported mid-stream
            raise ModelError(_message(event) or "the engine failed the request")
        if isinstance(event, dict):
            yield event


async def _refusal(resp: aiohttp.ClientResponse) -> Exception:
    """The exception for a non-200 answer: the engine's own reason, or EngineDown."""
    raw = await resp.content.read(MAX_ERROR_BYTES)
    try:
        reason = _message(json.loads(raw))
    except ValueError:
        reason = None
    if reason is None and resp.status in DOWN_STATUSES:
        return EngineDown(f"the engine is unavailable (HTTP {resp.status})")
    text = reason or f"the engine refused the request (HTTP {resp.status})"
    if "context" in text.lower() and ("length" in text.lower() or "window" in text.lower()):
        return PromptTooLong(text)
    return ModelError(text)


def _message(body: Any) -> str | None:
    """The reason in an OpenAI-style error body ``{"error": {"message"}}`` (or a bare string)."""
    if not isinstance(body, dict):
        return None
    error = body.get("error", body.get("detail"))
    if isinstance(error, dict):
        error = error.get("message")
    return str(error)[:500] if error else None


def _context_length(entry: dict[str, Any]) -> int | None:
    for key in CONTEXT_KEYS:
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _why(exc: BaseException) -> str:
    return str(exc) or exc.__class__.__name__
