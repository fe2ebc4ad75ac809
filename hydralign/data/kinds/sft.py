"""``sft``: chat conversations (messages, or prompt + completion), one sequence per example (SFT, distillation)."""

from hydralign.data.kind import DataKind

KIND = DataKind()
