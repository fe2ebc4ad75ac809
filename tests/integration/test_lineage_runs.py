"""References to the checkpoints of a real run: the index the run writes, a new run started from its
``:best`` checkpoint with the lineage as MLflow tags, and a checkpoint exported as a model directory."""

from __future__ import annotations

import torch

from hydralign.checkpoints import index as checkpoint_index
from hydralign.checkpoints import references as lineage
from hydralign.run.job import run
from tests.helpers import tiny_cfg

SHORT = ["trainer.max_steps=6", "eval.every_n_steps=2", "checkpoint.every_n_steps=2", "checkpoint.keep_last_k=2",
         "checkpoint.keep_best_k=2", "checkpoint.monitor=val/loss", "checkpoint.mode=min", "eval.num_generate=4",
         "checkpoint.export_hf=false", "batch.effective=8", "batch.micro=8"]


def test_a_run_started_from_the_best_checkpoint_of_another(tmp_path):
    from mlflow.tracking import MlflowClient

    first = tiny_cfg(tmp_path / "sft", SHORT)
    run(first)
    sft = tmp_path / "sft" / "run"
    rows = checkpoint_index.entries(sft / "checkpoints")
    assert sorted(r["name"] for r in rows if not r["name"].startswith("best")) == ["step000004.ckpt",
                                                                                   "step000006.ckpt"]
    for r in rows:  # every kept checkpoint carries its step and the validation at that step
        assert torch.load(r["path"], weights_only=True)["global_step"] == r["step"]
        assert "val/loss" in r["metrics"]
    best = min((r for r in rows), key=lambda r: r["metrics"]["val/loss"])
    assert len([r for r in rows if r["name"].startswith("best")]) == 2

    second = tiny_cfg(tmp_path / "next", SHORT + [f"init_from={sft}:best", "trainer.max_steps=2",
                                                  f"logger.tracking_uri=sqlite:///{tmp_path}/sft/mlflow.db"])
    run(second)
    client = MlflowClient(tracking_uri=second.logger.tracking_uri)
    tags = client.get_run((tmp_path / "next" / "run" / "mlflow_run_id").read_text()).data.tags
    assert tags["lineage.source_run_id"] == (sft / "mlflow_run_id").read_text()
    assert tags["lineage.selector"] == "best" and tags["lineage.metric"] == "val/loss"
    assert tags["lineage.step"] == str(best["step"]) and float(tags["lineage.metric_value"]) == best["metrics"]["val/loss"]
    assert tags["lineage.path"] == str(best["path"])


def test_a_checkpoint_exported_as_a_model_directory(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run(tiny_cfg(tmp_path, SHORT))
    run_dir = tmp_path / "run"
    lineage._MEMO.clear()
    out = lineage.resolve_model_dir(f"{run_dir}:step=4", what="method.teacher_from")
    assert out == run_dir / "exports" / "step000004" and (out / "tokenizer_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    saved = torch.load(run_dir / "checkpoints" / "step000004.ckpt", weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved["model." + name]), name
    tok = AutoTokenizer.from_pretrained(out)  # generation stops where the run's did (tulu: its turns end in EOS)
    assert model.generation_config.eos_token_id == [tok.eos_token_id]
    assert model.generation_config.pad_token_id == tok.pad_token_id is not None
    stamp = (out / "config.json").stat().st_mtime_ns
    assert lineage.resolve_model_dir(f"{run_dir}:step=4") == out and (out / "config.json").stat().st_mtime_ns == stamp


def test_a_chatml_checkpoint_exports_its_end_of_turn_as_a_stop_token(tmp_path):
    """lm_eval and vLLM read the directory's generation_config: a chatml run's export stops at <|im_end|> too,
    as the run's own hf_model/ does (checkpoints.saving.export_hf)."""
    from transformers import AutoTokenizer, GenerationConfig

    run(tiny_cfg(tmp_path, SHORT + ["model.chat_template=chatml"]))
    lineage._MEMO.clear()
    out = lineage.resolve_model_dir(f"{tmp_path / 'run'}:last")
    tok, gen = AutoTokenizer.from_pretrained(out), GenerationConfig.from_pretrained(out)
    assert sorted(gen.eos_token_id) == sorted(tok.convert_tokens_to_ids(["<|im_end|>", tok.eos_token]))
