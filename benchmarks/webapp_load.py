"""Benchmark: the web app's JSON API under gunicorn on loopback.

    python benchmarks/webapp_load.py [--model BUNDLE] [--workers 2] [--sequential 30]
                                     [--threads 4] [--per-thread 25] [--method gradcam]

Starts ``gunicorn 'webapp:create_app()'`` on a free 127.0.0.1 port with the newest bundle
(or ``--model``), then measures

1. single-request latency, one request at a time: ``predict`` and ``predict + explain``;
2. a bounded concurrent load: ``--threads`` clients each sending ``--per-thread`` predict
   requests of real dataset images (generated ones when the dataset is absent),

prints p50/p95/p99 latency, throughput and the error count, and stops the server.
Nothing leaves the machine. Numbers depend heavily on the CPU and on what else runs on it.
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


def main() -> None:
    from skinlesion.bundle.format import default_bundle
    from tools.webapp_server import gunicorn_server

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="bundle folder (default: SKINLESION_MODEL, else the newest under models/)")
    ap.add_argument("--data-dir", help="dataset root for the request images (default: the real dataset)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (as `make webapp`)")
    ap.add_argument("--sequential", type=int, default=30, help="requests per sequential scenario")
    ap.add_argument("--threads", type=int, default=4, help="concurrent clients (bounded load)")
    ap.add_argument("--per-thread", type=int, default=25, help="requests per concurrent client")
    ap.add_argument("--method", default="gradcam", help="explanation method for the explain scenario")
    args = ap.parse_args()

    model = args.model or default_bundle()
    if model is None:
        raise SystemExit("no trained model: train one with `make run`, or pass --model BUNDLE_DIR")
    images, source = load_images(max(args.threads * args.per_thread, args.sequential), args.data_dir)
    print(f"model {model}\nimages: {source}\nserver: gunicorn, {args.workers} worker(s), loopback; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

    t = time.perf_counter()
    with gunicorn_server(model, workers=args.workers) as url:
        print(f"listening on {url} after {time.perf_counter() - t:.1f} s")
        # Warm-up outside the timings: every worker loads the model and traces the explainer
        # on its first requests; several in parallel so each worker most likely gets some.
        t = time.perf_counter()
        warm = concurrent(url, images, 2 * args.workers, 2, args.method)
        print(f"warm-up (model load in each worker): {time.perf_counter() - t:.1f} s, {warm.errors} errors")
        if warm.errors:
            print(f"  first error: {warm.first_error}")
        runs = [
            sequential("predict (sequential)", url, images, args.sequential, None),
            sequential(f"predict + {args.method} (sequential)", url, images, args.sequential, args.method),
            concurrent(url, images, args.threads, args.per_thread),
        ]
    print()
    print(report(runs))
    for r in runs:
        if r.first_error:
            print(f"{r.name}: first error {r.first_error}")


if __name__ == "__main__":
    main()
