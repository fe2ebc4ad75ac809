"""Where a run's starting weights come from: the one resolver for ``init_from`` (and, as it grows,
a teacher's weights and the checkpoint selection best / last / step-N). Pure file-system logic, no torch.

Accepted: a Hugging Face model directory (``*.safetensors``), a hydralign run directory (its exported
``hf_model/``), or a Lightning ``.ckpt`` file (loaded with ``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path

from hydralign.errors import ConfigError


def is_run_dir(path: Path) -> bool:
    return (path / "plan.json").is_file() or (path / "hf_model").is_dir() or (path / "checkpoints").is_dir()


def resolve_weights(source: str) -> Path:
    """An HF directory holding ``*.safetensors``, or a ``.ckpt`` file."""
    path = Path(source).expanduser().resolve()
    if path.is_file():
        if path.suffix == ".ckpt":
            return path
        raise ConfigError(f"init_from={source} is a file but not a Lightning .ckpt; give a model directory, "
                          "a hydralign run directory or a .ckpt")
    if not path.is_dir():
        raise ConfigError(f"init_from={source} does not exist (cwd: {Path.cwd()})")
    if any(path.glob("*.safetensors")):
        return path
    if is_run_dir(path):
        exported = path / "hf_model"
        if exported.is_dir() and any(exported.glob("*.safetensors")):
            return exported
        last = path / "checkpoints" / "last.ckpt"
        if last.is_file():
            return last
        raise ConfigError(f"init_from={source} is a hydralign run directory without an exported model "
                          f"({exported}) or checkpoints/last.ckpt: did that run finish?")
    raise ConfigError(f"init_from={source}: no *.safetensors in that directory, and it is not a hydralign run "
                      "directory (no hf_model/, checkpoints/ or plan.json)")
