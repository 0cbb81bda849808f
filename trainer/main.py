"""`loraloop trainer`: the sidecar process, wired from its settings."""

from __future__ import annotations

import logging
import signal
import threading

from loraloop.adapters.base_model import local_model_dir
from loraloop.adapters.registry import open_registry

from .rollout import RolloutDriver
from .sampling import ServerSampler
from .settings import TrainerSettings
from .sidecar import Trainer, remove_leftovers
from .transfer_job import TransferRunner, known_targets

logger = logging.getLogger(__name__)


def _quiet_progress_bars() -> None:
    # The trainer's log carries its own progress lines; library bars would bury them.
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def run_trainer(settings: TrainerSettings, *, once: bool = False) -> None:
    _quiet_progress_bars()
    registry = open_registry(
        model=settings.model, aliases=[settings.base_model_name], data_dir=settings.data_dir,
        database_url=settings.database_url, max_rank=settings.max_lora_rank,
        max_bytes=settings.max_adapter_bytes,
    )
    remove_leftovers(registry.store.staging)
    sampler = None
    if settings.server_url:
        key = settings.admin_key.get_secret_value() if settings.admin_key else None
        sampler = ServerSampler(settings.server_url, key)
    base_model = local_model_dir(settings.model)
    transfers = TransferRunner(registry, base_model, known_targets(settings.transfer_targets),
                               worker=settings.trainer_worker,
                               lease_s=settings.transfer_lease_s)
    trainer = Trainer(registry, base_model, worker=settings.trainer_worker,
                      lease_s=settings.trainer_lease_s, sampler=sampler, transfers=transfers)
    if once:
        ran = trainer.run_once()
        logger.info("trainer: %s", "one run done" if ran else "nothing was due")
        return
    stopping = threading.Event()
    driver = RolloutDriver(registry, base_model, worker=settings.trainer_worker,
                           lease_s=settings.rollout_lease_s)
    threading.Thread(target=driver.run_forever, args=(settings.rollout_poll_s, stopping),
                     daemon=True, name="rollouts").start()
    # SIGTERM (a pod stopping, the server beside it ending) or SIGINT (Ctrl-C reaches the
    # whole foreground process group): finish the run in progress, start none, exit.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: stopping.set())
    trainer.run_forever(settings.trainer_poll_s, stopping)
