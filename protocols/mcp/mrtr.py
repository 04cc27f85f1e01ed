"""Input-required results (2026-07-28 MRTR) for what an upstream or an agent asks of a modern
client: the gateway's side of the multi round-trip pattern (basic/patterns/mrtr.mdx).

A 2026-07-28 client takes no server->client requests; instead ``tools/call``, ``prompts/get``
and ``resources/read`` (and only those: the spec's supported requests) may answer
``{resultType: "input_required", inputRequests: {key: {method, params}}, requestState}``, and
the client retries the same request with ``inputResponses`` (by key) and the echoed
``requestState`` (request_state.py: signed by the node, bound to caller and request, expiring,
single-use). Two things behind the gateway ask:

**An upstream MCP server** sends ``elicitation/create``, ``sampling/createMessage`` or
``roots/list`` while it handles the call (a handshake-era upstream on the call's stream; a
modern one's input-required result reaches the gateway the same way, as the upstream client
turns it into such requests). The design is to **keep the upstream call alive on the node that
holds it and route the retry there over the cluster**, not to re-run it:

- re-running is what a 2026-07-28 server does for itself, because its tool is written to be
  re-entered with the answers; a handshake-era tool is not: it is in the middle of its work,
  possibly after side effects, and a second call would repeat them and ask again, forever;
- the gateway cannot carry the upstream's call in ``requestState``: the call is a live
  exchange with the upstream (its session, its request id, its coroutine), not data.

So the first request runs the upstream call as an ``Exchange`` and waits for the first of: its
result (answered at once, nothing parked), or its requests for input. Requests that arrive
together (within ``GATHER_S`` of the first: an upstream that asks several things at once sends
them back to back) become one input-required result. Each gets the key its upstream names in
``params._meta["interlace/inputKey"]`` (taken off before the client sees it; the gateway's
upstream client puts a 2026-07-28 upstream's own keys there, and a handshake-era server may name
its requests so), else one of the gateway's making (``elicitation``, ``sampling``, ``roots``,
numbered when one kind repeats). Only what the client declared in its envelope's capabilities is
asked (MUST): a request it cannot answer is refused upstream, and when nothing is left to ask,
the call answers -32021 as before. A first request that already carries ``inputResponses`` (a
client answering, without state, what it knows will be asked, as a 2026-07-28 server's stateless
retry allows) answers the upstream's requests of those keys on the spot, each once; keys never
asked are ignored. The call
is then parked (``Parked``; it counts among the caller's open streams, ``gateway.core.quotas``,
while it waits), waiting at most ``client_request_timeout_s`` for the next round's
answers in the shared mailbox (sessions.Mailbox: a future on this node, the key/value store
across nodes), so a retry reaching any node finds it: that node posts the answers, the holding
node hands them to the upstream and posts what the call did next (its result, more requests, or
an error), and the retrying node answers the client with it (minting the next state itself).
A retry that leaves a request unanswered gets it asked again (the spec's SHOULD); keys the
gateway did not ask are ignored. A parked call whose client never returns is cancelled when its
wait ends, which withdraws its requests upstream. A retry whose holding node has gone answers
-32603 (the upstream call died with it): at once when that node stopped (a parked call is
announced in the shared store while it waits), else once ``call_timeout_s`` passed without an
answer. Progress and log messages the upstream sends after the first round have no stream to go
to (the retry may be on another node) and are dropped.

**An agent behind the gateway** whose canonical task ends ``input-required`` (an A2A, ACP or
model-backed agent, exposed as a tool): the question becomes one ``elicitation/create`` under the
key ``input`` (a form with one string, ``message``), when the client declared elicitation; else
the tool result names the task as before (``send_task`` with ``task_id`` continues it). The state
carries the task id: an accepted answer continues the canonical task (``continue_task``), a
declined or cancelled one cancels it. Tasks live in the shared backend, so any node resumes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from protocols.mcp import wire
from protocols.mcp.sessions import Mailbox
from protocols.mcp.wire import MCPError

log = logging.getLogger("interlace.mcp.mrtr")

METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})  # may answer input_required
KINDS = {"elicitation/create": "elicitation", "sampling/createMessage": "sampling", "roots/list": "roots"}
KEY_META = "interlace/inputKey"  # where an upstream names the key of its request for input
MAX_KEY = 128
GATHER_S = 0.05  # requests arriving this soon after the first are asked in the same round
INPUT_KEY = "input"  # an agent's question
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"message": {"type": "string", "description": "Your answer to the agent"}},
    "required": ["message"],
}

Outcome = dict[str, Any]  # {"result": ...} | {"error": {code, message, data?}} | {"ask": {key: request}}


def named_key(params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The key an upstream named its request for input by (``KEY_META``; None when it named none)
    and the request's params without it, as a client is asked."""
    meta = params.get("_meta")
    if not isinstance(meta, dict) or KEY_META not in meta:
        return None, params
    rest = {k: v for k, v in meta.items() if k != KEY_META}
    return meta[KEY_META], {k: v for k, v in params.items() if k != "_meta"} | ({"_meta": rest} if rest else {})


