"""Benchmark: the web app's JSON API under gunicorn on loopback.

    python benchmarks/webapp_load.py [--model BUNDLE] [--workers 2] [--sequential 30]
                                     [--threads 4] [--per-thread 25] [--method gradcam] [--no-cold]

Starts gunicorn as ``make webapp`` does (``-c gunicorn.conf.py``: every worker loads the model and
runs one prediction and one Grad-CAM before it takes traffic) on a free 127.0.0.1 port with the
default model (``resolve_default_bundle``; or ``--model``), then measures

1. the first requests after start (``predict + explain``, one at a time, ``--first`` of them:
   by default two per worker, so each worker most likely serves its first request among them);
2. single-request latency, one request at a time: ``predict`` and ``predict + explain``;
3. a bounded concurrent load: ``--threads`` clients each sending ``--per-thread`` predict
   requests of real dataset images (generated ones when the dataset is absent);
4. unless ``--no-cold``, the same first requests on a server started *without* the warm-up
   (``gunicorn 'webapp:create_app()'``, the model loaded by the first request), for contrast.

prints p50/p95/p99 latency, throughput and the error count, the first request against the
steady-state p50/p99 of the same kind of request (the goal: first <= p99), and stops the servers.
Nothing leaves the machine. Numbers depend heavily on the CPU and on what else runs on it.
Needs a trained model bundle: ``--model``, else the default model (``make run`` trains it).
"""
from __future__ import annotations

import argparse
import http.client
import io
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from _common import MODEL_HELP, model_or_exit

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `webapp` lives at the repo root, beside this folder


@dataclass
class Run:
    """Latencies (seconds) of the successful requests of one scenario, and its failures."""

    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    first_error: str = ""

    @property
    def n(self) -> int:
        return len(self.latencies) + self.errors

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000.0 if self.latencies else float("nan")


def load_images(n: int, data_dir: str | None) -> tuple[list[bytes], str]:
    """``n`` image files' bytes (cycling if needed) and where they came from."""
    from skinlesion import config

    root = Path(data_dir) if data_dir else None
    if root is None:
        for cand in (config.resolve_data_dir(), config.shared_dataset()):
            if (Path(cand) / "test").is_dir():
                root = Path(cand)
                break
    if root is not None and root.is_dir():
        files = sorted((root / "test").rglob("*.jpg")) or sorted(root.rglob("*.jpg"))
        if files:
            # Alternate classes so both kinds of image are in the mix.
            step = max(1, len(files) // n)
            picked = files[::step][:n]
            return [p.read_bytes() for p in picked], f"{len(picked)} real images from {root}"
    from PIL import Image

    from skinlesion.data.synth import synth_image

    rng = np.random.default_rng(0)
    out = []
    for i in range(min(n, 20)):
        buf = io.BytesIO()
        Image.fromarray(synth_image(i % 2, rng, 300)).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out, f"{len(out)} GENERATED images (no dataset found)"


def post_predict(url: str, image: bytes, method: str | None, timeout: float = 300.0) -> tuple[int, bytes]:
    """One multipart POST to /api/v1/predict on a fresh connection; (status, body)."""
    from werkzeug.datastructures import FileStorage
    from werkzeug.test import encode_multipart

    fields: dict = {"image": FileStorage(io.BytesIO(image), filename="lesion.jpg", content_type="image/jpeg")}
    if method:
        fields["explain"] = method
    boundary, body = encode_multipart(fields)
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", "/api/v1/predict", body=body,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def timed(run: Run, url: str, image: bytes, method: str | None) -> None:
    t = time.perf_counter()
    try:
        status, body = post_predict(url, image, method)
    except OSError as exc:
        status, body = -1, str(exc).encode()
    elapsed = time.perf_counter() - t
    if status == 200:
        run.latencies.append(elapsed)
    else:
        run.errors += 1
        run.first_error = run.first_error or f"{status}: {body[:200]!r}"


def sequential(name: str, url: str, images: list[bytes], n: int, method: str | None) -> Run:
    run = Run(name)
    t = time.perf_counter()
    for i in range(n):
        timed(run, url, images[i % len(images)], method)
    run.wall_s = time.perf_counter() - t
    return run


def concurrent(url: str, images: list[bytes], threads: int, per_thread: int, method: str | None = None) -> Run:
    """``threads`` clients, each sending ``per_thread`` requests back to back."""
    def client(k: int) -> Run:
        own = Run(str(k))  # one Run per thread, merged afterwards: no shared counters
        for i in range(per_thread):
            timed(own, url, images[(k * per_thread + i) % len(images)], method)
        return own

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(client, range(threads)))
    run = Run(f"predict, {threads} threads x {per_thread}", wall_s=time.perf_counter() - t)
    for part in parts:
        run.latencies += part.latencies
        run.errors += part.errors
        run.first_error = run.first_error or part.first_error
    return run


