"""A Lightning callback tests use to look inside a run (kept apart from tests/helpers.py, which stays
torch-free for the tests of the pure plan)."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback


class Recorder(Callback):
    """Per optimizer step: the window loss; at step 1: the gradients; at the end: the module."""

    def __init__(self):
        self.losses: list[float] = []
        self.first_grads: dict[str, torch.Tensor] = {}
        self.module = None
        self.optimizer = None

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.losses.append(float(module.last_window_loss))
        if not self.first_grads:
            self.first_grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()
                                if p.grad is not None}

    def on_train_end(self, trainer, module):
        self.module, self.optimizer = module, trainer.optimizers[0]
