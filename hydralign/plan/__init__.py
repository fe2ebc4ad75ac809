"""The plan (pure: no torch, no I/O): every size a run derives from its config, computed once, checked, frozen.

Parts, each a small pure module: ``batch`` (effective / micro / accumulation), ``rollout`` (online RL's batch
hierarchy), ``packing``, ``strategy`` (what a strategy and precision can run), ``memory`` (per-device estimate),
``core`` (``make_plan``, ``refine``: the plan once the data count is known), ``format`` (what ``dry_run`` prints).
"""

from hydralign.plan.core import Plan, make_plan
from hydralign.plan.format import format_plan

__all__ = ["Plan", "format_plan", "make_plan"]
