"""Downstream evaluation with EleutherAI's lm-evaluation-harness (``eval.harness``).

    metrics.py          lm-eval's results as ``eval/<task>/<metric>[_<filter>]`` (pure)
    adapter.py          the in-memory policy through lm-eval's ``HFLM`` and ``simple_evaluate``
    callback.py         during training: at the end, with each checkpoint or after each validation
    arithmetic_task.py  the embedded task's held-out sums as lm-eval data
    tasks/              task YAMLs always on lm-eval's include path (``hydralign_arithmetic``)
"""
