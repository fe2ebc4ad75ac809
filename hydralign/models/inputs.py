"""What a training micro-batch passes to the model's forward.

A padded batch passes its ``attention_mask``. A packed or padding-free batch (``hydralign.data.packing``)
passes ``position_ids`` that restart at every example and no mask: Hugging Face causal LMs then find the
example boundaries in the positions and keep attention inside each example (flash-attention's varlen
kernel, or a block-diagonal causal mask for SDPA / eager / flex attention). ``use_cache=False``: a KV cache
would also switch that detection off.
"""

from __future__ import annotations

from typing import Any

from hydralign.errors import ConfigError


def model_inputs(batch: dict) -> dict[str, Any]:
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def check_packing_support() -> None:
    """data.packing relies on transformers finding packed sequences from position ids (>= 4.56)."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError as e:
        import transformers

        raise ConfigError(f"data.packing needs transformers >= 4.56 (packed-sequence masks from position ids); "
                          f"this is {transformers.__version__}: upgrade it or set data.packing=none") from e
