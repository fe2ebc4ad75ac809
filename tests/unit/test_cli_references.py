"""Checkpoint references with a selector work on the command line as the README writes them: Hydra's
grammar would read the ``=`` of ``:step=1000`` as syntax, so hydralign quotes such values first."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from hydralign.cli import quote_references


@pytest.mark.parametrize("arg, values", [
    ("init_from=outputs/runs/sft:step=1000", ["outputs/runs/sft:step=1000"]),
    ("init_from=runs:/3f2c9a:epoch=2", ["runs:/3f2c9a:epoch=2"]),
    ("method.teacher_from=outputs/t:best=val/exact_match,max", ["outputs/t:best=val/exact_match,max"]),
    ("init_from=a:step=100,a:step=200", ["a:step=100", "a:step=200"]),  # a sweep over two checkpoints
    ("init_from=a:best=val/loss,min,b:last", ["a:best=val/loss,min", "b:last"]),
    ("+init_from=it's:step=1", ["it's:step=1"]),
    ("init_from=C:\\runs\\a:step=1", ["C:\\runs\\a:step=1"]),  # backslashes stay single
    ("init_from=a\\:step=1,b'\\", ["a\\:step=1", "b'\\"]),
])
def test_selectors_reach_hydra_as_values(arg, values):
    [quoted] = quote_references([arg])
    [override] = OverridesParser.create().parse_overrides([quoted])
    got = [q.text for q in override.value().list] if override.is_sweep_override() else [override.value()]
    assert got == values


@pytest.mark.parametrize("arg", ["init_from=outputs/runs/sft", "init_from=outputs/runs/sft:best", "lr=1e-3",
                                 "init_from='a:step=3'", "data.name=x=y", "init_from=choice(a:step=1,a:step=2)",
                                 "init_from=${oc.env:RUN,x}:step=1"])
def test_other_arguments_are_left_alone(arg):
    assert quote_references([arg]) == [arg]


def test_the_readme_form_plans(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hydralign", "method=dpo", "init_from=outputs/runs/sft:step=1000",
                          "dry_run=true"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "init_from='outputs/runs/sft:step=1000'" in out.stdout
