"""Grouped, leakage-free splits over one or several data sources.

Images that show the same lesion (HAM10000 ``lesion_id``, PAD-UFES-20 patient) or that are
exact / near duplicates of each other (:mod:`skinlesion.data.audit`) form one *group*: the
connected component of "same lesion" and "duplicate" links. A group never spans training and
an evaluation set:

* evaluation sets (official test splits, held-out sources) are kept whole, and any image on the
  training side that shares a group with one of them is moved to ``excluded`` (the reason
  says why): nothing the model learns from reappears in an evaluation set, and held-out sets
  stay the official sets, comparable with published numbers;
* where a set has no official validation split, a seeded validation carve-out is drawn by
  whole groups, stratified by source and label.

The split table (``splits.csv`` in a bundle) records ``source, image_id, path, label,
diagnosis, group, split, reason`` for every image.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from skinlesion.data.datasets import DataError

SPLIT_TABLE_COLUMNS = ["source", "image_id", "path", "label", "diagnosis", "group", "split", "reason"]
# Reason of a training-side image left out by ``drop_copies_from`` (reports count them apart).
COPY_REASON = "copy of a lesion another training source holds"


def duplicate_groups(records: pd.DataFrame, pairs: pd.DataFrame | None = None) -> np.ndarray:
    """Group id per record: connected components of same-``group`` and duplicate-pair links.

    ``pairs`` has integer columns ``a`` and ``b`` indexing ``records`` positionally.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(records)
    if n == 0:
        return np.zeros(0, dtype=int)
    own = pd.factorize(records["group"].astype(str))[0]
    first = pd.Series(np.arange(n)).groupby(own).transform("first").to_numpy()
    rows, cols = [np.arange(n)], [first]
    if pairs is not None and len(pairs):
        rows.append(pairs["a"].to_numpy(int))
        cols.append(pairs["b"].to_numpy(int))
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def grouped_carve_out(strata: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a ~``fraction`` validation share drawn by whole groups, stratified.

    ``strata`` is any per-row key (e.g. label, or source and label); a group belongs to the
    stratum most of its rows have. Groups are shuffled (seeded) within each stratum and taken
    until the stratum reaches its share, so balance and group integrity both hold.
    """
    if not 0.0 < fraction < 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5), got {fraction}")
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"stratum": pd.Series(strata).astype(str).to_numpy(), "group": groups})
    size = df.groupby("group").size()
    stratum = df.groupby("group")["stratum"].agg(lambda s: s.value_counts().index[0])
    chosen: list[object] = []
    for _, members in stratum.groupby(stratum):
        order = members.index.to_numpy()[rng.permutation(len(members))]
        taken = np.cumsum(size.loc[order].to_numpy())
        k = int(np.searchsorted(taken, fraction * taken[-1])) + 1
        chosen.extend(order[: min(k, len(order))])
    return df["group"].isin(set(chosen)).to_numpy()


def make_split_table(
    records: pd.DataFrame,
    pairs: pd.DataFrame | None = None,
    *,
    train_sources: list[str] | None = None,
    val_fraction: float = 0.15,
    seed: int = 42,
    drop_copies_from: Sequence[str] = (),
) -> pd.DataFrame:
    """Assign train / val / test / excluded to every record.

    Evaluation images are the official test splits of ``train_sources`` (default: every source
    in ``records``) and every image of the other (held-out) sources. They stay whole: a
    training-side image that shares a group with any evaluation image is ``excluded`` instead,
    so held-out sets remain the official sets and nothing the model learns from reappears in
    them. Official validation splits are kept (minus images that share a group with training);
    sources without one get a grouped validation carve-out, drawn jointly across sources and
    stratified by source and label.

    ``drop_copies_from`` names sources whose training-side images are ``excluded`` when a training
    source not named there holds the same lesion or a duplicate (the Kaggle set repackages HAM10000 and
    ISIC 2017 images: trained on together, those lesions would count twice, nearly all of them
    melanomas). It acts after the validation draw, so every other image keeps its split; a source
    named there that is not trained on (held out, in leave-one-source-out) is left as it is.
    """
    rec = records.reset_index(drop=True).copy()
    if rec.empty:
        raise DataError("no images to split")
    train_sources = list(dict.fromkeys(train_sources or rec["source"].tolist()))
    unknown = set(train_sources) - set(rec["source"])
    if unknown:
        raise DataError(f"training source(s) {sorted(unknown)} have no images")
    groups = np.array([f"g{g}" for g in duplicate_groups(rec, pairs)], dtype=object)
    rec["group"] = groups
    source = rec["source"].to_numpy()
    official = rec["split"].to_numpy()
    learn = np.isin(source, train_sources)
    split = np.full(len(rec), "test", dtype=object)
    reason = np.where(learn, "official test split",
                      np.char.add("held-out source (official ", np.char.add(official.astype(str), ")"))).astype(object)
    # A held-out source is scored on its official test split where it has one (else all of it);
    # the rest of it is neither learned from nor scored. Only scored images constrain training:
    # the Kaggle set, for one, contains nearly every HAM10000 and ISIC 2017 melanoma in its
    # training split, and excluding all of those would leave no melanoma to learn from.
    held_has_test = {s: bool(((source == s) & (official == "test")).any()) for s in set(source[~learn])}
    unused = ~learn & (official != "test") & np.array([held_has_test.get(s, False) for s in source])
    split[unused] = "unused"
    evaluation = (~learn & ~unused) | (learn & (official == "test"))
    pool = learn & ~evaluation
    # Whatever shares a lesion or a duplicate with an evaluation image never reaches training.
    clash = pool & np.isin(groups, list(set(groups[evaluation])))
    split[clash] = "excluded"
    reason[clash] = [f"same lesion or duplicate of an evaluation image (was {o})" for o in official[clash]]
    pool &= ~clash
    has_val = {s: bool(((source == s) & (official == "val")).any()) for s in train_sources}
    official_val = pool & (official == "val")
    split[official_val], reason[official_val] = "val", "official validation split"
    keep_train = pool & (official != "val") & np.array([has_val.get(s, False) for s in source])
    split[keep_train], reason[keep_train] = "train", "official training split"
    carve = pool & (official != "val") & ~keep_train
    if carve.any():
        idx = np.flatnonzero(carve)
        strata = np.char.add(source[idx].astype(str), rec["label"].to_numpy()[idx].astype(str))
        val = grouped_carve_out(strata, groups[idx], val_fraction, seed)
        split[idx[val]], reason[idx[val]] = "val", f"grouped validation carve-out ({val_fraction:.0%})"
        split[idx[~val]], reason[idx[~val]] = "train", "training"
    if drop_copies_from:
        # Before the validation clash below: a copy in training whose original is an official
        # validation image goes, and the original stays in validation (not the other way round).
        side = np.isin(split, ["train", "val"])
        derived = np.isin(source, list(drop_copies_from))
        copy = side & derived & np.isin(groups, list(set(groups[side & ~derived])))
        reason[copy] = [f"{COPY_REASON} (was {s})" for s in split[copy]]
        split[copy] = "excluded"
    # An official validation image that shares a group with training is dropped (val is for selection).
    clash = (split == "val") & np.isin(groups, list(set(groups[split == "train"])))
    split[clash], reason[clash] = "excluded", "same lesion or duplicate of a training image (was val)"
    rec["split"], rec["reason"] = split, reason
    y = rec.loc[rec["split"] == "train", "label"]
    if y.nunique() < 2:
        hint = " (--drop-copies-from left out the copies of other sources' lesions)" if drop_copies_from else ""
        raise DataError(f"the train split has {y.nunique()} class(es) after grouping{hint}; both classes are needed")
    return rec[SPLIT_TABLE_COLUMNS]


def check_no_leak(table: pd.DataFrame) -> None:
    """Raise if any group spans training and an evaluation split (used by tests and on load)."""
    seen = table[~table["split"].isin(["excluded", "unused"])].groupby("group")["split"].agg(lambda s: set(s))
    bad = seen[seen.map(lambda s: "train" in s and len(s) > 1)]
    if len(bad):
        raise DataError(f"{len(bad)} group(s) span training and evaluation splits, e.g. {bad.index[0]}")
