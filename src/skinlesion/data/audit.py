"""Leakage audit: exact (md5) and near-duplicate (perceptual hash) images within and across sets.

The public dermoscopy sets are all drawn, directly or not, from the ISIC archive: the Kaggle
set contains re-encoded HAM10000 and ISIC 2017 images, and its own test split has copies of
training images. Any number that mixes sets must first find these pairs.

A near duplicate is a pair whose 64-bit perceptual hashes (``imagehash.phash``) are within
``max_distance`` bits AND whose 16x16 grey thumbnails correlate >= ``min_correlation``.
Hashes are cached per file content (md5), so a second audit of the same images is fast.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion import config
from skinlesion.data.datasets import DataError, dataset_fingerprint
from skinlesion.io import read_json, replacing_folder, write_json

log = logging.getLogger(__name__)

# The rule, validated on pairs inspected by eye (notebook 01 shows true and false matches side
# by side): re-encoded, recoloured, rescaled and re-framed copies of one photo have pHash distance
# <= 6 and thumbnail correlation >= 0.90. At distance 7-8 most pairs that still correlate are
# different lesions that merely look alike (a small brown lesion on plain skin, the same dermoscope
# vignette), so the older rule (<= 8, >= 0.95) both missed re-framed copies and flagged look-alikes.
PHASH_MAX_DISTANCE = 6
THUMB_MIN_CORRELATION = 0.90
# The cross-source audit then takes a sharper look at each flagged pair (64x64 thumbnails):
# copies of one photo stay >= 0.97 (measured: Kaggle <-> HAM10000 copies 0.99-1.00), look-alike
# lesions fall below (flagged HAM10000 pairs of two different lesion ids: 95th percentile 0.93).
# Pairs that pass are "near" (copies); the rest are "similar" (probably look-alikes). Splits
# still group both, which costs a few hundred training images and can only over-protect.
COPY_MIN_CORRELATION = 0.97
PAIR_COLUMNS = ["a", "b", "kind", "phash_distance", "thumb_correlation"]
_BLOCK = 2048  # rows of the pairwise Hamming-distance matrix computed at once (memory bound)


def _hash_one(path: Path) -> tuple[int, np.ndarray] | None:
    """Packed pHash and 16x16 thumbnail of one image; None when Pillow cannot decode it. (Its md5,
    the cache key, is :func:`hash_images`' own: the file is not read a second time for it.)"""
    import imagehash
    from PIL import Image

    try:
        with Image.open(path) as src:
            im = src.convert("RGB")
            bits = imagehash.phash(im).hash.ravel()
            thumb = np.asarray(im.convert("L").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32).ravel()
    except (OSError, ValueError, Image.DecompressionBombError):  # UnidentifiedImageError is an OSError
        return None
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0]), thumb


class HashTable:
    """md5, packed 64-bit pHash and normalised 16x16 thumbnail of each image."""

    def __init__(self, md5: list[str], phash: np.ndarray, thumbs: np.ndarray):
        self.md5, self.phash = md5, phash.astype(np.uint64)
        t = thumbs.astype(np.float32)
        self.thumbs = (t - t.mean(1, keepdims=True)) / (t.std(1, keepdims=True) + 1e-6)

    def __len__(self) -> int:
        return len(self.md5)


def _md5(path: Path) -> str | None:
    """md5 of the file's bytes, or None when intake refuses to read it (too large, not a regular file)."""
    from skinlesion.data.intake import ImageRejected, read_file_bytes

    try:
        return hashlib.md5(read_file_bytes(path)).hexdigest()
    except ImageRejected:
        return None


