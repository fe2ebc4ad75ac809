"""The default job's first 50 optimizer steps' window loss (``python -m hydralign`` with no overrides, stopped
at step 50), committed before the redesign so it can prove training did not change.

    .venv/bin/python -m tests.golden.default_loss           # rewrite tests/golden/default_first50_loss.json
    .venv/bin/python -m tests.golden.default_loss --check   # compare, bit for bit, with the committed file
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf, open_dict

from tests.helpers import compose_cfg
from tests.recorder import Recorder

GOLDEN = Path(__file__).resolve().parent / "default_first50_loss.json"
STEPS = 50


class StopAt(Callback):
    def __init__(self, steps: int):
        self.steps = steps

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def first_losses(tmp: Path) -> list[float]:
    """The default config untouched but for where it writes; the run stops once 50 steps are done."""
    from hydralign.run.job import run

    cfg = compose_cfg([f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db", "trainer.enable_progress_bar=false"])
    with open_dict(cfg):
        cfg.run_dir = str(tmp / "run")
    OmegaConf.set_readonly(cfg, False)
    rec = Recorder()
    run(cfg, callbacks=[rec, StopAt(STEPS)])
    return rec.losses[:STEPS]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        losses = first_losses(Path(tmp))
    if "--check" in sys.argv:
        golden = json.loads(GOLDEN.read_text())["losses"]
        same = sum(a == b for a, b in zip(losses, golden))
        worst = max(abs(a - b) / abs(b) for a, b in zip(losses, golden))
        print(f"{same} of {len(golden)} losses bit-identical; largest relative difference {worst:.3g}")
        sys.exit(0 if same == len(golden) == len(losses) else 1)
    GOLDEN.write_text(json.dumps({"steps": STEPS, "losses": losses}, indent=0) + "\n")
    print(f"wrote {GOLDEN}: {losses[0]:.6f} ... {losses[-1]:.6f}")


if __name__ == "__main__":
    main()
