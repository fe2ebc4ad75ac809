"""``python -m hydralign.report <sweep folder | parent run id>``: compare a sweep's runs.

One row per cell (the overrides that differ between runs; seeds pooled): mean +- std of the chosen
metrics over finished runs, the step of the best validation score, run ids, failed and pruned
counts. The metrics speak the method's language: ``--metrics`` given, then each method's own (its spec's
``report_metrics``: DPO's reward accuracies and margins, GRPO's rewards, distillation's NLL), then every ``eval/*``
(lm-eval) metric the runs logged. Writes ``report.csv``, ``curves.png`` (one curve per cell: the mean over seeds, and
their spread as a band; ``--x examples|tokens`` draws it against examples or tokens seen instead of
optimizer steps, into ``curves_vs_<x>.png``) and
``<metric>_vs_<param>.png`` for numeric parameters. An evaluation sweep (``python -m hydralign.evaluate -m
init_from=...``) gets one row per checkpoint and ``<metric>_vs_checkpoint_step.png`` for each ``eval/*`` metric.
Ends with the MLflow UI command and its compare-runs link for the sweep's children.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydralign.harness.metrics import ENTRY_TAG, SOURCE_STEP_TAG

# Params that never define a cell: seeds are pooled; the rest is bookkeeping or derived by the plan.
POOLED = {"seed", "run_dir", "resume", "init_from", "method.teacher_from", "grad_accum", "micro_batch", "total_steps", "warmup_steps",
          "max_tokens_per_step", "effective_batch", "world_size"}
POOLED_PREFIXES = ("sweep.", "logger.")


@dataclass
class RunRow:
    run_id: str
    status: str  # FINISHED | FAILED | KILLED | RUNNING
    state: str  # COMPLETE | PRUNED | FAIL | ?
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)
    experiment_id: str = ""


@dataclass
class Cell:
    key: tuple[tuple[str, str], ...]
    runs: list[RunRow] = field(default_factory=list)

    @property
    def finished(self) -> list[RunRow]:
        return [r for r in self.runs if r.state == "COMPLETE" or (r.state == "?" and r.status == "FINISHED")]


def differing_params(runs: list[RunRow], unpooled: frozenset[str] = frozenset()) -> list[str]:
    """The params that split the runs into cells. A param that splits them exactly as an earlier one does
    adds nothing (an interpolated twin such as optimizer.lr = lr, or what a cell's config changes besides
    its method); the method and the sweep's named refs come first, then shallow keys before nested ones."""
    keys = sorted({k for r in runs for k in r.params},
                  key=lambda k: (k != "method.name" and not k.startswith("refs."), k.count("."), k))
    out, seen = [], set()
    for k in keys:
        if (k in POOLED or k.startswith(POOLED_PREFIXES)) and k not in unpooled:
            continue
        column = [r.params.get(k) for r in runs]
        first = {v: i for i, v in reversed(list(enumerate(column)))}
        partition = tuple(first[v] for v in column)
        if len(first) > 1 and partition not in seen:
            out.append(k)
            seen.add(partition)
    return out


def group_cells(runs: list[RunRow]) -> tuple[list[str], list[Cell]]:
    """An evaluation sweep's runs differ in the checkpoint they evaluated (``init_from``): one cell each."""
    evaluated = evaluations(runs)
    keys = differing_params(runs, frozenset({"init_from"}) if evaluated else frozenset())
    cells: dict[tuple, Cell] = {}
    for r in runs:
        key = tuple((k, r.params.get(k, "")) for k in keys)
        cells.setdefault(key, Cell(key)).runs.append(r)
    if evaluated:  # by the step of the checkpoint evaluated
        return keys, sorted(cells.values(), key=lambda c: min(int(r.tags.get(SOURCE_STEP_TAG, 0)) for r in c.runs))
    return keys, sorted(cells.values(), key=lambda c: [_sortable(v) for _, v in c.key])


def evaluations(runs: list[RunRow]) -> bool:
    """The runs of ``python -m hydralign.evaluate`` (checkpoints evaluated, nothing trained)."""
    return bool(runs) and all(r.tags.get(ENTRY_TAG) == "evaluate" for r in runs)


