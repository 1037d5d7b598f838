"""The engine: continuous batching over ids, in one thread.

    Job (a request)       its choices, and the queue its handler reads events from
    Choice (text at edge) one completion: its prompt ids, die, seed and caps, and its text
                          built token by token (UTF-8 and stop strings, as `complete` does)
    Engine (ids only)     one thread and one `sampling.Batch`: every step draws a token for
                          every running row; between steps, finished and abandoned rows
                          leave and waiting ones join

Requests in flight at the same time are decoded together, one forward pass per step for
all of them, and a request arriving mid-way joins at the next step (continuous batching).
Rows wait in a bounded queue: past it `submit` raises `Overloaded` (the app answers 503).

One row's failure is that row's alone: when a step fails, each row is tried on its own
(`Engine._isolate`); the rows that fail alone fail their requests, the others go on with
the same generators, so their text is what it would have been.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import threading
import traceback
import uuid

import torch

from ..completion import RowText
from ..sampling import Batch, Draw
from .protocol import ApiError, CompletionRequest


class Job:
    """One request in the engine: its choices, and the queue its handler reads events from.
    Events: ("token", choice, index, text piece, done) and ("error", ApiError)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.id = "cmpl-" + uuid.uuid4().hex[:24]
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.choices: list[Choice] = []
        self.admitted = 0  # choices that have joined the batch
        self.cancelled = False

    def send(self, event: tuple) -> None:
        """From the engine thread to the handler (on the event loop)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is stopping and nobody listens
            pass


class Choice:
    """One completion: what its row needs (ids, die, seed, caps) and its text, built token
    by token in the engine thread (so a stop string ends the row at once)."""

    def __init__(self, job: Job, index: int, prompt_ids: list[int], req: CompletionRequest, tokenizer, base: int):
        self.job, self.index, self.prompt_ids, self.req = job, index, prompt_ids, req
        self.params, self.max_tokens, self.top, self.die = req.params, req.max_tokens, req.top, req.die
        self.seed = (req.seed + index) % 2**64 if req.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self._pieces: list[str] = []
        self.text = RowText(tokenizer, req.stop, self._pieces.append)
        self.base = base  # characters before the completion in the returned text (the echoed prompt)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.offsets: list[int] = []
        self.top_ids: list[list[int]] = []
        self.top_probs: list[list[float]] = []
        self.entropy: list[float] = []
        self.finish_reason: str | None = None
        self.row = None  # the engine's Batch row, once admitted
        self.generator: torch.Generator | None = None  # its own dice, seeded once it is admitted

    def finish_now(self) -> None:
        """max_tokens 0: finished before any token."""
        self.text.finish("length")
        self.finish_reason = "length"

    def accept(self, d: Draw) -> bool:
        """A new token (engine thread). Returns True when the completion is finished."""
        self.offsets.append(self.base + len(self.text.text))
        self.tokens.append(d.token)
        self.logprobs.append(d.logprob)
        if d.top_ids is not None:
            self.top_ids.append(d.top_ids[: self.top])
            self.top_probs.append(d.top_probs[: self.top])
        if d.entropy is not None:
            self.entropy.append(d.entropy)
        done = self.text.feed(d.token)
        if not done and len(self.tokens) >= self.max_tokens:
            self.text.finish("length")
            done = True
        if done:
            self.finish_reason = "length" if self.text.finish_reason == "length" else "stop"
        piece = "".join(self._pieces)
        self._pieces.clear()
        self.job.send(("token", self, len(self.tokens) - 1, piece, done))
        return done


class Overloaded(Exception):
    """The queue is full (the app answers 503 with Retry-After)."""


def _engine_error(e: BaseException) -> ApiError:
    return ApiError(500, f"generation failed: {type(e).__name__}", code="engine_error")


class Engine:
    """One thread decoding every running row in one `sampling.Batch`.

    Between steps it drops the rows of finished or abandoned requests and lets waiting
    ones join, up to `max_batch` rows; at most `queue_size` requests wait beyond that
    (`submit` raises `Overloaded` past it). `trace` keeps, for each recent step, the ids
    of the requests it decoded: two requests in one step shared one forward pass.
    """

    def __init__(self, model, *, vocab_limit: int | None, max_batch: int = 32, queue_size: int = 64):
        self.model, self.vocab_limit = model, vocab_limit
        self.max_batch, self.queue_size = max_batch, queue_size
        self.batch = self._new_batch()
        self._cv = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: set[Choice] = set()
        self._closed = self._paused = False
        self._thread: threading.Thread | None = None
        self.trace: collections.deque[tuple[str, ...]] = collections.deque(maxlen=1024)
        self.counts = collections.Counter()

    def _new_batch(self) -> Batch:
        # No CUDA graph: rows join and leave all the time, and each change would be a recapture.
        return Batch(self.model, cuda_graph=False, vocab_limit=self.vocab_limit)

    @property
    def device(self) -> torch.device:
        return self.batch.device

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="minigpt-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread; every request still running or waiting gets an error event."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
        jobs = {c.job for c in self._active} | set(self._waiting)
        for job in jobs:
            job.send(("error", ApiError(503, "the server is shutting down", code="shutting_down")))

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closed:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            if len(self._waiting) >= self.queue_size:
                self.counts["rejected"] += 1
                raise Overloaded
            self._waiting.append(job)
            self.counts["requests"] += 1
            self._cv.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: its rows leave at the next step."""
        with self._cv:
            job.cancelled = True
            self._cv.notify_all()

    def pause(self) -> None:
        """Hold every step (requests queue up meanwhile); for tests and maintenance."""
        with self._cv:
            self._paused = True

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    def stats(self) -> dict[str, int]:
        with self._cv:
            return {
                "running_rows": len(self._active),
                "waiting_requests": len(self._waiting),
                "max_batch": self.max_batch,
                "queue_size": self.queue_size,
                "steps": self.batch.steps + self.counts["steps_before"],
                "prefills": self.batch.prefills,
                "max_rows_in_step": self.counts["max_rows_in_step"],
                "tokens": self.counts["tokens"],
                "requests": self.counts["requests"],
                "rejected": self.counts["rejected"],
                "finished_rows": self.counts["finished"],
                "cancelled_rows": self.counts["cancelled"],
                "errors": self.counts["errors"],
            }

    def _admit(self) -> None:
        """(Under the lock.) Drop abandoned rows; let waiting rows join, first come first served."""
        for c in [c for c in self._active if c.job.cancelled]:
            self.batch.remove(c.row)
            self._active.discard(c)
            self.counts["cancelled"] += 1
        while self._waiting and len(self._active) < self.max_batch:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                continue
            c = job.choices[job.admitted]
            job.admitted += 1
            if job.admitted == len(job.choices):
                self._waiting.popleft()
            c.generator = torch.Generator(device=self.device)
            c.generator.manual_seed(c.seed)
            c.row = self.batch.add(c.prompt_ids, c.params, c.generator, tag=c)
            self._active.add(c)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (self._paused or not (self._active or self._waiting)):
                    self._cv.wait()
                if self._closed:
                    return
                self._admit()
                active = list(self._active)
            if not active:
                continue
            top, entropy = max(c.top for c in active), any(c.die for c in active)
            try:
                draws = self.batch.step(top=top, entropy=entropy)
            except Exception as e:  # a bug, out of memory, or one poisoned row: find whose it is
                self._log(e)
                draws = self._isolate(top, entropy)
            self._accept(draws)

    def _accept(self, draws: list[Draw]) -> None:
        """Hand each row its token; finished rows leave. A row whose text fails fails alone."""
        finished = []
        for d in draws:
            c = d.row.tag
            try:
                if c.accept(d):
                    finished.append(c)
            except Exception as e:  # noqa: BLE001 - a bug in one row's text: that row's request fails
                self._log(e)
                self._fail(c, e)
        if draws:
            self.trace.append(tuple(sorted({d.row.tag.job.id for d in draws})))
        with self._cv:
            self.counts["tokens"] += len(draws)
            self.counts["max_rows_in_step"] = max(self.counts["max_rows_in_step"], len(draws))
            for c in finished:
                self.batch.remove(c.row)
                self._active.discard(c)
                self.counts["finished"] += 1

    def _isolate(self, top: int, entropy: bool) -> list[Draw]:
        """After a failed step: try every row alone (a fresh one-row batch from its ids so far,
        with its own generator: nothing was drawn in the failed step, so the draw is the one
        it would have made). Rows that fail alone fail their requests; the others get their
        token and are carried into a fresh batch together."""
        with self._cv:
            self.counts["steps_before"] += self.batch.steps
            rows = [c for c in self._active if not c.job.cancelled]
            self.batch = self._new_batch()
        draws = []
        for c in rows:
            probe = self._new_batch()
            probe.add(c.row.ids, c.params, c.generator, tag=c)
            try:
                draws += probe.step(top=top, entropy=entropy)
            except Exception as e:  # noqa: BLE001 - this row fails on its own: its request fails
                self._fail(c, e)
        with self._cv:
            for d in draws:
                c = d.row.tag
                c.row = self.batch.add(d.row.ids, c.params, c.generator, tag=c)
            self.counts["steps_before"] += len(draws) > 0
        return draws

    def _fail(self, c: Choice, e: BaseException) -> None:
        """A row failed: its request fails (all its choices leave), nobody else's."""
        with self._cv:
            self.counts["errors"] += 1
            job = c.job
            if not job.cancelled:
                job.send(("error", _engine_error(e)))
                job.cancelled = True
            for other in [o for o in self._active if o.job is job]:
                self.batch.remove(other.row)
                self._active.discard(other)

    @staticmethod
    def _log(e: BaseException) -> None:
        traceback.print_exception(e, file=sys.stderr)  # the server's log keeps the details; clients get one line


