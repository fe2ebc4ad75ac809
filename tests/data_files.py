"""Small local data files for the data tests: chat JSONL with varied lengths, written into a test's tmp_path."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_chat(path: Path, n: int, seed: int = 0, tag: str = "q") -> Path:
    """``n`` chat records ``{"messages": [user, assistant]}``, each naming its source and index (``tag`` i)."""
    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice("abcdefgh") for _ in range(k))  # noqa: E731
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"{tag}{i} {words(rng.randint(2, 12))}"},
                                              {"role": "assistant", "content": words(rng.randint(2, 12))}]}) + "\n")
    return path
