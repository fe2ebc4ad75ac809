"""One voice per job, counted at the store: a 2-rank job asks an ``mlflow server`` exactly what a 1-rank job of
the same config asks (every request through a counting proxy in front of the server): only rank 0 makes an MLflow
client, looks up the experiment, creates the run and logs."""

from __future__ import annotations

import collections
import http.client
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from tests.pg import mlflow_server

pytestmark = pytest.mark.slow

JOB = ["trainer.max_steps=4", "eval.every_n_steps=2", "batch.effective=8", "batch.micro=2",
       "data.arithmetic.num_train=128", "data.arithmetic.num_val=8", "eval.num_generate=4", "eval.max_new_tokens=4",
       "checkpoint.export_hf=false", "trainer.enable_progress_bar=false"]


class CountingProxy(ThreadingHTTPServer):
    """Forwards every request to ``target`` and counts them by (method, path with run ids left out)."""

    def __init__(self, target: str):
        self.target = urlsplit(target)
        self.counts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Forward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    def _forward(self) -> None:
        proxy: CountingProxy = self.server  # type: ignore[assignment]
        with proxy.lock:
            path = re.sub(r"/[0-9a-f]{32}/", "/<run id>/", self.path.split("?")[0])
            proxy.counts[(self.command, path)] += 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


def _job(tmp, uri: str, name: str, hardware: str) -> None:
    out = subprocess.run([sys.executable, "-m", "hydralign", f"hardware={hardware}", *JOB, f"logger.tracking_uri={uri}",
                          f"run_dir={tmp / name}"], cwd=tmp, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]


def test_a_two_rank_job_asks_the_store_what_one_rank_asks(tmp_path):
    with mlflow_server(f"sqlite:///{tmp_path}/backend.db", tmp_path / "artifacts", tmp_path / "server.log") as url:
        proxy = CountingProxy(url)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            _job(tmp_path, proxy.url, "warm", "cpu")  # makes the experiment: both counted jobs find it
            proxy.counts.clear()
            _job(tmp_path, proxy.url, "one", "cpu")
            one = dict(proxy.counts)
            proxy.counts.clear()
            _job(tmp_path, proxy.url, "two", "cpu_2proc")
            two = dict(proxy.counts)
        finally:
            proxy.shutdown()
    print(f"store requests: 1 rank {sum(one.values())}, 2 ranks {sum(two.values())}")
    assert sum(one.values()) > 10, one  # the proxy saw the job's traffic
    assert two == one, {k: (one.get(k), two.get(k)) for k in set(one) | set(two) if one.get(k) != two.get(k)}
