"""``preference``: a prompt with a chosen and a rejected answer (DPO, ORPO); two sequences per example, one forward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydralign.data.arithmetic import preference_records
from hydralign.data.kind import DataKind
from hydralign.data.preference import PairExample, PairFields, encode_pairs, to_pair
from hydralign.data.templates import ChatTemplate
from hydralign.data.tokenize import TokenizeStats


class PreferenceKind(DataKind):
    name = "preference"

    def converter(self, dcfg: Any, skipped: dict[str, dict[str, int]]) -> Callable[[Any, str, str], Any]:
        fields = PairFields(dcfg.prompt_field, dcfg.chosen_field, dcfg.rejected_field)

        def pair(rec: Any, origin: str, split: str):
            item, reason = to_pair(rec, origin, fields)
            if reason:
                skipped[split][reason] = skipped[split].get(reason, 0) + 1
            return item

        return pair

    def synthetic(self, records: list[dict], seed: int) -> list[dict]:
        return preference_records(records, seed)

    def encode(self, tokenizer: Any, template: ChatTemplate, items: list, cfg: Any, skipped: dict[str, int]
               ) -> tuple[list, TokenizeStats]:
        stats = TokenizeStats(total=len(items) + sum(skipped.values()), dropped_empty=skipped.get("empty", 0),
                              dropped_identical=skipped.get("identical", 0))
        return encode_pairs(tokenizer, template, items, cfg.data.max_seq_len, cfg.data.overlong, stats), stats

    def assemble(self, sequences: tuple, fields: dict[str, Any]) -> PairExample:
        return PairExample(*sequences)

    def conversations(self, items: list) -> list[list[dict]]:
        """A pair's prompt, answered by its chosen answer."""
        return [p.prompt + [{"role": "assistant", "content": p.chosen}] for p in items]

    def describe(self, stats: TokenizeStats) -> str:
        return f", dropped empty {stats.dropped_empty}, dropped identical {stats.dropped_identical}"


KIND = PreferenceKind()
