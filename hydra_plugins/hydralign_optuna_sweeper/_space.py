"""The search space, from Hydra's override grammar, as Hydra's official Optuna sweeper reads it.

    choice(a, b) / a,b        -> CategoricalDistribution
    range(1, 9, 2)            -> IntDistribution(1, 9, step=2)  (the stop is included, unlike the basic
                                 sweeper's range; a float start, stop or step: FloatDistribution)
    shuffle(range(1, 4))      -> CategoricalDistribution([1, 2, 3])
    interval(0.1, 1)          -> FloatDistribution(0.1, 1.0)
    int(interval(1, 8))       -> IntDistribution(1, 8)
    tag(log, interval(..))    -> the same with log=True
    x=5                       -> a fixed parameter; ~x and ~x=5 are passed through as they are
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def distribution(override: Override) -> BaseDistribution | str:
    """One override -> an Optuna distribution, or its value as a string when it is not a sweep."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if value.shuffle:
            return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(float(value.start), float(value.stop), step=float(value.step))
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: this sweep is not supported by the Optuna sweeper; use choice, "
                     "range, interval, int(interval(...)) or tag(log, ...)")


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)  # key -> value, as typed
    passthrough: list[str] = field(default_factory=list)  # deletions (~x, ~x=1), given to every job as is

    @classmethod
    def parse(cls, overrides: list[str]) -> SearchSpace:
        """``hydra.sweeper.params`` first, then the command line: a later key replaces an earlier one."""
        space = cls()
        for ov in OverridesParser.create().parse_overrides(overrides):
            if ov.is_delete():
                space.passthrough.append(str(ov.input_line))
                continue
            key = ov.get_key_element()
            space.distributions.pop(key, None)
            space.fixed.pop(key, None)
            found = distribution(ov)
            if isinstance(found, BaseDistribution):
                space.distributions[key] = found
            else:
                space.fixed[key] = found
        return space

    def grid(self) -> Optional[dict[str, list]]:
        """Every point of a discrete space (GridSampler's search space); None if a parameter is continuous."""
        grid: dict[str, list] = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[name] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and not dist.log:
                grid[name] = list(range(dist.low, dist.high + 1, dist.step))
            elif isinstance(dist, FloatDistribution) and dist.step is not None:
                n = int(round((dist.high - dist.low) / dist.step))
                grid[name] = [dist.low + i * dist.step for i in range(n + 1)]
            else:
                return None
        return grid

    def study_name(self, directions: list[str], extra: str = "") -> str:
        """A name that only this search space (and direction) gets: the same command continues its study."""
        key = repr((sorted((k, repr(v)) for k, v in self.distributions.items()), sorted(self.fixed.items()),
                    sorted(self.passthrough), directions, extra))
        return "hydralign-" + hashlib.sha1(key.encode()).hexdigest()[:10]


def override_value(value: Any) -> str:
    """A sampled value as an override's value (choices are already in override syntax)."""
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)