def metric_columns(runs: list[RunRow], given: list[str]) -> list[str]:
    """``given`` (``--metrics``), then the metrics each method of the runs is compared by (its spec's
    ``report_metrics``, in the methods' order), then every ``eval/*`` metric logged; the default spec's when none."""
    from hydralign.methods.spec import REPORT_METRICS
    from hydralign.methods.specs import METHODS

    used = {r.tags.get("method") or r.params.get("method.name") for r in runs} - {None, ""}
    columns = list(given)
    for spec in [s for n, s in METHODS.items() if n in used]:
        columns += spec.report_metrics
    columns += sorted({k for r in runs for k in r.metrics if k.startswith("eval/")})
    columns = columns or list(REPORT_METRICS)
    return list(dict.fromkeys(columns))


def compare_url(ui: str, runs: list[RunRow]) -> str:
    """MLflow's compare-runs page for the runs (its UI's own route: ``#/compare-runs?runs=[...]&experiments=[...]``,
    lists as JSON), where parameters are drawn against metrics."""
    ids = json.dumps([r.run_id for r in runs], separators=(",", ":"))
    experiments = json.dumps(sorted({r.experiment_id for r in runs}), separators=(",", ":"))
    return f"{ui.rstrip('/')}/#/compare-runs?runs={ids}&experiments={experiments}"


def checkpoint_points(runs: list[RunRow], metric: str) -> dict[str, list[tuple[int, float]]]:
    """An evaluation sweep's ``metric`` per source run (its MLflow id, or the model's path), against the step of the
    checkpoint evaluated, sorted by step."""
    points: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in runs:
        if metric in r.metrics and SOURCE_STEP_TAG in r.tags:
            source = r.tags.get("lineage.source_run_id") or r.tags.get("lineage.path", "model")
            points[source].append((int(r.tags[SOURCE_STEP_TAG]), r.metrics[metric]))
    return {k: sorted(v) for k, v in sorted(points.items())}


