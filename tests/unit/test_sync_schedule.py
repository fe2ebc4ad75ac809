"""The contract learners and generator processes follow (``hydralign.rollout_workers.schedule``): which weights
sample which rollout batch, and which versions the learners broadcast. Every version the generator waits for is one
the learners send, and the learners send nothing the generator will not take (either would hang the job)."""

from __future__ import annotations

import pytest

from hydralign.rollout_workers.schedule import SyncSchedule


def generator_takes(s: SyncSchedule) -> list[int]:
    """The versions a generator receives, in order: for each batch, every broadcast until it has the one it needs."""
    sent = [v for v in range(s.start_version, s.total_rollouts * s.steps_per_rollout + 1) if s.learners_send(v)]
    taken, have = [], -1
    for q in range(s.start_rollout, s.total_rollouts):
        while have < s.version_for(q):
            have = sent[len(taken)]
            taken.append(have)
        assert have == s.version_for(q)  # exactly the weights the schedule names, never newer
    assert taken == sent
    return taken


@pytest.mark.parametrize("steps, stale, sync, total, start", [
    (1, 0, 1, 6, 0), (1, 1, 1, 6, 0), (1, 3, 1, 6, 0), (2, 1, 1, 5, 0), (2, 1, 2, 5, 0), (4, 2, 2, 7, 0),
    (1, 1, 1, 6, 3), (2, 1, 1, 5, 3), (3, 0, 3, 4, 6), (1, 10, 1, 4, 0),
])
def test_every_broadcast_is_taken_and_every_wait_is_served(steps, stale, sync, total, start):
    generator_takes(SyncSchedule(steps, stale, sync, total, start))


def test_versions_and_staleness_by_hand():
    """S = 2 steps per batch, k = 1: batch q is sampled with the weights of step 2(q - 1), so it is 2 steps stale
    (batch 0: the initial weights, 0 stale); w = 2: the learners send at 0, 2, 4, 6 (batch 4 needs 6)."""
    s = SyncSchedule(2, 1, 2, 5, 0)
    assert [s.version_for(q) for q in range(5)] == [0, 0, 2, 4, 6]
    assert [s.staleness(q) for q in range(5)] == [0, 2, 2, 2, 2]
    assert generator_takes(s) == [0, 2, 4, 6]


def test_a_resumed_run_samples_its_in_flight_batches_from_the_restored_weights():
    """Resumed at step 3 with k = 2 (S = 1): batches 3 and 4 were sampled with versions 1 and 2 before the stop;
    now they are sampled again with version 3, the restored weights (staleness 0 and 1), then as before."""
    s = SyncSchedule(1, 2, 1, 8, 3)
    assert s.start_rollout == 3
    assert [s.version_for(q) for q in range(3, 8)] == [3, 3, 3, 4, 5]
    assert [s.staleness(q) for q in range(3, 8)] == [0, 1, 2, 2, 2]
    assert generator_takes(s) == [3, 4, 5]
