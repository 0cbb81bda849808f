"""Keeping a run's claim on its feedback alive while the run works.

A background thread renews the lease at a fraction of its length through every phase
(loading, training, evaluating, registering), not only when training reports progress: a
slow phase must not let the lease lapse under a run that is alive. A killed trainer's
thread dies with it, so its lease lapses and the feedback goes back.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.leased_jobs import LeaseLost

logger = logging.getLogger(__name__)

MAX_RENEWAL_INTERVAL_S = 2.0  # also how fresh the run's progress is in the admin API


class Stopped(Exception):
    """The trainer is stopping (SIGTERM, SIGINT): the work under way stops at its next
    step instead of holding the process until it ends."""


class Leases(Protocol):
    """A book whose work is held under a renewed lease: training runs, transfer jobs."""

    def renew(self, work_id: int, /, *, worker: str, lease_s: float, progress: dict) -> None: ...


class LeaseKeeper:
    def __init__(
        self,
        training: Leases,
        run_id: int,
        *,
        worker: str,
        lease_s: float,
        what: str = "run",
        stopping: threading.Event | None = None,
    ) -> None:
        self.training, self.run_id, self.worker, self.lease_s = training, run_id, worker, lease_s
        self.stopping = stopping or threading.Event()
        self.what = what  # how the log names the work: "run 7", "transfer job 3"
        self.progress: dict = {}
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew_until_stopped, daemon=True, name=f"lease-{run_id}"
        )

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, progress: dict) -> None:
        """Training progress: logged now, written to the run with the next renewal. Work
        whose lease was lost, or whose trainer is stopping, stops here (see `check`)."""
        self.check()
        self.progress = progress
        logger.info(
            "%s %d: %s",
            self.what,
            self.run_id,
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in progress.items()
            ),
        )

    def check(self) -> None:
        """LeaseLost once the lease is lost (the work is void: training on would be for
        nothing), Stopped once the trainer is stopping."""
        if self.lost.is_set():
            raise LeaseLost(
                f"{self.what.capitalize()} {self.run_id} is no longer held by {self.worker}."
            )
        if self.stopping.is_set():
            raise Stopped(f"{self.what} {self.run_id}: the trainer is stopping")

    def _renew_until_stopped(self) -> None:
        interval = min(self.lease_s / 3, MAX_RENEWAL_INTERVAL_S)
        while not self._stop.wait(interval):
            try:
                self.training.renew(
                    self.run_id,
                    worker=self.worker,
                    lease_s=self.lease_s,
                    progress=dict(self.progress),
                )
            except LeaseLost:
                logger.error("%s %d lost its lease", self.what, self.run_id)
                self.lost.set()
                return
            except RegistryUnavailable as exc:  # the next renewal may well succeed
                logger.warning(
                    "could not renew the lease of %s %d: %s", self.what, self.run_id, exc.message
                )
            except Exception:
                logger.exception("could not renew the lease of %s %d", self.what, self.run_id)
