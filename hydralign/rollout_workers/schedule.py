"""Which weights sample which rollout batch (pure, no torch): the contract learners and generators both follow, so
neither ever waits for a message the other will not send.

Rollout batch q is trained at optimizer steps [q S, (q + 1) S) (S = steps per rollout batch). With
``max_staleness`` k it is sampled with the policy version (optimizer steps applied) ``max(v0, (q - k) S)``: the
weights at the start of training on batch q - k, so sampling batches q - k + 1 .. q overlaps training on q - k
(k = 0: batch q waits for the weights of step q S, as the learners' own sampling). ``v0`` is the version the run
starts from (0, or the resumed checkpoint's step): a resumed run does not have the older weights its first k batches
were sampled with, so it samples them again from the restored weights (the in-flight batches are discarded).

The learners broadcast their weights at v0 and then after every ``weight_sync_steps`` (w) optimizer steps, up to
the last version any remaining batch needs; w divides S (the plan refuses other values), so every version a batch
needs is one the learners send.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyncSchedule:
    steps_per_rollout: int  # S
    max_staleness: int  # k, in rollout batches
    weight_sync_steps: int  # w, divides S
    total_rollouts: int  # T
    start_version: int  # v0: the optimizer steps already applied when this run (or its resume) starts

    @property
    def start_rollout(self) -> int:
        return self.start_version // self.steps_per_rollout

    def version_for(self, rollout: int) -> int:
        """The policy version rollout batch ``rollout`` is sampled with."""
        return max(self.start_version, (rollout - self.max_staleness) * self.steps_per_rollout)

    @property
    def last_version(self) -> int:
        return self.version_for(self.total_rollouts - 1)

    def learners_send(self, version: int) -> bool:
        """Whether the learners broadcast after reaching ``version`` optimizer steps."""
        if version == self.start_version:
            return self.start_rollout < self.total_rollouts
        return (version > self.start_version and version % self.weight_sync_steps == 0
                and version <= self.last_version)

    def staleness(self, rollout: int) -> int:
        """Optimizer steps between the sampling weights and the weights that start training on the batch."""
        return max(self.start_version, rollout * self.steps_per_rollout) - self.version_for(rollout)
