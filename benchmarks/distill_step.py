"""Distillation step time vs its parts (issue 10 target: a token-level KD step <= 1.3x (student SFT step + one
teacher forward)), measured side by side through ``hydralign.run.job.run`` on the same data, student and
micro-batches.

- teacher: a random-init Llama saved as a Hugging Face directory (hidden 512, 8 layers: ~25M without
  embeddings), with the student's character tokenizer and chat template, as ``method.teacher_from``;
- student: hidden 256, 4 layers, random init;
- SFT run of the student: median optimizer-step time (micro-batch start to step end);
- distillation run (``method=distill method.loss=forward_kl``): median optimizer-step time, and the teacher's
  forward time inside those steps (forward hooks on the teacher), so the ratio's denominator uses the teacher
  forward as it runs in the distillation step itself.

Rounds alternate SFT and distillation; the ratio is taken over the rounds' medians.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_step.py --steps 30 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEACHER = {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "intermediate_size": 1376}
STUDENT = ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=4", "model.intermediate_size=688"]
COMMON = ["data.arithmetic.num_train=4000", "data.arithmetic.num_val=32", "eval.num_generate=0", "eval.at_start=false",
          "batch.effective=32", "batch.micro=16", "logger=none", "checkpoint.export_hf=false",
          "checkpoint.save_last=false", "checkpoint.monitor=val/loss", "checkpoint.mode=min",
          "optimized_metric=val/loss", "trainer.enable_progress_bar=false", "schedule=constant"]


def make_teacher(out: Path) -> Path:
    from hydralign.data.chat import template_for
    from hydralign.models import build_model, build_tokenizer
    from tests.helpers import compose_cfg

    cfg = compose_cfg([f"model.{k}={v}" for k, v in TEACHER.items()])
    tokenizer = build_tokenizer(cfg.model, template_for(cfg.model.chat_template))
    model = build_model(cfg.model, tokenizer, 0)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def timed_run(overrides: list[str], run_dir: Path, steps: int) -> dict[str, float]:
    import lightning as L
    from omegaconf import open_dict

    from hydralign.run.job import run
    from tests.helpers import compose_cfg

    step_times: list[float] = []
    teacher_times: list[float] = []

    class Timer(L.Callback):
        def __init__(self):
            self.t0, self.teacher_s, self.hooked = 0.0, 0.0, False

        def on_train_start(self, trainer, module):
            teacher = getattr(module, "_frozen", {}).get("teacher")
            if teacher is not None and not self.hooked:
                def pre(_m, _args, _kwargs):
                    self._tf = time.perf_counter()

                def post(_m, _args, _kwargs, _out):
                    self.teacher_s += time.perf_counter() - self._tf

                teacher.register_forward_pre_hook(pre, with_kwargs=True)
                teacher.register_forward_hook(post, with_kwargs=True)
                self.hooked = True

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx % trainer.accumulate_grad_batches == 0:
                self.t0, self.teacher_s = time.perf_counter(), 0.0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch["window_last"]:
                step_times.append(time.perf_counter() - self.t0)
                teacher_times.append(self.teacher_s)

    cfg = compose_cfg(COMMON + STUDENT + overrides + [f"trainer.max_steps={steps}", f"eval.every_n_steps={steps}"])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    run(cfg, callbacks=[Timer()])
    warm = 5
    return {"step": statistics.median(step_times[warm:]), "teacher": statistics.median(teacher_times[warm:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = make_teacher(tmp / "teacher")
        sft, kd = [], []
        for r in range(args.rounds):
            sft.append(timed_run([], tmp / f"sft{r}", args.steps))
            kd.append(timed_run(["method=distill", "method.loss=forward_kl", f"method.teacher_from={teacher}"],
                                tmp / f"kd{r}", args.steps))
            print(f"round {r}: student SFT step {sft[-1]['step']:.4f} s; distillation step {kd[-1]['step']:.4f} s, "
                  f"of which teacher forward {kd[-1]['teacher']:.4f} s", flush=True)
        s = statistics.median(x["step"] for x in sft)
        k = statistics.median(x["step"] for x in kd)
        t = statistics.median(x["teacher"] for x in kd)
        print(f"student SFT step {s:.4f} s + teacher forward {t:.4f} s = {s + t:.4f} s; distillation step {k:.4f} s "
              f"= {k / (s + t):.3f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
