"""Throw-away stores for multi-node sweeps: a local PostgreSQL server and an ``mlflow server`` on it.

``postgres()`` runs initdb in a fresh folder under the system temp dir, starts the server on a free
port of 127.0.0.1 (its unix socket in that folder too, never /var/run/postgresql), creates the given
databases and stops and deletes everything on exit. PostgreSQL refuses to run as root: as root, the
server runs as the ``postgres`` user (the Debian package creates it) or ``nobody``, through
``runuser`` (or ``su``), in a folder chown'd to it. Authentication is ``trust``, on loopback only.

``mlflow_server()`` starts ``mlflow server`` on a backend store URI and waits for ``/health``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SUPERUSER = "hydralign"  # the database role initdb creates


class Unavailable(RuntimeError):
    """No PostgreSQL binaries, or no way to run them as a non-root user: the caller skips."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, or where Debian puts them (/usr/lib/postgresql/<ver>/bin,
    the newest version first)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        return versions[-1]
    raise Unavailable(f"PostgreSQL's {name} is not installed (Debian: apt-get install -y postgresql)")


def _as_user() -> tuple[list[str], Optional[str]]:
    """(command prefix, user name) to run the server binaries as a non-root user; ([], None) if not root."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", user, "--"], user
        if shutil.which("su"):
            return ["su", "-s", "/bin/sh", "-c", '"$0" "$@"', user, "--"], user
    raise Unavailable("running as root, and neither a postgres nor a nobody user with runuser/su to start "
                      "PostgreSQL as (it refuses to run as root)")


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    root: Path

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"


def _run(cmd: list[str], what: str, log: Optional[Path] = None) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
        raise RuntimeError(f"{what} failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout[-3000:]}"
                           f"\n{out.stderr[-3000:]}\n{tail}")


@contextlib.contextmanager
def postgres(databases: tuple[str, ...] = ()) -> Iterator[Postgres]:
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    prefix, user = _as_user()
    # Under the system temp dir, not pytest's (0700, root's): the server's user must reach it.
    root = Path(tempfile.mkdtemp(prefix="hydralign-pg-"))
    data, log = root / "data", root / "server.log"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    started = False
    try:
        _run(prefix + [initdb, "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                       "--locale=C", "--no-sync"], "initdb")
        port = free_port()
        # fsync off: a throw-away cluster need not survive a power cut. Unix socket in the folder.
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        _run(prefix + [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
             "pg_ctl start", log)
        started = True
        server = Postgres("127.0.0.1", port, SUPERUSER, root)
        if databases:
            import psycopg

            with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
                for name in databases:
                    conn.execute(f'CREATE DATABASE "{name}"')
        yield server
    finally:
        if started:
            subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, log: Path, timeout: float = 180) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (a free port), artifacts proxied into ``artifacts``; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", backend_store_uri, "--artifacts-destination",
             str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=5).read().strip() == b"OK":
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)  # its own session: the server and its uvicorn workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
