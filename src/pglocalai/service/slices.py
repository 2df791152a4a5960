"""One thread that runs tokenisation jobs a slice at a time, round robin.

A job is a generator (:mod:`pglocalai.service.reading`) that yields after each few
milliseconds of work and returns its result. The runner takes the first job, runs
it to its next ``yield``, and puts it back at the end of the line, so a request with
megabytes of text takes its turns like any other: a short request waits for at most
one slice of each job ahead of it, whichever model they are for. Tokenisation holds
the GIL, so one thread is all it can use; the event loop and the inference threads
(ONNX Runtime releases the GIL) run beside it.

>>> runner = SliceRunner()
>>> ids = await runner.submit(reading.embed_job(tok, texts, 512))
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Generator
from typing import Any

from pglocalai.service.logs import get_logger

log = get_logger()


class _Job:
    __slots__ = ("loop", "future", "gen", "dropped")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
                 gen: Generator[None, None, Any]) -> None:
        self.loop = loop
        self.future = future
        self.gen = gen
        self.dropped = False  # set on the loop when its future is done (cancelled)


class SliceRunner:
    """Runs generator jobs in a thread of their own, one slice each in turn."""

    def __init__(self, name: str = "pglocalai-tokenize") -> None:
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def submit(self, gen: Generator[None, None, Any]) -> asyncio.Future[Any]:
        """A future of the job's result; cancelling it drops the job at its next turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = _Job(loop, future, gen)
        future.add_done_callback(lambda _f: setattr(job, "dropped", True))
        with self._wake:
            if self._stopped:
                raise RuntimeError("the tokenizer thread has stopped")
            self._jobs.append(job)
            self._wake.notify()
        return future

    def pending(self) -> int:
        return len(self._jobs)

    def close(self) -> None:
        """Stop after the slice in progress; jobs still waiting are dropped."""
        with self._wake:
            self._stopped = True
            self._jobs.clear()
            self._wake.notify()
        self._thread.join(10)

    def _main(self) -> None:
        while True:
            with self._wake:
                while not self._jobs and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                job = self._jobs.popleft()
            self._turn(job)
            del job  # a finished job's text must not stay alive while the thread waits

    def _turn(self, job: _Job) -> None:
        if job.dropped:
            job.gen.close()
            return
        try:
            next(job.gen)
        except StopIteration as stop:
            _deliver(job, stop.value, None)
            return
        except BaseException as exc:  # noqa: BLE001 - it belongs to the job's request
            _deliver(job, None, exc.with_traceback(None))  # no frames (and texts) held
            return
        with self._wake:
            if not self._stopped:
                self._jobs.append(job)


def _deliver(job: _Job, value: Any, exc: BaseException | None) -> None:
    def settle() -> None:
        if not job.future.done():
            if exc is None:
                job.future.set_result(value)
            else:
                job.future.set_exception(exc)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits any more
        log.debug("tokenize_result_dropped")
