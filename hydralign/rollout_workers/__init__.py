"""Sampling apart from the learners' own HF generate. Generator processes beside the learners
(``hardware.generator_devices`` >= 1): ``channel`` (how learners and generators meet: weights over a gloo group on
CPU, NCCL on GPUs; rollouts through a store), ``schedule`` (which policy version samples which rollout batch: pure),
``generator`` (the generator process), ``engines`` (Hugging Face generate, vLLM) and ``client`` (the learners' side).
vLLM inside the learners (``generation.backend=vllm`` with ``hardware.generator_devices=0``): ``colocated``."""
