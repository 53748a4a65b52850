"""The engine in its own thread, fed by asyncio request handlers.

The engine is not thread-safe, so exactly one thread (``ember-engine``) ever touches it. Handlers
hand it requests and aborts through a thread-safe inbox; after every step it passes each
request's new tokens back to that request's asyncio queue with ``loop.call_soon_threadsafe``.
A slow client therefore only fills its own queue and never stalls the batch. With nothing to
run, the thread blocks on the inbox instead of spinning.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ember.engine.frozen_heap import frozen_heap
from ember.engine.sequence import Sequence, TokenLogprobs
from ember.errors import EmberError
from ember.sampling_params import SamplingParams
from ember.server.errors import APIError
from ember.server.metrics import ServerMetrics

logger = logging.getLogger("ember.server")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~3x, once per token
class TokenEvent:
    """One new token of one sequence, copied out of the engine thread's state."""

    index: int  # which sequence of the request (the choice index)
    token_id: int
    text: str  # newly visible text (may be "")
    logprobs: TokenLogprobs | None
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int


def coalesce(events: list[TokenEvent]) -> list[TokenEvent]:
    """Merge runs of events of the same sequence into one (text joined, the last one's state),
    so a client that fell behind gets one chunk for several tokens instead of one per token:
    the HTTP side then costs per chunk sent, not per token generated. Events that carry
    logprobs stay one per token."""
    merged: list[TokenEvent] = []
    last_of: dict[int, int] = {}  # sequence index -> its position in merged, while mergeable
    for ev in events:
        at = last_of.get(ev.index)
        if at is not None and ev.logprobs is None and merged[at].logprobs is None and not merged[at].finished:
            prev = merged[at]
            merged[at] = dataclasses.replace(ev, text=prev.text + ev.text)
            continue
        last_of[ev.index] = len(merged)
        merged.append(ev)
    return merged