def input_required(requests: dict[str, dict[str, Any]], state: str) -> dict[str, Any]:
    return {"resultType": "input_required", "inputRequests": requests, "requestState": state}


def is_input_required(result: Any) -> bool:
    return isinstance(result, dict) and result.get("resultType") == "input_required"


def agent_question(question: str) -> dict[str, dict[str, Any]]:
    """An agent's input-required question as the input request the client answers."""
    params = {"mode": "form", "message": question, "requestedSchema": ANSWER_SCHEMA}
    return {INPUT_KEY: {"method": "elicitation/create", "params": params}}


def agent_answer(responses: Any) -> str | None:
    """The text of an accepted answer to ``agent_question``; None when declined, cancelled or
    missing (the caller tells those apart with ``answered``)."""
    reply = responses.get(INPUT_KEY) if isinstance(responses, dict) else None
    if isinstance(reply, dict) and reply.get("action") == "accept" and isinstance(reply.get("content"), dict):
        text = reply["content"].get("message")
        return text if isinstance(text, str) else None
    return None


def answered(responses: Any) -> bool:
    return isinstance(responses, dict) and isinstance(responses.get(INPUT_KEY), dict)


class Exchange:
    """One upstream call of a modern client whose requests for input are answered in rounds."""

    def __init__(self, run: Callable[[], Awaitable[dict[str, Any]]], answers: Any = None) -> None:
        self.id = secrets.token_urlsafe(12)
        # answers the first request brought along, by key (each answers one request, once)
        self.preset = {k: v for k, v in answers.items() if isinstance(v, dict)} if isinstance(answers, dict) else {}
        self.asked: dict[str, tuple[dict[str, Any], asyncio.Future]] = {}  # key -> (request, its answer)
        self._arrived: asyncio.Future = asyncio.get_running_loop().create_future()  # a request came
        self._kinds: Counter[str] = Counter()
        self.job = asyncio.create_task(run())

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """An upstream request for input (from the call's task): the client's answer, once given."""
        key, params = self._key(method, params)
        if key in self.preset:
            return self.preset.pop(key)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.asked[key] = ({"method": method, "params": params}, fut)
        if not self._arrived.done():
            self._arrived.set_result(None)
        try:
            return await fut
        finally:
            self.asked.pop(key, None)

    def _key(self, method: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The request's key (the upstream's, when it names a free one) and its params for the client."""
        named, params = named_key(params)
        if isinstance(named, str) and 0 < len(named) <= MAX_KEY and named not in self.asked:
            return named, params
        kind, key = KINDS[method], ""
        while not key or key in self.asked:
            self._kinds[kind] += 1
            key = kind if self._kinds[kind] == 1 else f"{kind}-{self._kinds[kind]}"
        return key, params

    def answer(self, responses: Any) -> None:
        """Hand the client's answers (by key) to the waiting upstream requests; others stay."""
        if not isinstance(responses, dict):
            return
        for key, (_, fut) in list(self.asked.items()):
            reply = responses.get(key)
            if isinstance(reply, dict) and not fut.done():
                fut.set_result(reply)

    async def next(self) -> Outcome:
        """What the call does next: its result or error, or the requests it waits on."""
        while True:
            pending = {k: req for k, (req, fut) in self.asked.items() if not fut.done()}
            if pending:
                # Its siblings come back to back; a finished call wins over its stale requests.
                await asyncio.wait((self.job,), timeout=GATHER_S)
                if not self.job.done():
                    pending = {k: req for k, (req, fut) in self.asked.items() if not fut.done()}
                    if pending:
                        return {"ask": pending}
            if self.job.done():
                return self._ended()
            if self._arrived.done():
                self._arrived = asyncio.get_running_loop().create_future()
            await asyncio.wait((self.job, self._arrived), return_when=asyncio.FIRST_COMPLETED)

    def _ended(self) -> Outcome:
        try:
            return {"result": self.job.result()}
        except MCPError as exc:
            return {"error": wire.error(None, exc)["error"]}
        except asyncio.CancelledError:
            return {"error": {"code": wire.INTERNAL_ERROR, "message": "the upstream call was cancelled"}}
        except Exception:
            log.exception("upstream call failed")
            return {"error": {"code": wire.INTERNAL_ERROR, "message": "Internal error"}}

    def cancel(self) -> None:
        self.job.cancel()


