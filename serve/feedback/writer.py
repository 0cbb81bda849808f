"""Group commit for feedback: one writer stores what every waiting request brought, at once.

Requests queue their submissions and wait; the writer takes everything queued, stores it in
one transaction on its own thread, then hands each request its own outcomes. While one group
commits the next one gathers, so under load a commit (and its fsync) is shared by many
requests, and when idle a lone request is stored at once. Nothing is acknowledged before the
transaction holding it has committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from loraloop.adapters.feedback import FeedbackBook, Outcome, Submission

logger = logging.getLogger(__name__)
# Rows per transaction: large enough that a full batch is one commit, small enough that one
# group never holds the database's write lock for long.
MAX_GROUP_ROWS = 2000

_Waiting = tuple[Sequence[Submission], asyncio.Future]


class FeedbackWriter:
    def __init__(self, book: FeedbackBook, max_group_rows: int = MAX_GROUP_ROWS) -> None:
        self.book, self.max_group_rows = book, max_group_rows
        self._queue: asyncio.Queue[_Waiting | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        # One thread: one writer per server, and its database connection stays on it.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback-writer")

    async def write(self, submissions: Sequence[Submission]) -> list[Outcome]:
        """Outcomes in order, once the group holding these submissions has committed."""
        if self._task is None:  # started by the first request, on the server's event loop
            self._task = asyncio.create_task(self._run(), name="feedback-writer")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((submissions, future))
        return await future

    async def close(self) -> None:
        """Store what is still queued, then stop."""
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        self._thread.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            # One turn of the event loop first: requests already read and being checked
            # join this group instead of waiting for the next commit.
            await asyncio.sleep(0)
            group, rows, stop = [first], len(first[0]), False
            while rows < self.max_group_rows and not self._queue.empty():
                waiting = self._queue.get_nowait()
                if waiting is None:
                    stop = True
                    break
                group.append(waiting)
                rows += len(waiting[0])
            await self._store(group)
            if stop:
                return

    async def _store(self, group: list[_Waiting]) -> None:
        submissions = [s for waiting, _ in group for s in waiting]
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(self._thread, self.book.submit_many,
                                                  submissions)
        except Exception as exc:  # the group did not commit: every request in it fails
            logger.error("storing %d feedback rows failed", len(submissions), exc_info=exc)
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for waiting, future in group:
            if not future.done():  # a request whose client went away needs no answer
                future.set_result(outcomes[start:start + len(waiting)])
            start += len(waiting)