def plot_checkpoints(out_dir: Path, runs: list[RunRow], metrics: list[str]) -> list[Path]:
    """``<metric>_vs_checkpoint_step.png`` for each ``eval/*`` metric: one line per source run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for metric in [m for m in metrics if m.startswith("eval/")]:
        points = checkpoint_points(runs, metric)
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for source, xy in points.items():
            ax.plot([p[0] for p in xy], [p[1] for p in xy], marker="o", label=f"run {source[:8]}")
        ax.legend(fontsize=7)
        written.append(_save(fig, ax, "optimizer step of the checkpoint evaluated", metric,
                             out_dir / f"{metric.replace('/', '_')}_vs_checkpoint_step.png"))
        shown = "; ".join(f"run {s[:8]}: " + ", ".join(f"step {x} {y:.4g}" for x, y in xy) for s, xy in points.items())
        print(f"{metric} by checkpoint: {shown}")
    return written


def _sortable(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(mean: Optional[float], std: Optional[float]) -> str:
    return "-" if mean is None else f"{mean:.4f} +- {std:.4f}"


def best_step(history: list[tuple[int, float]], maximize: bool) -> Optional[int]:
    if not history:
        return None
    pick = max if maximize else min
    return pick(history, key=lambda sv: (sv[1], -sv[0]) if maximize else (sv[1], sv[0]))[0]


def table(keys: list[str], cells: list[Cell], metrics: list[str], best: dict[str, Optional[float]]) -> list[dict]:
    rows = []
    for cell in cells:
        row: dict[str, object] = {k: v for k, v in cell.key}
        for m in metrics:
            mean, std = mean_std([r.metrics[m] for r in cell.finished if m in r.metrics])
            row[m] = fmt(mean, std)
            row[f"{m} mean"], row[f"{m} std"] = mean, std
        row["best step"] = best.get(cell.key)
        row["runs"] = len(cell.runs)
        row["failed"] = sum(r.state == "FAIL" or r.status == "FAILED" for r in cell.runs)
        row["pruned"] = sum(r.state == "PRUNED" for r in cell.runs)
        row["run ids"] = " ".join(r.run_id[:8] for r in cell.runs)
        rows.append(row)
    return rows


def render(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def resolve(target: str, tracking_uri: Optional[str]) -> tuple[str, str, Path]:
    """(tracking URI, parent run id, output folder) from a sweep folder or a parent run id."""
    path = Path(target)
    if path.is_dir():
        info_file = path / "sweep.json"
        if not info_file.is_file():
            raise SystemExit(f"{path} has no sweep.json: it is not a tracked sweep folder (logger=none or "
                             "dry_run?); pass a parent run id with --tracking-uri instead")
        info = json.loads(info_file.read_text())
        return tracking_uri or info["tracking_uri"], info["parent_run_id"], path
    from hydralign.tracking.store import tracking_uri as default_uri

    return default_uri(tracking_uri), target, Path("outputs") / "reports" / target


def fetch_histories(uri: str, runs: list[RunRow], metric_keys: list[str]) -> dict[tuple[str, str], list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    histories = {}
    for r in runs:
        for key in metric_keys:
            hist = sorted(client.get_metric_history(r.run_id, key), key=lambda m: m.step)
            histories[(r.run_id, key)] = [(m.step, m.value) for m in hist]
    return histories


def fetch(uri: str, parent_id: str, metric_keys: list[str]) -> tuple[list[RunRow], dict[tuple[str, str], list]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    found = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                               max_results=50000)
    runs = []
    for r in found:
        runs.append(RunRow(r.info.run_id, r.info.status, r.data.tags.get("trial_state", "?"), dict(r.data.params),
                           dict(r.data.metrics), dict(r.data.tags), r.info.experiment_id))
    return runs, fetch_histories(uri, runs, metric_keys)


X_AXES = {"step": "optimizer step", "examples": "examples seen (step x effective batch)",
          "tokens": "tokens seen (train/tokens_seen)"}
TOKENS_KEY = "train/tokens_seen"


def x_of(run: RunRow, step: int, histories: dict, axis: str) -> Optional[float]:
    """Where a value logged at optimizer ``step`` sits on the chosen x axis."""
    if axis == "step":
        return float(step)
    if axis == "examples":
        return float(step) * float(run.params.get("effective_batch", "nan"))
    points = [(0, 0.0)] + histories.get((run.run_id, TOKENS_KEY), [])  # step 0: nothing seen yet
    below = [p for p in points if p[0] <= step]
    above = [p for p in points if p[0] >= step]
    if not above:
        return None  # past the last logged step: unknown
    (s0, t0), (s1, t1) = below[-1], above[0]
    return t0 if s1 == s0 else t0 + (t1 - t0) * (step - s0) / (s1 - s0)


def curves(cell: Cell, histories: dict, curve_key: str, axis: str) -> list[tuple[float, float, float, int]]:
    """(x, mean, std, runs) per logged step of a cell, over its runs (seeds)."""
    per_step: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in cell.runs:
        for step, value in histories.get((r.run_id, curve_key), []):
            x = x_of(r, step, histories, axis)
            if x is not None and x == x:
                per_step[step].append((x, value))
    out = []
    for step in sorted(per_step):
        xs, values = zip(*per_step[step])
        mean, std = mean_std(list(values))
        out.append((statistics.fmean(xs), mean, std, len(values)))
    return out


def plot(out_dir: Path, keys: list[str], cells: list[Cell], histories: dict, curve_key: str,
         metric: str, axis: str = "step") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cell in cells:
        points = curves(cell, histories, curve_key, axis)
        if not points:
            continue
        xs, means, stds = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
        label = ", ".join(f"{k}={v}" for k, v in cell.key) or "all runs"
        runs = max(p[3] for p in points)
        line, = ax.plot(xs, means, marker=".", label=f"{label} ({runs} run{'s' if runs > 1 else ''})")
        if runs > 1:  # the spread over seeds, not only their mean
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(X_AXES[axis])
    ax.set_ylabel(f"{curve_key} (mean, band: +- 1 std over seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    path = out_dir / ("curves.png" if axis == "step" else f"curves_vs_{axis}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    for k in keys:
        points = [(float(r.params[k]), r.metrics[metric]) for c in cells for r in c.finished
                  if metric in r.metrics and _sortable(r.params.get(k, "x"))[0] == 0]
        if len(points) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([p[0] for p in points], [p[1] for p in points])
        xs = [p[0] for p in points]
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        written.append(_save(fig, ax, k, metric, out_dir / f"{metric.replace('/', '_')}_vs_{k.replace('/', '_')}.png"))
    return written


def _save(fig, ax, xlabel: str, metric: str, path: Path) -> Path:
    """Label, grid and write one plot; the figure is closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hydralign.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="a sweep folder (outputs/multiruns/...) or an MLflow parent run id")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store (default: the sweep's, or outputs/mlflow.db)")
    ap.add_argument("--metrics", default="",
                    help="comma-separated final metrics to compare, before the method's own and the eval/* ones")
    ap.add_argument("--curve", default="val/loss", help="metric drawn per cell in curves.png")
    ap.add_argument("--x", default="step", choices=sorted(X_AXES),
                    help="x axis of the curves: optimizer steps, examples seen or tokens seen (compare cells "
                         "with different effective batches per example or token, not per step)")
    ap.add_argument("--minimize", action="store_true", help="the first metric is better when lower")
    ap.add_argument("--out", default=None, help="folder for report.csv and the plots (default: the sweep folder)")
    ap.add_argument("--ui-url", default="http://127.0.0.1:5000", help="the MLflow UI, for the compare-runs link")
    args = ap.parse_args(argv)
    given = [m.strip() for m in args.metrics.split(",") if m.strip()]
    uri, parent_id, out_dir = resolve(args.target, args.tracking_uri)
    out_dir = Path(args.out) if args.out else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, _ = fetch(uri, parent_id, [])
    if not runs:
        print(f"no child runs under parent run {parent_id} in {uri}", file=sys.stderr)
        return 1
    metrics = metric_columns(runs, given)
    histories = fetch_histories(uri, runs, sorted({metrics[0], args.curve} | ({TOKENS_KEY} if args.x == "tokens"
                                                                              else set())))
    keys, cells = group_cells(runs)
    maximize = not args.minimize
    best = {}
    for cell in cells:
        steps = [best_step(histories.get((r.run_id, metrics[0]), []), maximize) for r in cell.finished]
        steps = [s for s in steps if s is not None]
        best[cell.key] = statistics.median(steps) if steps else None
    rows = table(keys, cells, metrics, best)
    columns = keys + metrics + ["best step", "runs", "failed", "pruned", "run ids"]
    print(f"sweep parent run {parent_id}: {len(runs)} runs in {len(cells)} cell(s); cells differ in: "
          f"{', '.join(keys) or '(nothing)'}; seeds pooled")
    print(render(rows, columns))
    csv_path = out_dir / "report.csv"
    csv_cols = keys + [c for m in metrics for c in (f"{m} mean", f"{m} std")] + ["best step", "runs", "failed",
                                                                               "pruned", "run ids"]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=csv_cols, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k]))
                                 else row.get(k)) for k in csv_cols})
    if args.x == "tokens" and not any(histories.get((r.run_id, TOKENS_KEY)) for r in runs):
        print(f"these runs did not log {TOKENS_KEY} (runs before it existed): use --x examples or --x step",
              file=sys.stderr)
        return 2
    if evaluations(runs):  # no training curves: each metric against the checkpoint's step
        written = [csv_path] + plot_checkpoints(out_dir, runs, metrics)
    else:
        written = [csv_path] + plot(out_dir, keys, cells, histories, args.curve, metrics[0], args.x)
    print("wrote: " + ", ".join(str(p) for p in written))
    store = uri.split("?")[0]
    print(f"side by side in the MLflow UI:\n  mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000\n"
          f"  then open {args.ui_url} and expand parent run {parent_id}, or compare its {len(runs)} runs (parameters "
          f"against metrics):\n  {compare_url(args.ui_url, runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