class Parked:
    """This node's exchanges waiting for a client's next round (module docstring)."""

    def __init__(self, mailbox: Mailbox, wait_s: float, round_s: float) -> None:
        self.mailbox, self.wait_s, self.round_s = mailbox, wait_s, round_s
        self.tasks: set[asyncio.Task] = set()

    @staticmethod
    def _held(exchange_id: str) -> str:
        return f"mcp:mrtr:held:{exchange_id}"

    async def park(self, exchange: Exchange, round: int, release: Callable[[], None]) -> None:
        """Keep ``exchange`` waiting for the answers of ``round`` (posted by ``resume``), and
        say so in the shared store (a retry for a call no node holds fails at once); ``release``
        runs once it ends."""
        await self.mailbox.kv.set(self._held(exchange.id), "1", max(1, int(self.wait_s) + 1))
        task = asyncio.create_task(self._hold(exchange, round, release))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _hold(self, exchange: Exchange, round: int, release: Callable[[], None]) -> None:
        try:
            while True:
                try:
                    responses = await self.mailbox.wait("mrtr-in", exchange.id, round, self.wait_s)
                except TimeoutError:  # the client never came back: the upstream call is withdrawn
                    return
                exchange.answer(responses)
                outcome = await exchange.next()
                if "ask" not in outcome:
                    release()  # before the answer goes out: the client's next call finds its place free
                await self.mailbox.post("mrtr-out", exchange.id, round, outcome)
                if "ask" not in outcome:
                    return
                round += 1
        finally:
            release()
            exchange.cancel()
            with contextlib.suppress(Exception):
                await self.mailbox.kv.delete(self._held(exchange.id))

    async def resume(self, exchange_id: str, round: int, responses: Any) -> Outcome:
        """Send ``responses`` to the exchange (on whichever node holds it); what it did next."""
        if await self.mailbox.kv.get(self._held(exchange_id)) is None:
            raise MCPError(wire.INTERNAL_ERROR, "the call waiting for this input is gone")
        waiting = asyncio.create_task(self.mailbox.wait("mrtr-out", exchange_id, round, self.round_s))
        await asyncio.sleep(0)  # the wait is registered before the answers can produce an outcome
        try:
            await self.mailbox.post("mrtr-in", exchange_id, round, responses if isinstance(responses, dict) else {})
            return await waiting
        except TimeoutError:
            raise MCPError(wire.INTERNAL_ERROR, "the call waiting for this input is gone") from None
        finally:
            waiting.cancel()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def outcome_reply(outcome: Outcome) -> dict[str, Any]:
    """An exchange's result (raises its error)."""
    if "error" in outcome:
        err = outcome["error"]
        raise MCPError(err.get("code", wire.INTERNAL_ERROR), str(err.get("message", "error")), err.get("data"))
    return outcome["result"]