def hash_images(paths: Sequence[str | os.PathLike[str]], *, progress: bool = True,
                cache: Path | None = None) -> HashTable:
    """Hash every image (threaded; Pillow releases the GIL), reusing a cache keyed by file md5."""
    from tqdm.auto import tqdm

    cache = cache or config.cache_dir() / "hashes.npz"
    store: dict[str, tuple[int, np.ndarray]] = {}
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                store = {k: (int(h), t) for k, h, t in zip(z["md5"].tolist(), z["phash"], z["thumbs"])}
        except Exception:  # a broken cache is rebuilt, never trusted
            store = {}
    digests = [(p, _md5(p)) for p in map(Path, paths)]
    refused = [p for p, m in digests if m is None]
    # With any file refused the audit stops below, so md5s then stands for every path, in order.
    files = [p for p, m in digests if m is not None]
    md5s = [m for _, m in digests if m is not None]
    todo = [i for i, m in enumerate(md5s) if m not in store]
    if todo or refused:
        unreadable = list(refused)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            it = pool.map(_hash_one, [files[i] for i in todo])
            for i, result in zip(todo, tqdm(it, total=len(todo), desc="hashing", unit="img", disable=not progress)):
                if result is None:
                    unreadable.append(files[i])
                else:
                    store[md5s[i]] = result
        if store:  # saved before any refusal below: the images that did hash need not be hashed again
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")
            keys = list(store)
            np.savez(tmp, md5=np.array(keys), phash=np.array([store[k][0] for k in keys], dtype=np.uint64),
                     thumbs=np.stack([store[k][1] for k in keys]).astype(np.float32))
            os.replace(tmp, cache)
        if unreadable:
            # A duplicate audit that quietly left images out would certify them clean.
            shown = ", ".join(str(f) for f in unreadable[:5]) + (" …" if len(unreadable) > 5 else "")
            raise DataError(f"{len(unreadable)} of {len(digests)} images cannot be read or decoded, so they cannot be checked "
                            f"for duplicates: {shown}. Remove or replace them and run again.")
    return HashTable(md5s, np.array([store[m][0] for m in md5s], dtype=np.uint64),
                     np.stack([store[m][1] for m in md5s]) if md5s else np.zeros((0, 256), np.float32))


def find_pairs(h: HashTable, *, queries: np.ndarray | None = None, refs: np.ndarray | None = None,
               max_distance: int = PHASH_MAX_DISTANCE, min_correlation: float = THUMB_MIN_CORRELATION) -> pd.DataFrame:
    """Exact and near-duplicate pairs (a < b, indices into ``h``) between ``queries`` and ``refs``.

    Default: every pair within the table. Exact means identical bytes (md5).
    """
    n = len(h)
    q = np.arange(n) if queries is None else np.asarray(queries)
    r = np.arange(n) if refs is None else np.asarray(refs)
    found: dict[tuple[int, int], tuple[str, int, float]] = {}
    ref_hash = h.phash[r]
    for start in range(0, len(q), _BLOCK):
        qi = q[start:start + _BLOCK]
        dist = np.bitwise_count(h.phash[qi][:, None] ^ ref_hash[None, :])
        for a_local, b_local in zip(*np.nonzero(dist <= max_distance)):
            a, b = int(qi[a_local]), int(r[b_local])
            if a == b:
                continue
            key = (min(a, b), max(a, b))
            if key in found:
                continue
            if h.md5[a] == h.md5[b]:
                found[key] = ("exact", int(dist[a_local, b_local]), 1.0)
                continue
            corr = float(h.thumbs[a] @ h.thumbs[b] / h.thumbs.shape[1])
            if corr >= min_correlation:
                found[key] = ("near", int(dist[a_local, b_local]), round(corr, 4))
    # Identical bytes whose pHash differs cannot happen (same decode), so exact pairs are complete.
    rows = [(a, b, k, d, c) for (a, b), (k, d, c) in sorted(found.items())]
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def audit_records(records: pd.DataFrame, roots: dict[str, Path], *, progress: bool = True,
                  max_distance: int = PHASH_MAX_DISTANCE,
                  min_correlation: float = THUMB_MIN_CORRELATION) -> pd.DataFrame:
    """Every duplicate pair within and across the sources of a records table.

    Columns: ``source_a, image_a, split_a, label_a, source_b, image_b, split_b, label_b, kind,
    phash_distance, thumb_correlation`` (one row per unordered pair).
    """
    records = records.reset_index(drop=True)
    paths = [roots[s] / p for s, p in zip(records["source"], records["path"])]
    table = hash_images(paths, progress=progress)
    pairs = find_pairs(table, max_distance=max_distance, min_correlation=min_correlation)
    a, b = records.loc[pairs["a"]].reset_index(drop=True), records.loc[pairs["b"]].reset_index(drop=True)
    pairs = pairs.reset_index(drop=True)
    out = pd.DataFrame({
        "source_a": a["source"], "image_a": a["image_id"], "split_a": a["split"], "label_a": a["label"],
        "source_b": b["source"], "image_b": b["image_id"], "split_b": b["split"], "label_b": b["label"],
        "kind": pairs["kind"], "phash_distance": pairs["phash_distance"],
        "thumb_correlation": pairs["thumb_correlation"],
    })
    near = out["kind"] == "near"
    r64 = np.ones(len(out))
    r64[near.to_numpy()] = thumb64_correlation(out[near], records, roots)
    out["thumb64_correlation"] = np.round(r64, 4)
    out.loc[near & (out["thumb64_correlation"] < COPY_MIN_CORRELATION), "kind"] = "similar"
    return out


