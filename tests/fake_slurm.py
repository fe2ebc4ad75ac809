"""Stand-ins for SLURM's ``sbatch`` and ``srun``, put on PATH by tests (``install``), so that submitit's real
submission path runs without a cluster. One node only (localhost).

    sbatch <script>     copies the script to $FAKE_SLURM_DIR/sbatch<N>.sh and prints "Submitted batch job <id>"
                        (ids 4242, 4252, ...); with FAKE_SLURM_RUN=1 it then runs the job in the background, the
                        elements of a job array one after the other, each with the variables sbatch would set
    srun <opts> <cmd>   starts $SLURM_NTASKS copies of <cmd> as the step's tasks (SLURM_PROCID, SLURM_LOCALID,
                        SLURM_STEP_*), 1.1 s apart, each writing to --output/--error with %A %a %j %t filled in;
                        their pids go to $FAKE_SLURM_DIR/tasks.<job> (``signal_tasks`` signals them, as SLURM's
                        ``--signal`` and a preemption do); $FAKE_SLURM_BETWEEN_TASKS, if set, is run between
                        two tasks' starts (with $FAKE_SLURM_TASK_OUT, the output file of the task just started)
    scontrol requeue <job>
                        marks the job (``<id>`` or ``<array id>_<index>``) for requeue: when its batch script ends, it
                        runs again with SLURM_RESTART_COUNT one higher, as SLURM requeues a job (``preempt``: SIGTERM to
                        the tasks and a requeue, as a partition with PreemptMode=REQUEUE does)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write ``sbatch`` and ``srun`` into ``bin_dir``; returns the environment that puts them first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "srun", "scontrol"):
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(__file__)} {name} \"$@\"\n")
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state_dir)}


def sbatch_params(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines of a submission script, as {key: value}."""
    params = {}
    for line in script.splitlines():
        m = re.match(r"#SBATCH --([\w-]+)(?:=(.*))?$", line.strip())
        if m:
            params[m.group(1)] = shlex.split(m.group(2))[0] if m.group(2) else "true"
    return params


def sbatch(args: list[str]) -> int:
    state = Path(os.environ["FAKE_SLURM_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    script = Path(args[-1])
    count = len(list(state.glob("sbatch*.sh")))
    job_id = 4242 + 10 * count
    (state / f"sbatch{count}.sh").write_text(script.read_text())
    if os.environ.get("FAKE_SLURM_RUN") == "1":
        log = open(state / f"job{job_id}.log", "w")  # noqa: SIM115 (the child owns it)
        subprocess.Popen([sys.executable, __file__, "run", str(script), str(job_id)], stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    print(f"Submitted batch job {job_id}", flush=True)
    return 0


def run(script: Path, job_id: int) -> int:
    """The job as SLURM would run it: the batch script once per array element, with sbatch's variables."""
    params = sbatch_params(script.read_text())
    nodes, per_node = int(params.get("nodes", 1)), int(params.get("ntasks-per-node", 1))
    assert nodes == 1, "the fake runs one node (localhost)"
    array = "array" in params  # an array's elements have ids of their own (job_id + 1 + index)
    first, last = map(int, params.get("array", "0-0").split("%")[0].split("-"))
    worst = 0
    for index in range(first, last + 1):
        ids = ({"SLURM_JOB_ID": str(job_id + 1 + index), "SLURM_ARRAY_JOB_ID": str(job_id),
                "SLURM_ARRAY_TASK_ID": str(index)} if array else {"SLURM_JOB_ID": str(job_id)})
        requeue = state_dir() / f"requeue.{_job_of(ids)}"
        env = {**os.environ, **ids, "SLURM_JOB_NAME": params.get("job-name", "job"),
               "SLURM_JOB_NODELIST": "localhost", "SLURM_NODELIST": "localhost", "SLURM_NNODES": str(nodes),
               "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NTASKS": str(nodes * per_node),
               "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})",
               "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_SUBMIT_DIR": os.getcwd()}
        restarts = 0
        while True:
            code = subprocess.run(["bash", str(script)], env=env).returncode
            if not requeue.exists():
                break
            requeue.unlink()
            restarts += 1
            env["SLURM_RESTART_COUNT"] = str(restarts)
        worst = max(worst, code)
    return worst


def state_dir() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def _job_of(ids: dict[str, str]) -> str:
    if "SLURM_ARRAY_JOB_ID" in ids:
        return f"{ids['SLURM_ARRAY_JOB_ID']}_{ids['SLURM_ARRAY_TASK_ID']}"
    return ids["SLURM_JOB_ID"]


def scontrol(args: list[str]) -> int:
    if args[:1] != ["requeue"] or len(args) != 2:
        print(f"fake scontrol: only 'requeue <job>', not {args}", file=sys.stderr)
        return 1
    (state_dir() / f"requeue.{args[1]}").write_text("")
    return 0


def signal_tasks(state: Path, job: str, sig: int) -> list[int]:
    """Send ``sig`` to the running tasks of ``job`` (the test's side); returns their pids."""
    pids = [int(p) for p in (state / f"tasks.{job}").read_text().split()]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def preempt(state: Path, job: str) -> None:
    """What SLURM does to a job preempted on a partition with PreemptMode=REQUEUE: SIGTERM, then a requeue."""
    import signal

    (state / f"requeue.{job}").write_text("")
    signal_tasks(state, job, signal.SIGTERM)


def srun(args: list[str]) -> int:
    files: dict[str, str] = {}
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt in ("--output", "--error"):
            files[opt] = args.pop(0)
    tasks = int(os.environ["SLURM_NTASKS"])

    def fill(pattern: str, task: int) -> str:
        for key, value in (("%A", os.environ.get("SLURM_ARRAY_JOB_ID", "")),
                           ("%a", os.environ.get("SLURM_ARRAY_TASK_ID", "")), ("%j", os.environ["SLURM_JOB_ID"]),
                           ("%t", str(task))):
            pattern = pattern.replace(key, value)
        return pattern

    procs = []
    job = _job_of(os.environ)
    pid_file = state_dir() / f"tasks.{job}"
    pid_file.write_text("")
    for task in range(tasks):
        env = {**os.environ, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task), "SLURM_NODEID": "0",
               "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_NUM_NODES": "1",
               "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": str(tasks)}
        out = open(fill(files["--output"], task), "a")  # noqa: SIM115 (closed after the task)
        err = open(fill(files["--error"], task), "a") if "--error" in files else subprocess.STDOUT  # noqa: SIM115
        procs.append((subprocess.Popen(args, env=env, stdout=out, stderr=err), out, err))
        with open(pid_file, "a") as pids:
            pids.write(f"{procs[-1][0].pid}\n")
        between = os.environ.get("FAKE_SLURM_BETWEEN_TASKS")
        if between and task < tasks - 1:  # a test's command, run after starting task t, before t + 1
            subprocess.run(between, shell=True, check=True,
                           env={**os.environ, "FAKE_SLURM_TASK_OUT": fill(files["--output"], task)})
        time.sleep(1.1)  # tasks start apart: a ${now} resolved per task would differ
    worst = 0
    for proc, out, err in procs:
        worst = max(worst, proc.wait())
        out.close()
        if err is not subprocess.STDOUT:
            err.close()
    return worst


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "run":
        sys.exit(run(Path(rest[0]), int(rest[1])))
    sys.exit({"sbatch": sbatch, "srun": srun, "scontrol": scontrol}[command](rest))