class EngineFailure(Exception):
    """The engine thread could not run this request (its message is safe to show)."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


class RequestGroup:
    """The n sequences of one API request; their events share one asyncio queue."""

    def __init__(self, prompts: list[tuple[list[int], SamplingParams]], loop: asyncio.AbstractEventLoop):
        self.prompts = prompts
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.arrival = time.monotonic()
        self.num_unfinished = len(prompts)  # counted on the event loop
        self.released = False
        # Engine thread only:
        self.seqs: list[Sequence] = []
        self.first_token_at: dict[int, float] = {}

    @property
    def done(self) -> bool:
        return self.num_unfinished == 0


def _deliver(items: list[tuple[RequestGroup, list[TokenEvent]]]) -> None:
    """On the event loop: hand each request its events of one step."""
    for group, events in items:
        group.events.put_nowait(events)


_STOP = object()
DISCONNECT_POLL_S = 1.0


class AsyncEngine:
    def __init__(self, engine, max_num_seqs: int, max_queue: int, metrics: ServerMetrics | None = None):
        self.engine = engine
        self.capacity = max_num_seqs + max_queue  # running slots plus the waiting queue
        self.metrics = metrics
        self.num_active_seqs = 0  # event loop only: admitted and not yet released
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._by_seq: dict[int, tuple[RequestGroup, int]] = {}  # engine thread only
        self._thread: threading.Thread | None = None
        self.last_stats: dict[str, int] = engine.stats()  # replaced (never mutated) by the engine thread

    # ----- lifecycle (event loop) ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ember-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join(timeout)

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ----- requests (event loop) -----------------------------------------------------------------
    def submit(self, prompts: list[tuple[list[int], SamplingParams]]) -> RequestGroup:
        """Queue a request's sequences, or refuse with 503 when the queue is full."""
        if not self.is_alive:
            raise APIError(503, "the engine is not running", code="engine_unavailable")
        if self.num_active_seqs + len(prompts) > self.capacity:
            raise APIError(503, "the server is at capacity (waiting queue full); retry later", code="queue_full")
        group = RequestGroup(prompts, asyncio.get_running_loop())
        self.num_active_seqs += len(prompts)
        self._inbox.put(("add", group))
        return group

    async def stream(self, group: RequestGroup, is_disconnected=None) -> AsyncIterator[TokenEvent]:
        """The request's token events until all its sequences finish.

        ``is_disconnected`` (an async callable) is polled about once a second for requests that
        are not streamed, where no failed write would tell us the client left; then this ends
        early and the caller's ``release`` aborts the rest."""
        last_check = time.monotonic()
        while not group.done:
            if is_disconnected is None:
                item = await group.events.get()
            else:
                try:
                    item = await asyncio.wait_for(group.events.get(), timeout=DISCONNECT_POLL_S)
                except TimeoutError:
                    item = None
                if time.monotonic() - last_check >= DISCONNECT_POLL_S:
                    last_check = time.monotonic()
                    if await is_disconnected():
                        return
                if item is None:
                    continue
            # Whatever else has arrived meanwhile goes out with it, coalesced per sequence.
            items = [item]
            while not group.events.empty():
                items.append(group.events.get_nowait())
            events: list[TokenEvent] = []
            failure = None
            for it in items:
                if isinstance(it, EngineFailure):
                    failure = it  # nothing follows a failure
                    break
                events += it
            for event in coalesce(events):
                if event.finished:
                    group.num_unfinished -= 1
                yield event
            if failure is not None:
                raise failure

    def release(self, group: RequestGroup) -> None:
        """End of a request, finished or not (client gone, error): abort what still runs."""
        if group.released:
            return
        group.released = True
        self.num_active_seqs -= len(group.prompts)
        if not group.done:
            self._inbox.put(("abort", group))

    # ----- the engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        with frozen_heap():  # the server's start-up objects stay out of full GC passes
            self._loop()

    def _loop(self) -> None:
        engine = self.engine
        while True:
            try:
                item = self._inbox.get(block=not engine.has_unfinished())
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    self._abort_all()
                    return
                self._handle(*item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            if engine.has_unfinished():
                self._step()
            self._publish_stats()

    def _handle(self, op: str, group: RequestGroup) -> None:
        if op == "abort":
            for seq in group.seqs:
                if self._by_seq.pop(seq.seq_id, None) is not None:
                    self.engine.abort(seq)
            return
        try:
            for i, (ids, params) in enumerate(group.prompts):
                seq = self.engine.add_request(ids, params)
                group.seqs.append(seq)
                self._by_seq[seq.seq_id] = (group, i)
                if self.metrics:
                    self.metrics.prompt_tokens.inc(len(ids))
        except EmberError as exc:  # checked before submit, so rare: fail the whole request
            self._handle("abort", group)
            self._send(group, EngineFailure(str(exc), status=400))
        except Exception as exc:
            logger.exception("adding a request failed")
            self._handle("abort", group)
            self._send(group, EngineFailure(f"internal error: {type(exc).__name__}"))

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:  # a bug in a step: fail what was running, keep serving
            logger.exception("engine step failed")
            failed = {id(g): g for g, _ in self._by_seq.values()}
            for group in failed.values():
                self._handle("abort", group)
                self._send(group, EngineFailure(f"internal error in the engine: {type(exc).__name__}"))
            return
        now = time.monotonic()
        batches: dict[int, tuple[RequestGroup, list[TokenEvent]]] = {}
        for out in outputs:
            entry = self._by_seq.get(out.seq.seq_id)
            if entry is None:
                continue
            group, index = entry
            seq = out.seq
            logprobs = seq.logprobs[-1] if seq.params.logprobs is not None and seq.logprobs else None
            event = TokenEvent(index, out.token_id, out.text, logprobs, out.finished, seq.finish_reason,
                               seq.num_prompt_tokens, out.num_output_tokens)
            batches.setdefault(id(group), (group, []))[1].append(event)
            self._record_timing(group, index, seq, now, out.finished)
            if out.finished:
                del self._by_seq[seq.seq_id]
                self.engine.abort(seq)  # frees its detokenizer; the blocks went on finish
        if self.metrics is not None and batches:
            self.metrics.generation_tokens.inc(sum(len(events) for _, events in batches.values()))
        self._send_all(list(batches.values()))

    def _send_all(self, deliveries: list[tuple[RequestGroup, list[TokenEvent]]]) -> None:
        """One wake-up of each event loop per step, not one per request: each costs a syscall
        and a callback, and at 64 streams those added up to a large share of the step."""
        by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list]] = {}
        for group, events in deliveries:
            by_loop.setdefault(id(group.loop), (group.loop, []))[1].append((group, events))
        for loop, items in by_loop.values():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is closed (shutdown): nobody is listening
                pass

    def _record_timing(self, group: RequestGroup, index: int, seq: Sequence, now: float, finished: bool) -> None:
        if self.metrics is None:
            return
        if index not in group.first_token_at:
            group.first_token_at[index] = now
            self.metrics.time_to_first_token.observe(now - group.arrival)
        first = group.first_token_at[index]
        if finished and seq.num_output_tokens > 1:
            self.metrics.time_per_output_token.observe((now - first) / (seq.num_output_tokens - 1))

    def _send(self, group: RequestGroup, item) -> None:
        try:
            group.loop.call_soon_threadsafe(group.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed (shutdown): nobody is listening
            pass

    def _abort_all(self) -> None:
        for group in {id(g): g for g, _ in self._by_seq.values()}.values():
            self._handle("abort", group)
            self._send(group, EngineFailure("the server is shutting down", status=503))

    def _publish_stats(self) -> None:
        stats = self.engine.stats()
        if self.metrics:
            self.metrics.update_preemptions(stats.get("num_preemptions", 0))
        self.last_stats = stats