def thumb64_correlation(pairs: pd.DataFrame, records: pd.DataFrame, roots: dict[str, Path]) -> np.ndarray:
    """Correlation of 64x64 grey thumbnails of each audited pair: a sharper second look than the rule's 16x16.

    Used to validate the rule (notebook 01): copies of one photo stay near 1.0 at this size,
    different lesions that merely look alike fall away.
    """
    from PIL import Image

    idx = records.set_index(["source", "image_id"])["path"]

    def grey(source: str, image: str) -> np.ndarray:
        with Image.open(roots[source] / idx.loc[(source, image)]) as im:
            g = np.asarray(im.convert("L").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32).ravel()
        return (g - g.mean()) / (g.std() + 1e-6)

    return np.array([float(grey(r.source_a, r.image_a) @ grey(r.source_b, r.image_b) / 4096)
                     for r in pairs.itertuples()])


def same_lesion_rate(pairs: pd.DataFrame, records: pd.DataFrame, source: str) -> pd.DataFrame:
    """Within a source that has lesion ids: per pHash distance, how many flagged pairs are one lesion.

    A flagged pair of two *different* lesions of the same set is a false match (a set holds no
    copies of its own photos under two lesion ids), so this measures the rule's precision there.
    """
    group = records.set_index(["source", "image_id"])["group"]
    sub = pairs[(pairs["source_a"] == source) & (pairs["source_b"] == source)]
    same = [group.loc[(source, a)] == group.loc[(source, b)] for a, b in zip(sub["image_a"], sub["image_b"])]
    out = sub.assign(same_lesion=same).groupby(["kind", "phash_distance"])["same_lesion"].agg(["size", "mean"])
    return out.rename(columns={"size": "pairs", "mean": "same lesion"})


