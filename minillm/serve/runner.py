"""The engine runner: one worker thread steps one Engine; requests wait on asyncio queues.

The event loop never touches the model. A request calls submit() (Engine.add under the
runner's lock, so the worker cannot report a token before the request is listening), then
awaits its asyncio.Queue; the worker steps the engine while it has work, sleeps on an
Event when it has none, and hands each step's Events to the loop in one
call_soon_threadsafe. cancel() (a client gone, a stop string found) ends a sequence at the
next step, freeing its slot.

If a step raises (out of memory, a bug), every sequence then in the engine gets
Event(seq_id, None, "error"), the engine is replaced by a fresh one over the same decode
plan, and the worker goes on serving.
"""
import logging
import threading

from minillm.engine import Engine, Event

from .errors import APIError

__all__ = ["EngineRunner"]

log = logging.getLogger("minillm.serve")


class EngineRunner:
    """engine: a minillm.engine.Engine; max_queue: sequences that may wait for a slot
    (submit refuses more with a 429)."""

    def __init__(self, engine, max_queue=64):
        self.engine = engine
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._listeners = {}          # seq_id -> (loop, asyncio.Queue)
        self._closing = False
        self._thread = None

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="minillm-engine", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout=10.0):
        """Stop the worker after its current step."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self):
        return self.engine.running

    @property
    def waiting(self):
        return self.engine.waiting

    def submit(self, prompts, max_new_tokens, seeds, options, loop, queue):
        """Queue one sequence per prompt (lists of ids) with its seed (or None) and the shared
        Engine.add options; their Events go to `queue` on `loop`. Returns the seq ids.
        APIError 429 when the queue is full; ValueError (from Engine.add) for a bad option,
        with nothing left queued."""
        ids = []
        with self._lock:
            if self.engine.waiting + len(prompts) > self.max_queue:
                raise APIError(429, f"the server is busy: {self.engine.waiting} sequences wait for one of "
                                    f"{self.engine.max_batch} slots (queue limit {self.max_queue}); retry later",
                               type="server_busy", code="queue_full")
            try:
                for prompt, max_new, seed in zip(prompts, max_new_tokens, seeds):
                    sid = self.engine.add(prompt, max_new, seed=seed, **options)
                    self._listeners[sid] = (loop, queue)
                    ids.append(sid)
            except Exception:
                for sid in ids:
                    self.engine.cancel(sid)
                raise
        self._wake.set()
        return ids

    def cancel(self, seq_ids):
        """End these sequences at the next step (their last Event says "cancelled")."""
        with self._lock:
            for sid in seq_ids:
                self.engine.cancel(sid)
        self._wake.set()

    # ------------------------------------------------------------------ the worker
    def _work(self):
        while not self._closing:
            if not self.engine.has_work():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                events = self.engine.step()
            except Exception as e:        # keep serving: fail the sequences of this engine only
                log.exception("engine step failed: %s", e)
                with self._lock:
                    events = [Event(sid, None, "error") for sid in self._listeners]
                    old = self.engine
                    self.engine = Engine(old.model, max_batch=old.max_batch, decoder=old.decoder)
            self._deliver(events)

    def _deliver(self, events):
        by_loop = {}
        with self._lock:
            for ev in events:
                target = self._listeners.get(ev.seq_id)
                if target is None:
                    continue
                if ev.finish_reason is not None:
                    del self._listeners[ev.seq_id]
                loop, queue = target
                by_loop.setdefault(loop, []).append((queue, ev))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:          # the loop has closed (server shutting down)
                pass


def _put_all(items):
    for queue, ev in items:
        queue.put_nowait(ev)