# ---- scores and attention, outside the engine ------------------------------------------------


@torch.no_grad()
def prompt_logprobs(model, ids: list[int], top: int) -> tuple[list[float | None], list[dict[int, float] | None]]:
    """Each prompt token's log-probability under the model (no die: nothing was rolled),
    and the `top` most likely ids at its position; the first token has none. A prompt
    longer than block_size is read in consecutive windows of block_size tokens."""
    block = model.config.block_size
    device = next(model.parameters()).device
    lps: list[float | None] = [None]
    tops: list[dict[int, float] | None] = [None]
    for lo in range(0, len(ids) - 1, block):
        window = ids[lo : lo + block]
        logp = torch.log_softmax(model(torch.tensor([window], device=device)).logits[0].float(), dim=-1)
        targets = ids[lo + 1 : lo + 1 + len(window)]
        logp = logp[: len(targets)]
        lps += logp.gather(1, torch.tensor(targets, device=device)[:, None]).squeeze(1).tolist()
        if top:
            v, i = logp.topk(min(top, logp.shape[-1]), dim=-1)
            tops += [dict(zip(ii, vv)) for ii, vv in zip(i.tolist(), v.tolist())]
        else:
            tops += [{} for _ in targets]
    return lps, tops


@torch.no_grad()
def attention_rows(model, ids: list[int], layer: int) -> dict:
    """Every head's attention in `layer` over the last block_size of `ids`: weights[h][t]
    is query token t's row over keys 0..t (the viewer's format), rounded to 4 decimals."""
    block = model.config.block_size
    dropped = max(0, len(ids) - block)
    ids = ids[dropped:]
    device = next(model.parameters()).device
    att = model(torch.tensor([ids], device=device), return_attention=True).attentions[layer][0]  # [H, T, T]
    w = att.double().cpu().numpy().round(4)  # float64, so 0.5046 prints as 0.5046
    return {
        "ids": ids,
        "dropped": dropped,
        "layer": layer,
        "n_head": int(w.shape[0]),
        "weights": [[w[h, t, : t + 1].tolist() for t in range(len(ids))] for h in range(w.shape[0])],
    }
