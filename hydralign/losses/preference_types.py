"""The preference loss names and what each needs (pure: read by the plan before torch loads)."""

from __future__ import annotations

# loss_type -> (needs reference log-probs, needs completion lengths: length-normalized log-probs)
LOSS_TYPES: dict[str, tuple[bool, bool]] = {
    "sigmoid": (True, False), "ipo": (True, True), "hinge": (True, False), "robust": (True, False),
    "sigmoid_norm": (True, True), "simpo": (False, True), "sft": (False, True),
}
LOSS_NEEDS_REFERENCE = {name: needs[0] for name, needs in LOSS_TYPES.items()}
