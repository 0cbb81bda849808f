"""Serving follows the registry: re-read it when its revision moves, warm, then switch.

Writes made through this server refresh at once (the admin API awaits `refresh` before it
answers); writes by other processes (other replicas, the trainer) are seen by polling the
revision, one cheap query every `poll_s`. Versions that unpinned requests will reach are
loaded into the engine before the new snapshot is swapped in, so the first request after a
promote does not pay the load and requests in flight finish on the version they started on.
The rollout gauges are fed from every read, since a driver's figures move no revision.
"""

from __future__ import annotations

import asyncio
import logging
import time

from loraloop.adapters.db import Database
from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.serving_view import ServingView, read_serving_view
from loraloop.adapters.store import WeightStore

from .rollouts.metrics import RolloutGauges
from .routing import CurrentRoutes, RoutingSnapshot
from .warmup import AdapterWarmer

logger = logging.getLogger(__name__)


class RegistryWatcher:
    def __init__(
        self,
        db: Database,
        store: WeightStore,
        routes: CurrentRoutes,
        warmer: AdapterWarmer,
        *,
        base: str,
        poll_s: float,
        rollout_gauges: RolloutGauges | None = None,
    ) -> None:
        self.db, self.store, self.routes, self.warmer = db, store, routes, warmer
        self.base, self.poll_s = base, poll_s  # base: the fingerprint of the served model
        self.rollout_gauges = rollout_gauges
        self.warming = False  # set once the engine runs; before that nothing can be loaded
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            view = await asyncio.to_thread(read_serving_view, self.db, self.base)
            await self._show_rollouts(view)
            if view.revision == self.routes.snapshot.revision:
                return
            snapshot = RoutingSnapshot.from_view(
                self.routes.snapshot.base_model, view, self.store.path_of
            )
            if self.warming:
                await self.warmer.warm(snapshot.routed_adapters())
            self.routes.swap(snapshot)
            if self.warming:
                await self.warmer.keep_only(snapshot.versions.values())
            logger.info("routing follows registry revision %d", view.revision)

    async def _show_rollouts(self, view: ServingView) -> None:
        gauges = self.rollout_gauges
        if gauges is None:
            return
        gauges.show(view.rollouts)
        if gauges.rollbacks_revision != view.revision:  # a rollback moves the revision
            await asyncio.to_thread(gauges.read_rollbacks, view.revision)

    async def start_warming(self) -> None:
        """The engine is up: load what the current snapshot routes to, and keep doing so."""
        async with self._lock:
            self.warming = True
            await self.warmer.warm(self.routes.snapshot.routed_adapters())

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except RegistryUnavailable as exc:
                # A database outage must not stop serving: keep the last snapshot, retry.
                self._registry_lost(exc.__cause__ or exc)
            except Exception:
                logger.exception("could not follow the registry; serving the last snapshot")
            else:
                self._registry_back()

    def _registry_lost(self, reason: BaseException) -> None:
        if self.routes.registry_lost_at is None:  # once per outage, not once per poll
            self.routes.registry_lost_at = time.monotonic()
            logger.warning(
                "the registry database is unavailable (%s); serving the last "
                "snapshot, refusing writes until it returns",
                (str(reason).splitlines() or [type(reason).__name__])[0],
            )

    def _registry_back(self) -> None:
        if self.routes.registry_lost_at is not None:
            lost_for = time.monotonic() - self.routes.registry_lost_at
            self.routes.registry_lost_at = None
            logger.info("the registry database is back after %.1f s", lost_for)
