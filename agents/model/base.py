"""What every model backend shares: generation options, usage, errors, and streamed detokenising.

A backend turns a prompt (chat messages, or raw text) into an async iterator of text pieces.
Closing the iterator early (the task was canceled) frees the request's slot in the backend.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class ModelError(Exception):
    """A request the model cannot serve; the message is meant for the client."""


class ModelOOM(ModelError):
    """The device ran out of memory while serving this request (the worker keeps serving)."""


class PromptTooLong(ModelError):
    pass


def is_oom(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA), MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch
        return True
    return isinstance(exc, RuntimeError) and (
        "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc)
    )


@dataclass
class GenOptions:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)


@dataclass
class Usage:
    """Filled in by the backend while and after it generates."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None  # stop | length | canceled | error
    first_token_s: float | None = None  # seconds from submit to the first token
    # Engine steps (forward passes) at cancel time and when the request's batch slot was freed.
    cancel_step: int | None = None
    freed_step: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
        }


@dataclass
class Prompt:
    """Chat messages ``[{role, content}]`` (the chat template is applied) or raw ``text``."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None


class ModelBackend(abc.ABC):
    kind: str = "?"
    device: str = "cpu"
    model_name: str = "model"
    context_length: int = 2048
    max_batch: int = 1

    @abc.abstractmethod
    def generate(self, prompt: Prompt, options: GenOptions, usage: Usage | None = None) -> AsyncIterator[str]:
        """Text pieces as they are produced; raises ModelError subclasses for client-visible failures."""

    @property
    def active(self) -> int:
        """Requests generating right now."""
        return 0

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return 0

    def memory_bytes(self) -> dict[str, int]:
        """Device memory in use, by kind (``allocated``, ``reserved``); empty off GPU."""
        return {}

    async def close(self) -> None:
        return None


class TextStream:
    """Incremental detokenising with stop strings.

    ``push(token)`` returns the text that is safe to send now: complete UTF-8 only (a byte-level
    token may end mid-character), and never a prefix of a stop string that might still complete
    (it is held back until it can no longer match). Decoding uses a small sliding window of
    tokens (the last emitted token is decoded again as context and the difference is taken), so a
    step costs O(1) rather than re-decoding the whole output, and tokenizers that drop a leading
    space at the start of a decode still produce the right text.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # all text decoded so far
        self.sent = 0  # chars of ``text`` already handed out
        self.stopped = False
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.decode(self.ids[self._prefix : self._read])
        after = self.decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Whatever is left once generation ends (nothing after a stop string)."""
        if self.stopped:
            return ""
        if self._read < len(self.ids):  # an incomplete character at the very end: send it anyway
            tail = self.decode(self.ids[self._prefix :])
            before = self.decode(self.ids[self._prefix : self._read])
            self.text += tail[len(before) :]
            self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        if self.stop:
            window = max(len(s) for s in self.stop)
            start = max(0, self.sent - window)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                end = max(min(hits), self.sent)
                self.stopped = True
                piece, self.sent = self.text[self.sent : end], end
                return piece
        end = len(self.text)
        if self.stop and not final:
            end -= _held_back(self.text, self.stop)
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : end], end
        return piece


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
