"""What `loraloop base migrate` says while its jobs wait: which trainer is busy with what,
or that no trainer seems to know the base."""

from __future__ import annotations

from unittest.mock import create_autospec

from loraloop.serve.cli.client import AdminClient
from loraloop.serve.cli.transfers import waiting_hint


def _job(job_id: int, status: str, worker: str | None = None) -> dict:
    return {
        "id": job_id,
        "adapter": f"acme/a{job_id}",
        "from_version": 1,
        "status": status,
        "to_base": "successor",
        "worker": worker,
    }


def test_a_trainer_busy_with_the_migrations_other_job_is_named():
    client = create_autospec(AdminClient, instance=True)
    jobs = [_job(2, "queued"), _job(1, "running", worker="trainer-7")]
    hint = waiting_hint(client, [jobs[0]], jobs)
    assert "trainer-7 is running job 1 (acme/a1@1)" in hint
    assert "LORALOOP_TRANSFER_TARGETS" not in hint
    client.find_transfers_to.assert_not_called()


def test_a_trainer_busy_with_another_migration_is_named():
    client = create_autospec(AdminClient, instance=True)
    client.find_transfers_to.return_value = [
        _job(9, "running", worker="trainer-2"),
        _job(8, "passed", worker="trainer-2"),
    ]
    hint = waiting_hint(client, [_job(10, "queued")], [_job(10, "queued")])
    assert "trainer-2 is running job 9 (acme/a9@1)" in hint
    client.find_transfers_to.assert_called_once_with("successor")


def test_no_trainer_at_work_asks_whether_one_knows_the_base():
    client = create_autospec(AdminClient, instance=True)
    client.find_transfers_to.return_value = []
    hint = waiting_hint(client, [_job(3, "queued")], [_job(3, "queued")])
    assert "is a trainer running with 'successor' in its LORALOOP_TRANSFER_TARGETS?" in hint
