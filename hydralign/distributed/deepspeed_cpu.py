"""hydralign's DeepSpeed strategy: Lightning's ``DeepSpeedStrategy`` with two changes.

* **CPU processes.** Lightning refuses any accelerator but CUDA, while DeepSpeed itself runs ZeRO 1, 2 and 3 on CPU
  (its CPU accelerator, ``DS_ACCELERATOR=cpu``, over gloo where oneCCL is absent). On CPU the refusal is lifted
  (and DeepSpeed is given the process's local rank as its device rank), so ZeRO is tested for real on 2 CPU
  processes.
* **One engine at a time.** A ``Trainer.validate`` before fit (``eval.at_start``) builds a ZeRO-3 engine of its own,
  whose hooks would stay on the submodules and fetch parameters by their own trace beside the training engine's
  (``IndexError: pop from an empty deque`` in DeepSpeed's ``partitioned_param_coordinator``): an engine is
  destroyed (its hooks removed) when its Trainer stage ends.
"""

from __future__ import annotations

from typing import Any


def deepspeed_strategy(accelerator: str, **kwargs: Any):
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    class HydralignDeepSpeedStrategy(DeepSpeedStrategy):
        def teardown(self) -> None:
            if hasattr(self.model, "destroy"):
                self.model.destroy()
            super().teardown()

    if accelerator != "cpu":
        return HydralignDeepSpeedStrategy(**kwargs)

    class CPUDeepSpeedStrategy(HydralignDeepSpeedStrategy):
        def setup_environment(self) -> None:
            DDPStrategy.setup_environment(self)  # DeepSpeedStrategy's own checks for a CUDA accelerator first

        @property
        def root_device(self):
            import torch

            # DeepSpeed takes the device's index as this process's device rank (None would fail its >= 0 test);
            # a CPU tensor on "cpu:<rank>" is an ordinary CPU tensor
            return torch.device("cpu", self.local_rank)

        def setup_distributed(self) -> None:  # as DeepSpeedStrategy's, less its check of CUDA device indices
            from lightning.fabric.utilities.seed import reset_seed

            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()

    return CPUDeepSpeedStrategy(**kwargs)