def report(runs: list[Run]) -> str:
    """The results as a small fixed-width table."""
    head = f"{'scenario':<32} {'n':>4} {'err':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>7}"
    lines = [head, "-" * len(head)]
    for r in runs:
        rate = len(r.latencies) / r.wall_s if r.wall_s else float("nan")
        lines.append(f"{r.name:<32} {r.n:>4} {r.errors:>4} {r.percentile(50):>8.1f} {r.percentile(95):>8.1f} "
                     f"{r.percentile(99):>8.1f} {rate:>7.2f}")
    return "\n".join(lines)


def first_requests(url: str, images: list[bytes], n: int, method: str | None, warm: bool) -> Run:
    """The first ``n`` requests a fresh server gets, one at a time (latencies kept in order)."""
    return sequential(f"first {n} (warm-up {'on' if warm else 'off'})", url, images, n, method)


def first_vs_steady(first: Run, steady: Run, cold: Run | None) -> str:
    """The first request's latency against the steady-state p50/p99 of the same request kind."""
    p50, p99 = steady.percentile(50), steady.percentile(99)
    lines = [f"steady state ({steady.name}): p50 {p50:.1f} ms, p99 {p99:.1f} ms"]
    for run in (first, cold):
        if run is None or not run.latencies:
            continue
        one, worst = 1000 * run.latencies[0], 1000 * max(run.latencies)
        lines.append(f"{run.name}: first request {one:.1f} ms = {one / p99:.2f} x p99 "
                     f"({one / p50:.2f} x p50); slowest of the first {run.n}: {worst:.1f} ms = {worst / p99:.2f} x p99")
    met = first.latencies and 1000 * max(first.latencies) <= p99
    lines.append(f"goal (warm-up on: every first request <= steady p99): {'met' if met else 'NOT met'}")
    return "\n".join(lines)


def main() -> None:
    from tools.webapp_server import gunicorn_server

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help=MODEL_HELP)
    ap.add_argument("--data-dir", help="dataset root for the request images (default: the real dataset)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (as `make webapp`)")
    ap.add_argument("--sequential", type=int, default=30, help="requests per sequential scenario")
    ap.add_argument("--threads", type=int, default=4, help="concurrent clients (bounded load)")
    ap.add_argument("--per-thread", type=int, default=25, help="requests per concurrent client")
    ap.add_argument("--method", default="gradcam", help="explanation method for the explain scenario")
    ap.add_argument("--first", type=int, default=None, help="first requests timed after start (default 2 x workers)")
    ap.add_argument("--no-cold", action="store_true", help="skip the server started without warm-up")
    args = ap.parse_args()
    n_first = args.first or 2 * args.workers

    model = model_or_exit(args.model)  # one line naming the missing bundle, before any server starts
    images, source = load_images(max(args.threads * args.per_thread, args.sequential), args.data_dir)
    print(f"model {model}\nimages: {source}\nserver: gunicorn, {args.workers} worker(s), loopback; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

    t = time.perf_counter()
    with gunicorn_server(model, workers=args.workers, warm=True, startup_timeout=300) as url:
        print(f"listening on {url}, every worker warmed up, after {time.perf_counter() - t:.1f} s")
        first = first_requests(url, images, n_first, args.method, warm=True)
        steady = sequential(f"predict + {args.method} (sequential)", url, images, args.sequential, args.method)
        runs = [
            first,
            sequential("predict (sequential)", url, images, args.sequential, None),
            steady,
            concurrent(url, images, args.threads, args.per_thread),
        ]
    cold = None
    if not args.no_cold:
        t = time.perf_counter()
        with gunicorn_server(model, workers=args.workers) as url:
            print(f"cold server (no warm-up) listening on {url} after {time.perf_counter() - t:.1f} s")
            cold = first_requests(url, images, n_first, args.method, warm=False)
        runs.append(cold)
    print()
    print(report(runs))
    print()
    print(first_vs_steady(first, steady, cold))
    for r in runs:
        if r.first_error:
            print(f"{r.name}: first error {r.first_error}")


if __name__ == "__main__":
    main()
