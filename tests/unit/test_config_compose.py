"""Every YAML under conf/ composes with the schema; every hardware preset and card plans."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from hydralign.plan.core import make_plan
from tests.helpers import CONF, compose_cfg

GROUP_FILES = sorted(p for p in CONF.rglob("*.yaml") if p.parent != CONF)


def _override(path) -> str:
    group = path.parent.relative_to(CONF).as_posix()
    return f"{group}={path.stem}"


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: p.relative_to(CONF).as_posix())
def test_every_yaml_composes(path):
    overrides = [_override(path)]
    if path.parent.name == "data" and path.stem == "jsonl":
        overrides.append("data.train_files=[/tmp/x.jsonl]")
    cfg = compose_cfg(overrides)
    assert cfg.lr > 0 and cfg.model.name and cfg.method.name


def test_conf_groups_match_the_schema_and_the_defaults():
    """Each folder of conf/ is a section of the typed schema (cards aside), each section of the schema
    is a folder, and conf/config.yaml picks a default for each: none can be added or dropped alone."""
    from dataclasses import MISSING, fields, is_dataclass

    from omegaconf import OmegaConf

    from hydralign.config.schema import Config

    sections = {f.name for f in fields(Config) if f.default_factory is not MISSING and is_dataclass(f.default_factory())}
    folders = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert folders - {"experiment", "hydra"} == sections  # hydra/: Hydra's own groups (hydra/launcher)
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml").defaults)
    picked = {k.split(" ")[-1] for d in defaults if isinstance(d, dict) for k in d}
    assert sections | {"experiment"} <= picked


@pytest.mark.parametrize("hw", sorted(p.stem for p in (CONF / "hardware").glob("*.yaml")))
def test_every_hardware_preset_plans(hw):
    plan = make_plan(compose_cfg([f"hardware={hw}", "batch.effective=64"]))
    assert plan.world_size == plan.nodes * plan.devices_per_node
    assert plan.effective_batch == plan.world_size * plan.micro_batch * plan.grad_accum == 64


@pytest.mark.parametrize("card", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_card_plans(card):
    text = (CONF / "experiment" / f"{card}.yaml").read_text().splitlines()
    assert text[0] == "# @package _global_"
    assert text[1].startswith(f"# python -m hydralign experiment={card}"), "cards start with their command"
    overrides = [f"experiment={card}"]
    if "teacher_from: ???" in "\n".join(text):  # a distillation card names its teacher on the command line
        overrides.append("method.teacher_from=/runs/teacher:best")
    plan = make_plan(compose_cfg(overrides))
    assert plan.total_steps and plan.total_steps > 0


def test_typo_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose_cfg(["optimizer.lrr=0.1"])
    assert "lrr" in str(err.value) or "lrr" in str(err.value.__cause__)


def test_wrong_type_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(["batch.micro=eight"])


def test_lr_is_interpolated_into_optimizer():
    assert compose_cfg(["lr=5e-7"]).optimizer.lr == pytest.approx(5e-7)


SWEEPS = sorted(p.stem for p in (CONF.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_file_composes_and_starts_with_its_command(name):
    from tests.helpers import REPO

    lines = (REPO / "sweeps" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith(f"# python -m hydralign +sweeps={name} -m")
    cfg = compose_cfg([f"+sweeps={name}"])
    make_plan(cfg)


def test_required_sweeps_exist():
    assert {"eff_batch_32_vs_128", "lr_search"} <= set(SWEEPS)
