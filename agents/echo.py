"""The example agent: answers with the parts it was sent, unchanged.

Options, read from the last user message's metadata (or the task's), let tests and newcomers
exercise the runtime's paths:
  ``delay_ms``  wait before answering (cancel reaches the handler while it waits)
  ``chunks``    stream a single text part back as this many appended artifact chunks
  ``fail``      fail the task with this message
  ``ask``       ask for more input first (input-required); the follow-up message is echoed
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agents.worker import TaskFailed, Worker
from schemas import Artifact, Message, Task, TaskEvent, TaskState, TextPart


class EchoWorker(Worker):
    agent = "echo"
    description = "Replies with exactly the parts it was sent (text, data and files)."

    def skills(self) -> list[dict]:
        modes = ["text/plain", "application/json", "application/octet-stream"]
        return [
            {
                "id": "echo",
                "name": "Echo",
                "description": "Echo a message back unchanged: a test and demo agent.",
                "tags": ["echo", "test", "demo"],
                "input_modes": modes,
                "output_modes": modes,
                "examples": ["hello"],
            }
        ]

    async def handle(self, task: Task) -> AsyncIterator[TaskEvent]:
        user = [m for m in task.history if m.role == "user"]
        message = user[-1]
        opts = {**task.metadata, **(message.metadata or {})}
        if opts.get("ask") and len(user) == 1:
            question = Message(
                role="agent", parts=[TextPart(text=str(opts["ask"]))], task_id=task.id, context_id=task.context_id
            )
            yield task.status_event(TaskState.INPUT_REQUIRED, question)
            return
        if opts.get("delay_ms"):
            await asyncio.sleep(int(opts["delay_ms"]) / 1000)
        if opts.get("fail"):
            raise TaskFailed(str(opts["fail"]))
        chunks = int(opts.get("chunks") or 1)
        text = message.parts[0].text if len(message.parts) == 1 and isinstance(message.parts[0], TextPart) else None
        if chunks > 1 and text:
            size = -(-len(text) // chunks)
            pieces = [text[i : i + size] for i in range(0, len(text), size)]
            for i, piece in enumerate(pieces):
                art = Artifact(artifact_id="echo", name="echo", parts=[TextPart(text=piece)])
                yield task.artifact_event(art, append=i > 0, last_chunk=i == len(pieces) - 1)
            return
        yield task.artifact_event(Artifact(artifact_id="echo", name="echo", parts=message.parts), last_chunk=True)
