"""Generator processes beside the learners (``hardware.generator_devices`` >= 1): ``channel`` (how learners and
generators meet: weights over a gloo group, rollouts through a store), ``schedule`` (which policy version samples
which rollout batch: pure), ``generator`` (the generator process), ``engines`` (Hugging Face generate, vLLM) and
``client`` (the learners' side)."""
