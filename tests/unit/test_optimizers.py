"""``optimizer.name`` picks the optimizer the run builds (it used to be AdamW whatever the name)."""

from __future__ import annotations

import pytest
import torch

from hydralign.optim.optimizers import OPTIMIZERS, build_optimizer
from tests.helpers import compose_cfg

EXPECTED = {"adamw": torch.optim.AdamW, "adamw_fused": torch.optim.AdamW, "sgd": torch.optim.SGD,
            "adafactor": torch.optim.Adafactor}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_name_builds_its_optimizer_and_steps(name):
    ocfg = compose_cfg([f"optimizer={name if name in ('sgd', 'adafactor') else 'adamw'}",
                        f"optimizer.name={name}"]).optimizer
    model = torch.nn.Linear(4, 3)
    groups = [{"params": [model.weight], "weight_decay": 0.1}, {"params": [model.bias], "weight_decay": 0.0}]
    opt = build_optimizer(groups, ocfg, lr=0.01)
    assert type(opt) is EXPECTED[name]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # per-group decay kept
    if name == "adamw_fused":
        assert opt.defaults["fused"] is True
    if name == "sgd":
        assert opt.defaults["momentum"] == 0.9
    before = model.weight.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_every_optimizer_preset_names_a_known_optimizer():
    from tests.helpers import CONF

    for path in (CONF / "optimizer").glob("*.yaml"):
        assert compose_cfg([f"optimizer={path.stem}"]).optimizer.name in OPTIMIZERS, path.name
