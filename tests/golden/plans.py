"""Golden plans: the printed plan (``dry_run=true``) of every experiment card and of configs across methods,
strategies, packing and hardware, committed before the redesign so it can prove the plan did not change.

    .venv/bin/python -m tests.golden.plans          # rewrite tests/golden/plans/*.txt (only on purpose)
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import CONF, compose_cfg

HERE = Path(__file__).resolve().parent / "plans"

CONFIGS: dict[str, list[str]] = {
    "default": [],
    "dpo": ["method=dpo"],
    "dpo_precompute_ipo": ["method=dpo", "method.precompute_ref=true", "method.loss_type=ipo"],
    "grpo": ["method=grpo"],
    "grpo_episodes_ckpt": ["method=grpo", "method.total_episodes=4096", "checkpoint.every_n_episodes=1024",
                           "eval.every_n_steps=8", "checkpoint.every_n_steps=null"],
    "distill": ["method=distill", "method.teacher_from=/some/run:best"],
    "sft_cpu_2proc": ["hardware=cpu_2proc"],
    "sft_2proc_fsdp": ["hardware=cpu_2proc", "hardware.strategy=fsdp"],
    "dpo_8xA100_fsdp": ["method=dpo", "hardware=8xA100", "hardware.strategy=fsdp", "model=llama31_8b"],
    "dpo_4x8_mission": ["method=dpo", "hardware=4x8xA100", "lr=5e-7"],
    "sft_deepspeed_z3": ["hardware=8xA100", "hardware.strategy=deepspeed", "hardware.zero_stage=3",
                         "model=llama31_8b", "model.loss_chunk_size=null"],
    "sft_packed": ["data.packing=packed", "data.max_tokens_per_micro=256"],
    "sft_padding_free": ["data.packing=padding_free"],
    "dpo_packed": ["method=dpo", "data.packing=packed", "data.max_tokens_per_micro=512"],
    "sft_lora": ["peft=lora"],
    "sft_qlora_v100": ["peft=qlora", "hardware=1xV100", "model=qwen15_7b"],
    "sft_chunked_1xA100": ["hardware=1xA100", "model=llama31_8b", "model.loss_chunk_size=1024"],
    "refused_indivisible": ["hardware=4x8xA100", "batch.effective=128", "batch.micro=3"],
    "refused_chunk_grpo": ["method=grpo", "model.loss_chunk_size=1024"],
    "refused_packing_grpo": ["method=grpo", "data.packing=padding_free"],
    "sft_eff128_warmup": ["batch=eff128", "schedule=cosine", "schedule.warmup_ratio=0.1"],
}


def cards() -> dict[str, list[str]]:
    """Each card, with the teacher a distillation card leaves for the command line."""
    out = {}
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        teacher = ["method.teacher_from=/some/run:best"] if "teacher_from: ???" in path.read_text() else []
        out[path.stem] = [f"experiment={path.stem}"] + teacher
    return out


def all_configs() -> dict[str, list[str]]:
    out = {f"card_{c}": overrides for c, overrides in cards().items()}
    out.update(CONFIGS)
    return out


def printed_plan(overrides: list[str]) -> str:
    """What ``python -m hydralign <overrides> dry_run=true`` prints (its title names the overrides)."""
    from hydralign.errors import ConfigError
    from hydralign.plan.core import make_plan
    from hydralign.plan.format import format_plan

    try:
        plan = make_plan(compose_cfg(overrides))
    except ConfigError as err:  # a refusal is part of the contract too
        return f"refused: {err}\n"
    return format_plan(plan, title="plan: " + (" ".join(overrides) or "(defaults)")) + "\n"


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name, overrides in all_configs().items():
        (HERE / f"{name}.txt").write_text(printed_plan(overrides))
        print("wrote", name)


if __name__ == "__main__":
    main()