def overlap_table(pairs: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Per pair of sources: images of each side with a flagged duplicate (any kind) or a copy (exact/near) on the other."""
    names = list(dict.fromkeys(records["source"]))
    rows = []
    for i, s in enumerate(names):
        for t in names[i:]:
            m = ((pairs["source_a"] == s) & (pairs["source_b"] == t)) | ((pairs["source_a"] == t) & (pairs["source_b"] == s))
            sub = pairs[m]
            left = set(sub.loc[sub["source_a"] == s, "image_a"]) | set(sub.loc[sub["source_b"] == s, "image_b"])
            right = set(sub.loc[sub["source_a"] == t, "image_a"]) | set(sub.loc[sub["source_b"] == t, "image_b"])
            copies = sub[sub["kind"].isin(["exact", "near"])] if "kind" in sub else sub
            c_left = set(copies.loc[copies["source_a"] == s, "image_a"]) | set(copies.loc[copies["source_b"] == s, "image_b"])
            c_right = set(copies.loc[copies["source_a"] == t, "image_a"]) | set(copies.loc[copies["source_b"] == t, "image_b"])
            rows.append({"source_a": s, "source_b": t, "flagged pairs": len(sub),
                         "exact": int((sub["kind"] == "exact").sum()),
                         "images_a": len(left), "images_b": len(right) if s != t else len(left | right),
                         "copies_a": len(c_left), "copies_b": len(c_right) if s != t else len(c_left | c_right)})
    return pd.DataFrame(rows)


SOURCE_AUDIT_FILES = ("pairs.csv", "overlap.csv")


def write_source_audit(pairs: pd.DataFrame, overlap: pd.DataFrame, out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``pairs.csv`` and ``overlap.csv`` of a cross-source audit into ``out_dir``, replacing
    the folder as a whole (:func:`skinlesion.io.replacing_folder`: a failure leaves the previous
    audit as it was; a folder holding other files is refused)."""
    out = Path(out_dir) if out_dir else config.reports_dir() / "audit" / "sources"
    with replacing_folder(out, owns=SOURCE_AUDIT_FILES, what="`skinlesion data audit --sources`") as tmp:
        pairs.to_csv(tmp / "pairs.csv", index=False)
        overlap.to_csv(tmp / "overlap.csv", index=False)
    return out


# --- the Kaggle split audit (test vs train of one dataset) ------------------------------------

def audit(
    root: str | os.PathLike[str],
    splits: pd.DataFrame,
    *,
    max_distance: int = PHASH_MAX_DISTANCE,
    min_correlation: float = THUMB_MIN_CORRELATION,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(duplicate pairs, test table with a ``leaked`` column) for a splits table.

    A test image is leaked when it has an exact or near duplicate among the train/val images.
    The test table also has each image's ``md5`` (what :func:`write_audit` records, so that
    ``skinlesion evaluate`` can tell whether the audit was made from the test images it scores),
    and ``attrs`` ``root``, ``dataset_fingerprint`` (of every audited file) and ``rule`` (the
    near-duplicate thresholds used).
    """
    root = Path(root)
    test = splits[splits["split"] == "test"].reset_index(drop=True)
    ref = splits[splits["split"] != "test"].reset_index(drop=True)
    if test.empty:
        raise DataError("the splits have no test images to audit: give a dataset with a test split")
    both = pd.concat([test, ref], ignore_index=True)
    table = hash_images([root / p for p in both["path"]], progress=progress)
    n = len(test)
    pairs = find_pairs(table, queries=np.arange(n), refs=np.arange(n, len(both)),
                       max_distance=max_distance, min_correlation=min_correlation)
    t, r = pairs[["a", "b"]].min(axis=1), pairs[["a", "b"]].max(axis=1) - n
    pair_df = pd.DataFrame({
        "test_path": test["path"].to_numpy()[t], "test_label": test["label"].to_numpy()[t].astype(int),
        "train_path": ref["path"].to_numpy()[r], "train_label": ref["label"].to_numpy()[r].astype(int),
        "train_split": ref["split"].to_numpy()[r], "kind": pairs["kind"],
        "phash_distance": pairs["phash_distance"], "thumb_correlation": pairs["thumb_correlation"],
    })
    test = test.assign(leaked=test["path"].isin(set(pair_df["test_path"])), md5=table.md5[:n])
    test.attrs.update(root=str(root), dataset_fingerprint=dataset_fingerprint([root / p for p in both["path"]], root),
                      rule={"max_phash_distance": int(max_distance), "min_thumb_correlation": float(min_correlation)})
    return pair_df, test


# What `skinlesion data audit` writes into reports/audit; sources/ there is the cross-source audit's
# (write_source_audit), carried over when the test-vs-train audit replaces the folder.
AUDIT_FILES = ("duplicates.csv", "dedup_test.csv", "audit.json")
AUDIT_CARRY = ("sources",)
AUDIT_RECORD = "audit.json"


def audit_record(test: pd.DataFrame, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What :func:`write_audit` records in ``audit.json`` about the audited dataset: its folder,
    fingerprint (:func:`~skinlesion.data.datasets.dataset_fingerprint` of every audited file), the
    near-duplicate rule, and the md5 of each test image by path (null when the table has no ``md5``
    column)."""
    root = root if root is not None else test.attrs.get("root")
    md5 = test["md5"] if "md5" in test.columns else pd.Series([None] * len(test), index=test.index)
    return {
        "what": "test vs train/val duplicate audit (skinlesion data audit); dedup_test.csv lists the test images "
                "without a copy in train/val, of the dataset below",
        "root": config.display_path(root) if root is not None else None,
        "dataset_fingerprint": test.attrs.get("dataset_fingerprint"),
        "rule": test.attrs.get("rule"),
        "n_test": int(len(test)),
        "n_leaked": int(test["leaked"].sum()),
        "test_md5": {str(p): (str(m) if isinstance(m, str) else None) for p, m in zip(test["path"], md5)},
    }


def write_audit(pair_df: pd.DataFrame, test: pd.DataFrame, out_dir: str | os.PathLike[str] | None = None, *,
                root: str | os.PathLike[str] | None = None) -> Path:
    """Write ``duplicates.csv``, ``dedup_test.csv`` (the clean test subset) and ``audit.json``
    (which dataset: :func:`audit_record`) into ``out_dir`` (default ``reports/audit``).

    The folder is replaced as a whole (:func:`skinlesion.io.replacing_folder`): a failure part-way
    leaves the previous audit as it was. Its ``sources/`` (the cross-source audit) is kept; a
    folder holding other files is refused and left alone.
    """
    out = Path(out_dir) if out_dir else config.reports_dir() / "audit"
    record = audit_record(test, root)
    with replacing_folder(out, owns=AUDIT_FILES, carry=AUDIT_CARRY, what="`skinlesion data audit`") as tmp:
        pair_df.to_csv(tmp / "duplicates.csv", index=False)
        test.loc[~test["leaked"], ["path", "label"]].to_csv(tmp / "dedup_test.csv", index=False)
        write_json(tmp / AUDIT_RECORD, record)
    return out


def load_dedup_test(path: str | os.PathLike[str] | None = None) -> pd.DataFrame | None:
    """The de-duplicated test subset written by ``skinlesion data audit`` (None if absent)."""
    p = Path(path) if path else config.reports_dir() / "audit" / "dedup_test.csv"
    return pd.read_csv(p) if p.exists() else None


_warned_unrecorded: set[str] = set()


def audit_record_problem(record_file: str | os.PathLike[str], test_paths: Sequence[str],
                         root: str | os.PathLike[str]) -> str | None:
    """Why the audit recorded in ``record_file`` (an ``audit.json``) is not the audit of these test
    images under ``root`` (None when it is: every one of them is recorded with the same md5)."""
    record_file, root = Path(record_file), Path(root)
    try:
        record = read_json(record_file, DataError)
    except DataError as exc:
        return str(exc)
    audited = record.get("test_md5") if isinstance(record, dict) else None
    if not isinstance(audited, dict):
        return f"{config.display_path(record_file)} is not an audit record (no test_md5)"
    absent = [p for p in test_paths if p not in audited]
    changed = [p for p in test_paths if p in audited and audited[p] is not None and _md5(root / p) != audited[p]]
    if not absent and not changed:
        return None
    made_from = f" (made from {record['root']})" if record.get("root") else ""
    why = []
    if absent:
        why.append(f"{len(absent)} of the {len(test_paths)} test images here are not in it (e.g. {absent[0]})")
    if changed:
        why.append(f"{len(changed)} of the {len(test_paths)} test images here differ from the files it audited "
                   f"(e.g. {changed[0]})")
    return (f"{config.display_path(record_file.with_name('dedup_test.csv'))} is the duplicate audit of another "
            f"dataset{made_from}: " + "; ".join(why))


def dedup_subset(test: pd.DataFrame, root: str | os.PathLike[str],
                 path: str | os.PathLike[str] | None = None) -> pd.DataFrame | None:
    """The rows of ``test`` (a bundle's test split under ``root``: ``path``, ``label``) that the
    duplicate audit found clean, or None when there is no audit (or no usable one).

    The audit is applied only when it was made from these test images: every one of them must
    be in its ``audit.json`` with the same content (md5). Otherwise (an audit of another dataset,
    or of a changed copy) a de-duplicated subset would be silently wrong, so it is left out with
    a warning that says to re-run ``skinlesion data audit`` on this dataset; the official test
    split is still scored. An audit written before audit.json existed is used as before, by path,
    with a warning (once) that it could not be checked.
    """
    file = Path(path) if path else config.reports_dir() / "audit" / "dedup_test.csv"
    dedup = load_dedup_test(file)
    if dedup is None:
        return None
    record_file = file.with_name(AUDIT_RECORD)
    if record_file.is_file():
        problem = audit_record_problem(record_file, list(test["path"]), root)
        if problem:
            log.warning("%s. The de-duplicated test subset (test_dedup) is left out; re-run `skinlesion data audit "
                        "--data-dir %s` to write the audit of this dataset.", problem, root)
            return None
    clean = test[test["path"].isin(set(dedup["path"]))]
    if not len(clean):
        return None
    if not record_file.is_file() and str(file) not in _warned_unrecorded:
        _warned_unrecorded.add(str(file))
        log.warning("%s has no %s beside it (written by an older version), so it cannot be checked to be the "
                    "audit of these test images; used as before. Re-run `skinlesion data audit --data-dir %s` "
                    "to record it.", config.display_path(file), AUDIT_RECORD, root)
    return clean
