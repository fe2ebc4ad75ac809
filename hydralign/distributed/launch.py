"""hydralign starts its own ranks: ``python -m hydralign hardware=cpu_2proc`` (no torchrun).

The job process (the one Hydra runs, in a single run or as one job of a multirun) resolves its config
once, with an absolute run folder, writes it to ``<run_dir>/launch/config.yaml`` and starts one
process per device, torchrun-style (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT``),
each running ``python -m hydralign.distributed.launch <that file>``. Every rank reads the same resolved config,
so ``${now}`` folders, the MLflow run (rank 0) and checkpoints agree, and no rank ever sees the
sweep's command line (PITFALLS: Hydra x Lightning re-launch). Lightning then finds an externally
launched environment and never re-runs the script.

A rank that fails ends the whole job: the others are stopped and the job raises the failing rank's
own error (written to ``<run_dir>/launch/rank<N>.error``); under a multirun the sweep goes on with its
other jobs. Multi-node runs are started by the cluster (SLURM through ``hydra/launcher=submitit_slurm``, srun
with one task per device, or torchrun on every node): each rank then joins from its environment
(``hydralign.distributed.slurm.join_slurm_step`` for a SLURM task) and this module starts nothing.

``apply_env`` sets ``hardware.env`` (the GPU presets' NCCL settings) in the job's environment before any
process group exists; ranks started here inherit it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from hydralign.distributed.preemption import LISTENER, PREEMPTED_EXIT, Preempted
from hydralign.distributed.slurm import step_tasks
from hydralign.errors import ConfigError, DataError
from hydralign.secrets import TRACKING_ENV, has_password, redact

PRUNED_EXIT, CONFIG_EXIT = 3, 2


def launched_externally() -> bool:
    """torchrun, srun (a task of a multi-task step) or this launcher already made this process a rank."""
    return "LOCAL_RANK" in os.environ or step_tasks() > 1


def apply_env(hw: Any) -> dict[str, str]:
    """Set ``hardware.env`` in this process's environment (ranks started later inherit it); a value given there
    replaces an inherited one. Returns what changed, as ``{name: value}``."""
    changed = {}
    for name, value in (hw.get("env", None) or {}).items():
        if os.environ.get(str(name)) != str(value):
            changed[str(name)] = str(value)
    os.environ.update(changed)
    return changed


def needs_launch(hw: Any) -> bool:
    return int(hw.nodes) * int(hw.devices_per_node) > 1 and not launched_externally()


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all bound at once while asked, so none is handed out twice)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class RankFailed(RuntimeError):
    """A rank of this job failed; the message is that rank's own error."""


def rank_env(rank: int, world: int, port: int, extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               GROUP_RANK="0", NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               # Lightning then reads the variables above (a torchrun-style launch), also inside a SLURM
               # allocation, where it would otherwise take SLURM's task count (1) as the world size
               TORCHELASTIC_RUN_ID=f"hydralign-{port}")
    return env


