"""hydralign's Optuna sweeper on plain Hydra apps, written as the official plugin's examples are (sphere
with TPE, a grid, two objectives, a custom search space, a failing app): a config written for
``hydra-optuna-sweeper`` runs unchanged, and the app never sees anything of hydralign."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from hydralign.sweep.study import make_storage

APP = '''
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="{conf}", config_name="config")
def main(cfg: DictConfig):
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    {body}


def configure(cfg: DictConfig, trial) -> None:
    x = trial.params["x"]
    trial.suggest_float("z", x - cfg.max_z_difference_from_x, x + cfg.max_z_difference_from_x)
    trial.suggest_float("+w", 0.0, 1.0)  # +w: w is not in the config


if __name__ == "__main__":
    main()
'''
SPHERE_CONF = """
defaults:
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: tpe

hydra:
  sweeper:
    sampler:
      seed: 123
    direction: minimize
    study_name: sphere
    storage: null
    n_trials: 20
    n_jobs: 1
    max_failure_rate: 0.0
    params:
      x: range(-5.5, 5.5, step=0.5)
      y: choice(-5 ,0 ,5)

x: 1
y: 1
z: 1
error: false
"""


def make_app(tmp: Path, name: str, body: str, conf: str = "x: 1\ny: 1\n") -> Path:
    (tmp / f"{name}_conf").mkdir(parents=True, exist_ok=True)
    (tmp / f"{name}_conf" / "config.yaml").write_text(textwrap.dedent(conf))
    (tmp / f"{name}.py").write_text(APP.format(conf=f"{name}_conf", body=body))
    return tmp / f"{name}.py"


def sweep(app: Path, *args: str, name: str = "sweep") -> tuple[subprocess.CompletedProcess, Path]:
    out_dir = app.parent / name
    out = subprocess.run([sys.executable, str(app), "-m", f"hydra.sweep.dir={out_dir}", *args],
                         capture_output=True, text=True, cwd=app.parent, timeout=300)
    return out, out_dir


def study_of(results: Path) -> optuna.Study:
    res = OmegaConf.load(results)
    return optuna.load_study(study_name=res.study_name, storage=make_storage(res.storage))


@pytest.fixture
def sphere(tmp_path):
    return make_app(tmp_path, "sphere", "return cfg.x ** 2 + cfg.y ** 2", SPHERE_CONF)


def test_sphere_with_tpe_as_configured_for_the_official_plugin(sphere):
    out, sweep_dir = sweep(sphere)
    assert out.returncode == 0, out.stderr
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best = study_of(sweep_dir / "optimization_results.yaml").best_trial
    assert results.name == "optuna" and results.best_params == best.params and results.best_value == best.value
    assert results.best_value <= 2.27  # the official test's bound for TPE seed 123 (95th percentile)
    assert "storage=null: the study is kept in" in out.stdout  # hydralign's default, said on the console


def test_command_line_space_fixed_parameter_and_rerun(sphere):
    args = ["hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=cli", "x=choice(0, 1, 2)", "y=0", "~z"]
    first, dir1 = sweep(sphere, *args, name="first")
    assert first.returncode == 0, first.stderr
    results = OmegaConf.load(dir1 / "optimization_results.yaml")
    assert set(results.best_params) == {"x"} and results.best_value in (0, 1, 4)  # y is fixed, not searched
    again, dir2 = sweep(sphere, *args, name="again")
    assert again.returncode == 0 and "nothing to run: study cli already has 3 finished trials" in again.stdout
    assert "hydra.sweeper.study_name=<new name>" in again.stdout
    assert (dir2 / "optimization_results.yaml").is_file()
    more, _ = sweep(sphere, *[a.replace("n_trials=3", "n_trials=5") for a in args], name="more")
    assert more.returncode == 0 and "3 of 5 trials done" in more.stdout
    assert len(study_of(dir1 / "optimization_results.yaml").trials) == 5


def test_grid_with_more_trials_than_points_runs_the_grid_once(tmp_path):
    app = make_app(tmp_path, "grid", "return cfg.x ** 2 + cfg.y ** 2", """
        defaults:
          - override hydra/sweeper: optuna
          - override hydra/sweeper/sampler: grid
        hydra:
          sweeper:
            direction: minimize
            study_name: sphere-grid
            n_trials: 20
            n_jobs: 1
            params:
              x: choice(-1, 1)
              y: range(-1.0, 1.0, step=1)
              z: choice("foo", "bar")
        x: 1
        y: 1
        z: foo
        """)
    out, sweep_dir = sweep(app)
    assert out.returncode == 0, out.stderr
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == 1 and abs(results.best_params.x) == 1 and results.best_params.y == 0
    trials = study_of(sweep_dir / "optimization_results.yaml").trials
    points = {(t.params["x"], t.params["y"], t.params["z"]) for t in trials}
    assert len(trials) == len(points) == 12  # 2 x 3 x 2: each point once, range's stop included
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


@pytest.mark.parametrize("sampler", ["nsgaii", "random"])
def test_two_objectives_write_the_pareto_front(tmp_path, sampler):
    app = make_app(tmp_path, "binh_korn", "return 4 * cfg.x ** 2 + 4 * cfg.y ** 2, (cfg.x - 5) ** 2 + (cfg.y - 5) ** 2", """
        defaults:
          - override hydra/sweeper: optuna
        hydra:
          sweeper:
            direction: [minimize, minimize]
            n_trials: 12
            n_jobs: 1
            params:
              x: range(0, 5, step=0.5)
              y: range(0, 3, step=0.5)
        x: 1
        y: 1
        """)
    out, sweep_dir = sweep(app, f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.sampler.seed=123")
    assert out.returncode == 0, out.stderr
    solutions = OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml").solutions)
    assert solutions and all(len(s["values"]) == 2 for s in solutions)
    for a in solutions:
        assert a["params"]["x"] % 0.5 == 0 and a["params"]["y"] % 0.5 == 0
        for b in solutions:  # no solution of the front dominates another
            assert not (all(x <= y for x, y in zip(a["values"], b["values"])) and a["values"] != b["values"])


def test_custom_search_space(tmp_path):
    app = make_app(tmp_path, "custom", "return cfg.w ** 2 + cfg.x ** 2 + cfg.y ** 2 + cfg.z ** 2", """
        defaults:
          - override hydra/sweeper: optuna
        hydra:
          sweeper:
            direction: minimize
            n_trials: 10
            n_jobs: 1
            params:
              x: range(-5.5, 5.5, 0.5)
              y: choice(-5, 0, 5)
            custom_search_space: custom.configure
        x: 1
        y: 1
        z: 100
        max_z_difference_from_x: 0.3
        """)
    out, sweep_dir = sweep(app, "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123")
    assert out.returncode == 0, out.stderr
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml").best_params
    assert abs(best.x - best.z) <= 0.3 and 0 <= best["+w"] <= 1


@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
def test_failing_app_names_the_trials_and_shows_the_job_error(sphere, max_failure_rate):
    out, sweep_dir = sweep(sphere, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "error=true",
                           "hydra/sweeper/sampler=random", f"hydra.sweeper.max_failure_rate={max_failure_rate}")
    if max_failure_rate < 1.0:
        assert out.returncode == 1
        assert "2 of 2 trials of the last batch failed, above hydra.sweeper.max_failure_rate=0.5" in out.stderr
        assert "trial 0: x=" in out.stderr and "->  RuntimeError: cfg.error is True" in out.stderr
        assert "First failure (trial 0): RuntimeError: cfg.error is True" in out.stderr
        assert f"at {sphere}:" in out.stderr and "in main" in out.stderr
        assert OmegaConf.load(sweep_dir / "optimization_results.yaml").states == {"FAIL": 2}
    else:
        assert out.returncode == 0, out.stderr
        assert OmegaConf.load(sweep_dir / "optimization_results.yaml").states == {"FAIL": 4}


def test_any_app_empty_space_and_any_float_return(tmp_path):
    """An app with no sweeper config and no search space: the fixed parameters run n_trials times;
    it returns a numpy scalar or a 0-d tensor, both recorded as values."""
    app = make_app(tmp_path, "plain", "import numpy, torch\n"
                   "    return numpy.float32(cfg.x) if cfg.kind == 'numpy' else torch.tensor(cfg.x * 2.0)",
                   "x: 1.5\nkind: numpy\n")
    for kind, value in (("numpy", 1.5), ("torch", 3.0)):
        out, sweep_dir = sweep(app, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", f"kind={kind}",
                               name=kind)
        assert out.returncode == 0, out.stderr
        study = study_of(sweep_dir / "optimization_results.yaml")
        assert [t.value for t in study.trials] == [value, value] and study.trials[0].params == {}


def test_removed_sampler_message(tmp_path):
    app = make_app(tmp_path, "mo", "return cfg.x, cfg.y")
    out, _ = sweep(app, "hydra/sweeper=optuna", "hydra/sweeper/sampler=motpe", "x=range(0, 5)")
    assert out.returncode == 1
    assert "'motpe' sampler was removed in Optuna 4.0: use hydra/sweeper/sampler=tpe" in out.stderr
