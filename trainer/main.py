"""`loraloop trainer`: the sidecar process, wired from its settings."""

from __future__ import annotations

import logging
import signal
import threading

from loraloop.adapters.base_model import local_model_dir
from loraloop.adapters.leased_jobs import lease_holders
from loraloop.adapters.registry import base_digest_cache, open_registry

from .device import choose_placement
from .loop import TrainerLoop
from .rollouts.driver import RolloutDriver
from .sampling import ServerSampler
from .scratch import remove_leftovers
from .settings import TrainerSettings
from .transfers.runner import TransferRunner, known_targets

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
        model=settings.model,
        aliases=[settings.base_model_name],
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        max_rank=settings.max_lora_rank,
        max_bytes=settings.max_adapter_bytes,
    )
    remove_leftovers(
        registry.store.staging,
        worker=settings.trainer_worker,
        holders=lambda: lease_holders(registry.db),
    )
    sampler = None
    if settings.server_url:
        key = settings.admin_key.get_secret_value() if settings.admin_key else None
        sampler = ServerSampler(settings.server_url, key)
    base_model = local_model_dir(settings.model)
    placement = choose_placement(
        settings.trainer_device,
        settings.trainer_dtype,
        memory_limit_bytes=settings.trainer_memory_limit_bytes,
    )
    logger.info("trainer: training on %s in %s", placement.device_name, placement.dtype_name)
    targets = known_targets(
        settings.transfer_targets, digest_cache=base_digest_cache(settings.data_dir)
    )
    # SIGTERM (a pod stopping, the server beside it ending) or SIGINT (Ctrl-C reaches the
    # whole foreground process group): the work under way stops at its next step, its
    # feedback goes back (a transfer job's lease lapses), and the trainer exits.
    stopping = threading.Event()
    transfers = TransferRunner(
        registry,
        base_model,
        targets,
        worker=settings.trainer_worker,
        lease_s=settings.transfer_lease_s,
        stopping=stopping,
    )
    trainer = TrainerLoop(
        registry,
        base_model,
        worker=settings.trainer_worker,
        lease_s=settings.trainer_lease_s,
        sampler=sampler,
        transfers=transfers,
        judge_keys=settings.judge_key_variables,
        poll_s=settings.trainer_poll_s,
        stopping=stopping,
        placement=placement,
    )
    if once:
        ran = trainer.run_once()
        logger.info("trainer: %s", "one run done" if ran else "nothing was due")
        return
    driver = RolloutDriver(
        registry,
        base_model,
        worker=settings.trainer_worker,
        lease_s=settings.rollout_lease_s,
        judge_keys=settings.judge_key_variables,
    )
    threading.Thread(
        target=driver.run_forever,
        args=(settings.rollout_poll_s, stopping),
        daemon=True,
        name="rollouts",
    ).start()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: stopping.set())
    trainer.run_forever()