def supervise(commands: list[list[str]], envs: list[dict[str, str]], log_dir: Path,
              poll_s: float = 0.2, grace_s: float = 15.0, helpers: int = 0) -> None:
    """Run one process per rank; rank 0 writes to this console, the others to ``rank<N>.log``. The
    first rank to fail (in time) ends the job: the others get SIGHUP, then SIGKILL after ``grace_s``. A stop
    signal (SIGTERM, SIGUSR1/2) to this process is passed on to every rank: they checkpoint and stop together,
    and this raises ``Preempted``. The last ``helpers`` processes (generator processes) serve the others: one that
    fails ends the job too, and once every other process has ended they are stopped (SIGHUP) and their exit
    codes do not count."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    logs = []
    LISTENER.forget()
    LISTENER.also = lambda sig: [p.send_signal(sig) for p in procs if p.poll() is None]
    LISTENER.listen()
    try:
        _supervise(procs, logs, commands, envs, log_dir, poll_s, grace_s, helpers)
    finally:
        LISTENER.restore()
        LISTENER.also = None


def _supervise(procs: list, logs: list, commands: list[list[str]], envs: list[dict[str, str]], log_dir: Path,
               poll_s: float, grace_s: float, helpers: int = 0) -> None:
    for rank, (cmd, env) in enumerate(zip(commands, envs)):
        out = None if rank == 0 else open(log_dir / f"rank{rank}.log", "w")  # noqa: SIM115 (closed below)
        logs.append(out)
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
    failed: Optional[int] = None
    try:
        main = len(procs) - helpers
        while None in [p.poll() for p in procs][:main]:  # poll every rank each time (any() would stop early)
            # A learner that has ended (done, preempted, pruned) takes the rollout store and weight group with it:
            # a generator then failing on a closed connection is the end of the job, not a failure of it
            ending = any(p.returncode in (0, PREEMPTED_EXIT, PRUNED_EXIT) for p in procs[:main])
            bad = [r for r, p in enumerate(procs) if p.returncode not in (None, 0, PREEMPTED_EXIT)
                   and (r < main or not ending)]
            if bad:
                failed = bad[0]
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        failed = -1
    finally:
        if failed is None:  # the ranks have ended: the generator processes serving them stop too
            for p in procs[len(procs) - helpers:]:
                if p.poll() is None:
                    p.send_signal(signal.SIGHUP)
        if failed is not None or helpers:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGHUP)  # not SIGTERM: that asks a rank for a checkpoint first
            deadline = time.time() + grace_s
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for f in logs:
            if f:
                f.close()
    if failed == -1:
        raise KeyboardInterrupt
    codes = [p.returncode for p in procs]
    if failed is None and helpers:  # stopped because the ranks were done: their codes do not count
        codes = codes[:len(procs) - helpers]
    bad = [r for r, c in enumerate(codes) if c != 0]
    if not bad:
        return
    if all(c in (0, PREEMPTED_EXIT) for c in codes):
        stopped = log_dir / "rank0.preempted"
        args = json.loads(stopped.read_text()) if stopped.is_file() else [LISTENER.names(), -1, None, False]
        raise Preempted(args[0], args[1], args[2], bool(args[3]) or LISTENER.warned)
    first = failed if failed is not None else bad[0]
    if first >= len(procs) - helpers:  # a generator lost its learner: the learner's own error says why
        first = next((r for r in range(len(procs) - helpers) if _error_text(log_dir, r)), first)
    if codes[first] == PRUNED_EXIT or (first != 0 and codes[0] == PRUNED_EXIT):
        import optuna

        raise optuna.TrialPruned(_error_text(log_dir, 0) or "pruned")
    text = _error_text(log_dir, first) or f"exit code {codes[first]}; see {log_dir / f'rank{first}.log'}"
    cls = {CONFIG_EXIT: ConfigError}.get(codes[first], RankFailed)
    raise cls(f"rank {first} of {len(procs)} failed: {text}")


def _error_text(log_dir: Path, rank: int) -> str:
    path = log_dir / f"rank{rank}.error"
    return path.read_text().strip() if path.is_file() else ""


def launch(cfg: Any, run_dir: Path) -> dict[str, float]:
    """Start this job's ranks from its resolved config and wait; return rank 0's metrics."""
    from omegaconf import OmegaConf, open_dict

    from hydralign.sweep.study import STUDY_ENV, TRIAL_ID_ENV, TRIAL_NUMBER_ENV, job_trial
    from hydralign.tracking.store import JOB_ENV, hydra_job

    hw = cfg.hardware
    if int(hw.nodes) > 1:
        raise ConfigError(f"hardware={hw.name} spans {hw.nodes} nodes: start it once per node (srun, one task per "
                          f"device, or torchrun --nnodes {hw.nodes} --nproc-per-node {hw.devices_per_node}); "
                          "hydralign starts the processes of one node only")
    run_dir = run_dir.resolve()
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    extra: dict[str, str] = {}
    with open_dict(resolved):
        resolved.run_dir = str(run_dir)
        uri = resolved.logger.tracking_uri
        if uri and has_password(str(uri)):  # the ranks read it from their environment, never from this file
            extra[TRACKING_ENV] = str(uri)
            resolved.logger.tracking_uri = "${oc.env:" + TRACKING_ENV + "}"
    launch_dir = run_dir / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*launch_dir.glob("rank*.error"), *launch_dir.glob("rank*.preempted")]:
        stale.unlink()
    config_file = launch_dir / "config.yaml"
    tmp = config_file.with_suffix(".tmp")
    tmp.write_text(redact(OmegaConf.to_yaml(resolved)))
    tmp.replace(config_file)
    trial = job_trial()
    if trial is not None:
        extra.update({STUDY_ENV: trial.study_file, TRIAL_ID_ENV: str(trial.trial_id)})
        if trial.number is not None:
            extra[TRIAL_NUMBER_ENV] = str(trial.number)
    job = hydra_job()
    if job is not None:
        extra[JOB_ENV] = json.dumps({"num": job[0], "overrides": job[1]})
    gens = int(hw.get("generator_devices", 0) or 0)
    world, (port, rollout_port) = int(hw.devices_per_node) - gens, _free_ports(2)
    if gens:  # generator processes beside the learners: they meet at a port of their own (rollout_workers.channel)
        extra.update({"HYDRALIGN_ROLLOUT_PORT": str(rollout_port), "HYDRALIGN_GENERATORS": str(gens),
                      "HYDRALIGN_LEARNERS": str(world)})
    cmd = [sys.executable, "-m", "hydralign.distributed.launch", str(config_file)]
    gen_cmd = [sys.executable, "-m", "hydralign.rollout_workers.generator", str(config_file)]
    print(f"hydralign: starting {world} learner processes" + (f" + {gens} generator processes" if gens else "") +
          f" (all but rank 0 log to {launch_dir}/rank<N>.log)", flush=True)
    envs = [rank_env(r, world, port, extra) for r in range(world)]
    gpus = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] or \
        [str(i) for i in range(int(hw.devices_per_node))]
    if hw.accelerator == "gpu" and gens and len(gpus) < world + gens:
        raise ConfigError(f"hardware.devices_per_node={hw.devices_per_node} ({world} learners + {gens} generators) "
                          f"but CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')} shows {len(gpus)} "
                          "GPUs: show every device to the job, or lower hardware.devices_per_node")
    own = (lambda g: {"CUDA_VISIBLE_DEVICES": gpus[world + g]}) if hw.accelerator == "gpu" else (lambda g: {})
    envs += [{**os.environ, **extra, "HYDRALIGN_GENERATOR_RANK": str(g), "MASTER_ADDR": "127.0.0.1", **own(g)}
             for g in range(gens)]  # a generator sees only its own GPU (the devices after the learners')
    supervise([cmd] * world + [gen_cmd] * gens, envs, launch_dir, helpers=gens)
    return json.loads((run_dir / "metrics.json").read_text())


def rank_main(config_file: str) -> int:
    """One rank: read the job's resolved config, train, and leave a readable error when failing."""
    from omegaconf import OmegaConf

    rank = int(os.environ.get("RANK", "0"))
    error_file = Path(config_file).parent / f"rank{rank}.error"
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))  # stopped because another rank failed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # before and after training (run() listens in between)
    try:
        from hydralign.run.console import configure_console
        from hydralign.run.job import run

        configure_console()
        run(OmegaConf.load(config_file))
        return 0
    except SystemExit:
        raise
    except Preempted as stopped:
        stop_file = Path(config_file).parent / f"rank{rank}.preempted"
        stop_file.write_text(json.dumps([stopped.signals, stopped.step, stopped.checkpoint, stopped.warned]))
        return PREEMPTED_EXIT
    except BaseException as err:
        code = 1
        if type(err).__name__ == "TrialPruned":
            code = PRUNED_EXIT
        elif isinstance(err, (ConfigError, DataError)):
            code = CONFIG_EXIT
        text = "".join(traceback.format_exception_only(type(err), err)).strip()
        where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
        if where is not None and code == 1:
            text += f" (at {where.filename}:{where.lineno})"
        error_file.write_text(text)
        if code == 1:
            traceback.print_exc()
        return code


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1]))
