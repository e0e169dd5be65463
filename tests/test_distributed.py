"""`skinlesion train --distributed`: TF_CONFIG parsing, the feature shards, and a real two-worker run."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from skinlesion.cli import main
from skinlesion.training.distributed import DistributedError, parse_tf_config, shard_of

REPO_ROOT = Path(__file__).resolve().parents[1]
DIGEST = re.compile(r"\(rank (\d) of 2\) finished training; weights sha256 ([0-9a-f]{64})")


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_shard_of_is_a_stable_uniform_split():
    digests = [_sha(i) for i in range(3000)]
    for n in (1, 2, 3, 5):
        shards = [shard_of(d, n) for d in digests]
        assert set(shards) == set(range(n))
        counts = [shards.count(k) for k in range(n)]
        expected, sd = len(digests) / n, (len(digests) * (1 / n) * (1 - 1 / n)) ** 0.5
        assert all(abs(c - expected) <= 5 * sd for c in counts), counts  # binomial: equal shares
    # Fixed by the digest alone: known values, whatever else is in the list.
    assert shard_of("0" * 63 + "1", 2) == 0 and shard_of("f" * 64, 2) == 1
    assert shard_of("00000000000000050000" + "0" * 44, 3) == 5 % 3
    assert shard_of(_sha(7), 4) == shard_of(_sha(7).upper(), 4)


@pytest.mark.parametrize("sha,n", [("abc", 2), (_sha(1), 0), (_sha(1), -1), ("z" * 64, 2), (_sha(1), True)])
def test_shard_of_rejects_bad_input(sha, n):
    with pytest.raises(ValueError):
        shard_of(sha, n)


def test_tf_config_ranks_follow_tensorflow():
    workers = {"worker": ["a:1", "b:1", "c:1"]}
    assert parse_tf_config(json.dumps({"cluster": workers, "task": {"type": "worker", "index": 0}})).is_chief
    c = parse_tf_config(json.dumps({"cluster": workers, "task": {"type": "worker", "index": 2}}))
    assert (c.n_workers, c.rank, c.task, c.is_chief) == (3, 2, "worker:2", False)
    with_chief = {"chief": ["m:1"], "worker": ["a:1", "b:1"]}
    c = parse_tf_config(json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}}))
    assert (c.n_workers, c.rank, c.is_chief) == (3, 0, True)
    c = parse_tf_config(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert (c.rank, c.is_chief) == (1, False)


@pytest.mark.parametrize("raw,message", [
    (None, "needs TF_CONFIG"),
    ("{not json", "not a valid cluster description"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "not a valid cluster description"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}), "not in its cluster"),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "ps", "index": 0}}),
     "only chief and worker"),
    (json.dumps({"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}}), "at most one"),
])
def test_bad_tf_config_is_a_clear_error(raw, message):
    with pytest.raises(DistributedError, match=message):
        parse_tf_config(raw)


def test_cli_refuses_distributed_fine_tuning_and_a_missing_tf_config(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--distributed", "--fine-tune", "5", "--data-dir", str(tmp_path), "--quiet"])
    assert r.exit_code == 1 and "fine-tun" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["train", "--distributed", "--data-dir", str(tmp_path), "--quiet"])
    assert r.exit_code == 1 and "needs TF_CONFIG" in r.output


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_two_workers_train_identical_weights(tmp_path):
    """Two processes on 127.0.0.1 (each with its own copy of the data, cache and output folder, as
    two machines would be) train one model; both end with the same weights, the chief's bundle
    holds them, and the other worker writes nothing."""
    from skinlesion.data.synth import generate_dataset

    data = generate_dataset(tmp_path / "ds", n_train_per_class=24, n_test_per_class=8, size=64, seed=0)
    ports = _free_ports(2)
    procs = []
    for i in range(2):
        home = tmp_path / f"host{i}"
        shutil.copytree(data, home / "ds")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "SKINLESION_CACHE_DIR": str(home / "cache"),
               "SKINLESION_DATA_HOME": str(home / "data"), "SKINLESION_MODELS_DIR": str(home / "models"),
               "TF_CONFIG": json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                        "task": {"type": "worker", "index": i}})}
        cmd = [sys.executable, "-m", "skinlesion.cli", "train", "--distributed", "--data-dir", str(home / "ds"),
               "--weights", "none", "--input-size", "64", "--head-units", "0", "--run-id", "two-workers",
               "--out-dir", str(home / "out"), "--quiet"]
        procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"worker {i}:\n{out[-3000:]}"
    digests = {}
    for out in outputs:
        found = DIGEST.search(out)
        assert found, out[-3000:]
        digests[int(found.group(1))] = found.group(2)
    assert set(digests) == {0, 1} and digests[0] == digests[1], digests
    chief_bundle = tmp_path / "host0" / "out" / "two-workers"
    assert (chief_bundle / "bundle.json").is_file()
    assert not (tmp_path / "host1" / "out").exists(), "only the chief writes the bundle"
    assert str(chief_bundle.name) in outputs[1], "the other worker says where the chief wrote it"
    meta = json.loads((chief_bundle / "bundle.json").read_text())
    assert meta["training"]["config"]["distributed"] is True and meta["synthetic"] is True

    from skinlesion.bundle.format import load
    from skinlesion.models.backbones import weights_digest

    assert weights_digest(load(chief_bundle).model) == digests[0], "the bundle holds the weights both trained"
