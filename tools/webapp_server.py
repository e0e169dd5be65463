"""Run the app under gunicorn on a free loopback port (for browser tests and benchmarks)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"Listening at: (http://127\.0\.0\.1:\d+)")
# gunicorn.conf.py's post_worker_init logs one of these per worker when its warm-up ends.
_WARMED = re.compile(r"worker \d+ (?:not )?warmed up")
CONFIG_FILE = REPO_ROOT / "gunicorn.conf.py"


class ServerError(RuntimeError):
    """gunicorn did not start (the message carries the end of its log)."""


@contextmanager
def gunicorn_server(model: str | os.PathLike[str] | None = None, *, workers: int = 1, timeout: int = 120,
                    startup_timeout: float = 120.0, extra_env: dict[str, str] | None = None,
                    warm: bool = False, log: list[str] | None = None) -> Iterator[str]:
    """Start ``gunicorn 'webapp:create_app()'`` on 127.0.0.1 and yield its base URL.

    The port is chosen by the kernel (bind to port 0), so parallel runs never collide.
    ``model`` sets ``SKINLESION_MODEL``; without it the default model is served. ``warm`` runs it
    as ``make webapp`` does, with ``-c gunicorn.conf.py`` (every worker warmed up before traffic),
    and yields only once every worker has finished its warm-up. ``log`` receives gunicorn's
    log lines. The server (and its workers) is stopped when the block exits.
    """
    env = {**os.environ, **(extra_env or {})}
    if model is not None:
        env["SKINLESION_MODEL"] = str(model)
    # gunicorn reads ./gunicorn.conf.py by itself when no config is named, so a cold server (the
    # model loaded by the first request that needs it) is told to read an empty one instead.
    scratch = tempfile.TemporaryDirectory(prefix="gunicorn-cold-")
    cold_config = Path(scratch.name) / "cold.py"
    cold_config.write_text("# no settings: no warm-up\n")
    config = ["-c", str(CONFIG_FILE if warm else cold_config)]
    app = [] if warm else ["webapp:create_app()"]  # gunicorn.conf.py names the app itself
    cmd = [sys.executable, "-m", "gunicorn", *config, "--workers", str(workers), "--bind", "127.0.0.1:0",
           "--timeout", str(timeout), "--graceful-timeout", "5", *app]
    # Its own session, so a hard stop can take the workers down with the master.
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    log = log if log is not None else []
    reader = threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        url = _wait_until_ready(proc, log, startup_timeout, workers if warm else 0)
        yield url
    finally:
        _stop(proc)
        reader.join(timeout=5)
        scratch.cleanup()


def _wait_until_ready(proc: subprocess.Popen, log: list[str], startup_timeout: float, warmed: int = 0) -> str:
    deadline = time.monotonic() + startup_timeout
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"gunicorn exited with status {proc.returncode}:\n" + "".join(log[-30:]))
        if url is None:
            found = next((m for m in map(_LISTENING.search, list(log)) if m), None)
            url = found.group(1) if found else None
        if url is not None and sum(bool(_WARMED.search(line)) for line in list(log)) >= warmed:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                    if r.status == 200:
                        return url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
        time.sleep(0.2)
    raise ServerError(f"gunicorn was not ready after {startup_timeout:.0f} s:\n" + "".join(log[-30:]))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # graceful: the master stops its workers
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
