"""Do pooled features from lower layers transfer better to a source the head never saw? A LOSO pilot.

The default head reads only Lite0's last activation (1280 channels, global average pool): the
most ImageNet-specific layer. Lower stages describe colour and texture, which may travel better
between dermatoscopes (or worse: they also see the device). This pilot computes, in one backbone
pass per view (id, fh), the global average pool of the outputs of several stages and the top,
caches them, then for each held-out source fits a logistic regression on the other sources'
training rows (both views, class-balanced weights, standardised features, C picked on the
in-source validation AUC) and prints the held-out ROC AUC (mean probability over id and fh) of
each feature set. Splits are the LOSO ones of ``skinlesion generalise``; the scores are for
comparing feature sets with each other here, not with the table's rows (a different head).
``--transforms`` instead fits the top features alone after each per-image transform named
(``sqrt``, ``l2``, ``sqrt+l2``, ``log1p``; ``none`` is the plain features): does taking the
image's overall activation level out of its features make a device matter less?
``--weightings`` fits the top features under other training weights: within a class, a diagnosis
group (per source; the Kaggle set has one per class) of n images weighs n^(1 - a) in all, a = 0.5
(``dx-sqrt``) or 1 (``dx-full``, every diagnosis equal), in both classes or only among benign lesions
(``-benign``); ``class`` is the plain class balance. Do the rarer benign diagnoses (keratoses,
dermatofibromas) that a nevus-dominated benign class under-weights cost the held-out specificity?
``--projections`` fits the top features after removing, from every image (training and held out
alike, so nothing of the held-out source is used), linear directions that tell the training sources
apart: ``src-mean`` the within-class differences of the sources' mean features (the collection
shortcut's simplest form), ``inlpK`` K rounds of iterative nullspace projection (Ravfogel et al.,
2020: fit a linear source classifier with every (source, class) group weighted equally, so it
cannot use the class, project its direction out, repeat); ``none`` is the plain features. Does a
head that cannot see which training collection an image looks like do better on a new one?
``--poolings`` fits the top activation (7 x 7 x 1280) pooled over other parts of the image than the
plain global average: ``centre5`` / ``centre3`` the mean of the central 5 x 5 / 3 x 3 cells (the outer
ring or two, where vignettes, rulers and field stops lie, left out), ``gauss`` a centred Gaussian
weighting (sigma = 1/4 side, the Grad-CAM baseline that beat every map), ``gem3`` a generalised mean
(p = 3, closer to the strongest cells), ``max`` the largest cell, ``gap`` the plain pool; and
``gap+ring`` the plain pool beside the outer ring's mean. Does a head that reads the lesion's centre
of the frame rather than the whole frame transfer better? Its own cache (``--pool-cache``).
``--objectives`` fits the top features with another training objective than the plain (class-balanced)
average loss: ``gdro`` is group DRO (Sagawa et al., 2020) over the four (training source, class)
groups: the head minimises the worst group's mean training loss (a soft maximum, temperature 0.01;
``gdro-soft`` 0.1, between that and the group-balanced mean); ``erm`` is the plain fit, always run
first (C is picked on it and kept for the others, so the objective is the only difference). Does a head that must fit every training collection equally well fit a new one better?
``dx`` is a softmax head over diagnosis groups (nevus, keratosis, other benign, melanoma, basal cell
carcinoma, actinic keratosis) instead of one benign/malignant direction; its probability of malignancy is
the sum over the malignant groups. The Kaggle set gives only benign or malignant, so its rows count as
partial labels (the loss is minus the log of the summed probability of the groups of their class).
One direction has to separate melanoma from nevi and from keratoses at once; do several (a piecewise
linear boundary on the same features) separate the keratoses that every held-out source confuses?
``--c-selection`` fits the top features at every C of a wider grid (``C_GRID_WIDE``, down to 1e-5:
the in-source rule picks the old grid's floor on every fold) and picks C two ways: ``insource`` the
in-source validation AUC (as everywhere else), ``source-out`` the mean AUC over the training sources
of a head fitted on the other training source (a nested leave-one-source-out: nothing of the held-out
source is used). It also prints the held-out AUC at every C, for reading, not for picking. Does a
rule that rewards transfer between the training collections pick a head that transfers to a new one?
``--extra-views`` trains the top features' head on the id and fh views and, beside them, on other views
of ``skinlesion.models.features`` (their features in their own cache, ``--extra-cache``), scored on the id
and fh views as always; it first prints how each source's red/blue balance goes with the label. With the
colour views (``cw,cc``): does a head shown every training image under another white balance stop
reading a colour cue that one collection's classes carry and another's do not?
``--site-norms`` normalises the top features per site before the head: each training source by its own
mean (``centre``) or mean and per-feature standard deviation (``standardise``), computed on its training
images (``-bal``: the two classes weighed equally), and the held-out source by its own statistics from
the images scored, unlabelled (transductive; a new site would take them from its first unlabelled
images, and with ``-bal`` its malignant share, unknown there, moves its centre as the training
sources' does not). It is the
consistent form of ``tools/label_free_adaptation.py``, whose head was trained on pooled features. Does
removing each device's offset and spread from the features leave what transfers, and does the
threshold frozen on the training sources' validation images then keep its sensitivity and give a
better specificity on the new site (printed for every mode)?
It also prints, per held-out source, the AUC of its malignant images against each benign diagnosis.

    python tools/multiscale_pilot.py --cache data/cache/multiscale_pilot.npz
    python tools/multiscale_pilot.py --transforms none,sqrt,l2,sqrt+l2,log1p
    python tools/multiscale_pilot.py --weightings class,dx-sqrt,dx-full,dx-sqrt-benign,dx-full-benign
    python tools/multiscale_pilot.py --projections none,src-mean,inlp2,inlp8,inlp32
    python tools/multiscale_pilot.py --poolings gap,centre5,centre3,gauss,gem3,max,gap+ring
    python tools/multiscale_pilot.py --objectives erm,gdro,gdro-soft
    python tools/multiscale_pilot.py --objectives erm,dx
    python tools/multiscale_pilot.py --c-selection
    python tools/multiscale_pilot.py --extra-views cw,cc
    python tools/multiscale_pilot.py --site-norms none,centre,centre-bal,standardise,standardise-bal
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCES = ("kaggle", "ham10000", "isic2017")
VIEWS = ("id", "fh")
# Lite0 stage outputs (stride 8, 16, 32) and the top activation: name -> channels.
LAYERS = {"lite_block04_add": 40, "lite_block10_add": 112, "lite_block14_add": 192, "lite_top_activation": 1280}
FEATURE_SETS = {
    "top": ("lite_top_activation",),
    "top+b14": ("lite_top_activation", "lite_block14_add"),
    "top+b14+b10": ("lite_top_activation", "lite_block14_add", "lite_block10_add"),
    "top+b14+b10+b04": tuple(LAYERS),
    "b14+b10": ("lite_block14_add", "lite_block10_add"),
}
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)
C_GRID_WIDE = (1e-5, 3e-5, 1e-4, 3e-4, *C_GRID)


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# Per-image feature transforms (features are post-ReLU pools, >= 0): name -> function.
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"none": lambda x: x, "sqrt": np.sqrt, "l2": _l2, "sqrt+l2": lambda x: _l2(np.sqrt(x)), "log1p": np.log1p}


def _folds():
    from skinlesion.evaluation.generalise import held_out_frame
    from skinlesion.training.train import TrainConfig, load_training_data

    for held in SOURCES:
        cfg = TrainConfig(sources=tuple(s for s in SOURCES if s != held), holdout=(held,), progress=False)
        data = load_training_data(cfg)
        yield held, data, data.part("train"), data.part("val"), held_out_frame(data.table, held)


def fold_arrays(files: np.ndarray, feats: np.ndarray):
    """Per LOSO fold: (held-out source, the fold's data, its (train, val, held-out) frames, the rows of
    ``feats`` (one per entry of ``files``; (images, views, features)) of those three parts, and their labels)."""
    row = {str(f): i for i, f in enumerate(files)}
    for held, data, tr, va, te in _folds():
        parts = (tr, va, te)
        yield (held, data, parts, tuple(feats[[row[str(f)] for f in data.files(p)]] for p in parts),
               tuple(p["label"].to_numpy() for p in parts))


def view_rows(x: np.ndarray) -> np.ndarray:
    """(images, views, features) -> one row per image and view, image-major: the rows of image i are
    i x views ... i x views + views - 1, as ``np.repeat`` of a per-image array lines up with them."""
    return x.reshape(-1, x.shape[-1])


def _extract(cache: Path, outputs: Callable, width: tuple[int, ...], post: Callable = np.asarray,
             views: tuple[str, ...] = VIEWS) -> None:
    """Features of every image any fold reads, for each of ``views``, into ``cache``: the Lite0 backbone's
    ``outputs(backbone)`` per batch, through ``post``, ``width`` values per image and view; beside them
    each image's mean R, G, B at the network's input size."""
    import keras

    from skinlesion.models import backbones
    from skinlesion.models.features import apply_view, iter_image_batches

    files = sorted({str(f) for _h, data, tr, va, te in _folds() for part in (tr, va, te) for f in data.files(part)})
    backbone = backbones.build_feature_extractor("efficientnet_lite0", "imagenet")
    model = keras.Model(backbone.input, outputs(backbone))
    out = np.zeros((len(files), len(views), *width), np.float32)
    rgb = np.zeros((len(files), 3), np.float32)
    t0 = time.perf_counter()
    for batch, idx, _keys, errors in iter_image_batches(files, int(backbone.input_shape[1])):
        if errors:
            raise SystemExit(f"unreadable images: {errors}")
        rgb[idx] = batch.mean(axis=(1, 2))
        for v, view in enumerate(views):
            out[idx, v] = post(model.predict_on_batch(apply_view(batch, view)))
    print(f"features of {len(files)} images x {len(views)} views in {time.perf_counter() - t0:.0f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, files=np.array(files), features=out, views=np.array(views), rgb=rgb)


def extract(cache: Path, views: tuple[str, ...] = VIEWS) -> None:
    """Pooled stage features (``LAYERS``, concatenated) of ``views`` into ``cache``."""
    import keras

    _extract(cache, lambda backbone: keras.layers.Concatenate()(
        [keras.layers.GlobalAveragePooling2D()(backbone.get_layer(n).output) for n in LAYERS]), (sum(LAYERS.values()),),
        views=views)


def _pool_weights(side: int) -> dict[str, np.ndarray]:
    """Spatial weights (side x side, summing to 1) of the weighted-mean poolings."""
    r = np.abs(np.arange(side) - (side - 1) / 2)
    ring = np.maximum.outer(r, r)  # Chebyshev distance from the centre, in cells
    d2 = np.add.outer(r**2, r**2)
    masks = {"gap": np.ones((side, side)), "centre5": ring <= (side - 1) / 2 - 1, "centre3": ring <= (side - 1) / 2 - 2,
             "ring": ring > (side - 1) / 2 - 1, "gauss": np.exp(-d2 / (2 * (side / 4) ** 2))}
    return {k: (m / m.sum()).astype(np.float32) for k, m in masks.items()}


POOL_STORED = ("gap", "centre5", "centre3", "ring", "gauss", "gem3", "max")
POOLINGS = {"gap": ("gap",), "centre5": ("centre5",), "centre3": ("centre3",), "gauss": ("gauss",),
            "gem3": ("gem3",), "max": ("max",), "gap+ring": ("gap", "ring")}


def pool(fmap: np.ndarray) -> np.ndarray:
    """(n, side, side, c) post-activation maps -> (n, len(POOL_STORED), c) pooled features."""
    w = _pool_weights(fmap.shape[1])
    out = [np.einsum("nhwc,hw->nc", fmap, w[k]) if k in w else
           np.cbrt(np.mean(np.maximum(fmap, 0) ** 3, axis=(1, 2))) if k == "gem3" else fmap.max(axis=(1, 2))
           for k in POOL_STORED]
    return np.stack(out, axis=1)


def extract_pooled(cache: Path) -> None:
    """The top activation under every pooling of ``POOL_STORED`` into ``cache``."""
    _extract(cache, lambda backbone: backbone.get_layer("lite_top_activation").output,
             (len(POOL_STORED), LAYERS["lite_top_activation"]), lambda fmap: pool(np.asarray(fmap)))


def _columns(names: tuple[str, ...], blocks: dict[str, int] = LAYERS) -> np.ndarray:
    """Columns of the named ``blocks`` (name -> width, in cache order) in a cache row."""
    starts = np.cumsum([0, *blocks.values()])
    return np.concatenate([np.arange(starts[i], starts[i + 1]) for i, n in enumerate(blocks) if n in names])


def diagnosis_weights(frame, alpha: float, classes: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """Per-image weights: within each class in ``classes`` a (source, diagnosis) group of n images
    weighs n^(1 - alpha) in all; both classes weigh the same; the mean weight is 1."""
    group = frame["source"] + ":" + frame["diagnosis"].astype(str)
    n = group.map(group.value_counts()).to_numpy(dtype=float)
    label = frame["label"].to_numpy()
    w = np.where(np.isin(label, classes), n ** -alpha, 1.0)
    for y in (0, 1):
        w[label == y] /= w[label == y].sum()
    return w / w.mean()


WEIGHTINGS = {
    "class": None,  # skinlesion.training.train.sample_weights(frame, "class")
    "dx-sqrt": (0.5, (0, 1)), "dx-full": (1.0, (0, 1)), "dx-sqrt-benign": (0.5, (0,)), "dx-full-benign": (1.0, (0,)),
}


def _orthonormal(directions: np.ndarray) -> np.ndarray:
    """Orthonormal basis (rows) of the span of ``directions`` (rows), near-zero ones dropped."""
    _, sv, vt = np.linalg.svd(directions, full_matrices=False)
    return vt[sv > 1e-6 * sv.max()]


def source_directions(x: np.ndarray, frame, method: str) -> np.ndarray:
    """Orthonormal directions (rows) of standardised features ``x`` that separate ``frame``'s sources.

    No library does iterative nullspace projection on plain arrays, and it is a few lines here."""
    from sklearn.linear_model import LogisticRegression

    source = frame["source"].to_numpy()
    label = frame["label"].to_numpy()
    if method == "src-mean":
        diffs = []
        for y in (0, 1):
            means = [x[(label == y) & (source == s)].mean(axis=0) for s in np.unique(source)
                     if ((label == y) & (source == s)).any()]
            diffs += [m - means[0] for m in means[1:]]
        return _orthonormal(np.array(diffs)) if diffs else np.zeros((0, x.shape[1]))
    rounds = int(method.removeprefix("inlp"))
    group = frame["source"].astype(str) + ":" + frame["label"].astype(str)
    w = 1.0 / group.map(group.value_counts()).to_numpy(dtype=float)
    basis = np.zeros((0, x.shape[1]))
    for _ in range(rounds):
        xp = x - (x @ basis.T) @ basis
        clf = LogisticRegression(C=0.01, max_iter=2000).fit(xp, source, sample_weight=w / w.mean())
        basis = _orthonormal(np.vstack([basis, clf.coef_]))
    return basis


PROJECTIONS = ("none", "src-mean", "inlp1", "inlp2", "inlp4", "inlp8", "inlp16", "inlp32")
# name -> temperature of the soft maximum over group losses (None: the plain fit). Small: close to the
# worst group alone; large: tends to the group-balanced mean (the source balance tried already).
OBJECTIVES: dict[str, float | None] = {"erm": None, "gdro": 0.01, "gdro-soft": 0.1, "dx": None}
# Diagnosis groups of the ``dx`` head (benign first) and each source's diagnoses in them; a diagnosis
# not listed (the Kaggle set's "benign" and "malignant") may be any group of its class.
DX_GROUPS = (("nevus", 0), ("keratosis", 0), ("other-benign", 0), ("melanoma", 1), ("bcc", 1), ("akiec", 1))
DX_OF = {"nv": "nevus", "nevus": "nevus", "bkl": "keratosis", "seborrheic_keratosis": "keratosis",
         "vasc": "other-benign", "df": "other-benign", "mel": "melanoma", "melanoma": "melanoma", "bcc": "bcc",
         "akiec": "akiec"}


def allowed_groups(diagnosis: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(n, len(DX_GROUPS)) bool: the diagnosis groups each row may belong to (one where its diagnosis
    names one, else every group of its class)."""
    names = [g for g, _ in DX_GROUPS]
    cls = np.array([c for _, c in DX_GROUPS])
    out = cls[None, :] == np.asarray(label)[:, None]
    for i, d in enumerate(diagnosis):
        if str(d) in DX_OF:
            out[i] = np.array(names) == DX_OF[str(d)]
    return out


@dataclass
class SoftmaxHead:
    """A softmax head over groups; ``predict_proba`` gives (benign, malignant) as the summed group
    probabilities of each class."""
    coef: np.ndarray  # (features, groups)
    intercept: np.ndarray  # (groups,)
    malignant: np.ndarray  # (groups,) bool

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        from scipy.special import softmax

        p = softmax(x @ self.coef + self.intercept, axis=1)[:, self.malignant].sum(axis=1)
        return np.stack([1 - p, p], axis=1)


def fit_partial_softmax(x: np.ndarray, allowed: np.ndarray, malignant: np.ndarray, weight: np.ndarray,
                        c: float) -> SoftmaxHead:
    """A softmax regression fitted on partial labels: row i's loss is -log of the summed probability
    of the groups ``allowed[i]``, weighted by ``weight[i]``, with sklearn's penalty scale (C x weighted
    loss + |W|^2 / 2, intercepts free). Groups no row is confined to alone are dropped (a fold without
    HAM10000 has no basal cell carcinoma). With partial labels the loss is not convex (a difference of
    log-sum-exps), so L-BFGS from zero finds a local optimum. scikit-learn has no partial-label softmax; the loss and its
    gradient are a few lines, scipy does the rest."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp, softmax

    keep = (allowed & (allowed.sum(axis=1, keepdims=True) == 1)).any(axis=0)
    allowed, malignant = allowed[:, keep], malignant[keep]
    n, k = x.shape[1], allowed.shape[1]
    scale = c * weight

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: n * k].reshape(n, k), theta[n * k:]
        z = x @ w + b
        masked = np.where(allowed, z, -np.inf)
        loss = logsumexp(z, axis=1) - logsumexp(masked, axis=1)
        dz = scale[:, None] * (softmax(z, axis=1) - softmax(masked, axis=1))
        return float(scale @ loss + 0.5 * np.sum(w * w)), np.concatenate([(x.T @ dz + w).ravel(), dz.sum(axis=0)])

    res = minimize(objective, np.zeros(n * k + k), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return SoftmaxHead(res.x[: n * k].reshape(n, k), res.x[n * k:], malignant)


@dataclass
class LinearHead:
    """A fitted logistic-regression head with sklearn's ``predict_proba`` shape."""
    coef: np.ndarray
    intercept: float

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        p = expit(x @ self.coef + self.intercept)
        return np.stack([1 - p, p], axis=1)


def fit_group_dro(x: np.ndarray, y: np.ndarray, group: np.ndarray, c: float, temperature: float):
    """A logistic regression fitted by group DRO (Sagawa et al., 2020): it minimises the (soft)
    maximum over groups of the group's mean log loss, with sklearn's penalty scale (C x n x loss
    + |w|^2 / 2). The problem is convex, so L-BFGS solves it exactly instead of the paper's
    stochastic updates. Returns the head and the groups' weights at the optimum (softmax of the
    losses / temperature). No maintained package fits group DRO on plain arrays; the objective
    and its gradient are a few lines here, scipy does the rest."""
    from scipy.optimize import minimize
    from scipy.special import expit, logsumexp, softmax

    names, index = np.unique(group, return_inverse=True)
    count = np.bincount(index)
    sign = np.where(y == 1, -1.0, 1.0)  # log loss of a row = log(1 + exp(sign * z))
    scale = c * len(y)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        s = sign * (x @ w + b)
        losses = np.bincount(index, np.logaddexp(0.0, s)) / count
        q = softmax(losses / temperature)
        dz = scale * (q / count)[index] * expit(s) * sign
        value = scale * temperature * logsumexp(losses / temperature) + 0.5 * w @ w
        return value, np.append(x.T @ dz + w, dz.sum())

    res = minimize(objective, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    w, b = res.x[:-1], float(res.x[-1])
    losses = np.bincount(index, np.logaddexp(0.0, sign * (x @ w + b))) / count
    return LinearHead(w, b), {str(g): round(float(v), 3) for g, v in zip(names, softmax(losses / temperature))}


def source_out_auc(x: np.ndarray, y: np.ndarray, w: np.ndarray, source: np.ndarray, c: float,
                   views: int = 1) -> float:
    """Mean over the sources in ``source`` of the ROC AUC, on that source's images, of a class-weighted
    logistic regression (C = ``c``, standardised on its own training rows) fitted on the other sources'
    rows. Rows come in groups of ``views`` per image (image-major); an image's score is its views' mean."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    aucs = []
    for s in np.unique(source):
        fit, score = source != s, source == s
        scaler = StandardScaler().fit(x[fit])
        clf = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x[fit]), y[fit], sample_weight=w[fit])
        p = clf.predict_proba(scaler.transform(x[score]))[:, 1].reshape(-1, views).mean(axis=1)
        aucs.append(roc_auc_score(y[score][::views], p))
    return float(np.mean(aucs))


def fit_c_selection(cache: Path) -> None:
    """The top features' logistic regression at every C of ``C_GRID_WIDE``, C picked on the in-source
    validation AUC and on the nested source-out AUC; prints every C's scores and each rule's pick."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from skinlesion.training.train import sample_weights

    z = np.load(cache)
    for held, _data, (tr, _va, _te), (x_tr, x_va, x_te), (y_tr, y_va, y_te) in fold_arrays(
            z["files"], z["features"][:, :, _columns(FEATURE_SETS["top"])]):
        raw_tr = view_rows(x_tr)  # both views as training rows
        y_rows, w_rows = np.repeat(y_tr, len(VIEWS)), np.repeat(sample_weights(tr, "class"), len(VIEWS))
        src_rows = np.repeat(tr["source"].astype(str).to_numpy(), len(VIEWS))
        scaler = StandardScaler().fit(raw_tr)
        scores = {}
        for c in C_GRID_WIDE:
            t0 = time.perf_counter()
            clf = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(raw_tr), y_rows, sample_weight=w_rows)
            va_auc, te_auc = (roc_auc_score(yy, np.mean([clf.predict_proba(scaler.transform(xx[:, v]))[:, 1]
                                                        for v in range(len(VIEWS))], axis=0))
                              for xx, yy in ((x_va, y_va), (x_te, y_te)))
            so_auc = source_out_auc(raw_tr, y_rows, w_rows, src_rows, c, len(VIEWS))
            scores[c] = (va_auc, so_auc, te_auc)
            print(f"held out {held:9s} C={c:<7g} in-source val AUC {va_auc:.4f}, source-out AUC {so_auc:.4f}, "
                  f"held-out AUC {te_auc:.4f} (for reading) [{time.perf_counter() - t0:.0f} s]", flush=True)
        for rule, k in (("insource", 0), ("source-out", 1)):
            c = max(scores, key=lambda c: scores[c][k])
            print(f"held out {held:9s} rule {rule:10s} picks C={c:g}: held-out AUC {scores[c][2]:.4f}", flush=True)


def fit_pick_c(x: np.ndarray, y: np.ndarray, w: np.ndarray, views_va: list[np.ndarray], y_va: np.ndarray):
    """A class-weighted logistic regression on rows ``x`` at each C of ``C_GRID``; returns (validation AUC,
    C, head) of the one whose mean probability over the validation views ``views_va`` ranks ``y_va`` best."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    best = (-1.0, 0.0, None)
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000).fit(x, y, sample_weight=w)
        auc_va = roc_auc_score(y_va, np.mean([clf.predict_proba(v)[:, 1] for v in views_va], axis=0))
        if auc_va > best[0]:
            best = (auc_va, c, clf)
    return best


SITE_NORMS = ("none", "centre", "centre-bal", "standardise", "standardise-bal")


def site_stats(x: np.ndarray, label: np.ndarray | None, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Location and scale of one site's features ``x`` (rows) under ``mode``: its mean (``centre``), and
    each feature's standard deviation too (``standardise``); a site harmonisation, ComBat's location and
    scale step without its empirical-Bayes pooling. ``-bal`` modes weigh the two classes equally when
    ``label`` is given (a training source), so a source's malignant share does not move its centre; a
    new site has no labels and gets its plain statistics. ``none``: zero and one. scikit-learn scales
    per feature, not per group; these few lines are the group part."""
    zero, one = np.zeros(x.shape[1]), np.ones(x.shape[1])
    if mode == "none":
        return zero, one
    w = np.ones(len(x))
    if mode.endswith("-bal") and label is not None:
        w = np.where(label == 1, 0.5 / max((label == 1).sum(), 1), 0.5 / max((label == 0).sum(), 1))
    mean = np.average(x, axis=0, weights=w)
    if not mode.startswith("standardise"):
        return mean, one
    return mean, np.maximum(np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w)), 1e-6)


def by_site(x: np.ndarray, source: np.ndarray, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Rows of ``x`` shifted and scaled by their own ``source``'s (mean, scale) from ``stats``."""
    out = np.empty_like(x)
    for s in np.unique(source):
        mean, scale = stats[str(s)]
        out[source == s] = (x[source == s] - mean) / scale
    return out


def fit_site_norm(cache: Path, modes: list[str]) -> None:
    """The top features' logistic regression after each site normalisation of ``modes``: training and
    validation images by their own source's statistics (from its training images' plain view), the
    held-out source by its own, taken label-free from the very images scored (its official test split
    where it has one): transductive, the most a site could get from its unlabelled images; then one
    standardisation and C picked on the in-source validation AUC, as everywhere here."""
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from skinlesion.metrics.calibration import choose_threshold_for_sensitivity
    from skinlesion.training.train import sample_weights

    z = np.load(cache)
    for held, _data, (tr, va, te), (x_tr, x_va, x_te), (y_tr, y_va, y_te) in fold_arrays(
            z["files"], z["features"][:, :, _columns(FEATURE_SETS["top"])]):
        src_tr, src_va = (p["source"].astype(str).to_numpy() for p in (tr, va))
        src_te = np.full(len(te), held)
        for mode in modes:
            stats = {s: site_stats(x_tr[src_tr == s, 0], y_tr[src_tr == s], mode) for s in np.unique(src_tr)}
            stats[held] = site_stats(x_te[:, 0], None, mode)
            views_tr, views_va, views_te = ([by_site(xx[:, v], src, stats) for v in range(len(VIEWS))]
                                            for xx, src in ((x_tr, src_tr), (x_va, src_va), (x_te, src_te)))
            rows = view_rows(np.stack(views_tr, axis=1))
            scaler = StandardScaler().fit(rows)
            auc_va, c, clf = fit_pick_c(scaler.transform(rows), np.repeat(y_tr, len(VIEWS)),
                                        np.repeat(sample_weights(tr, "class"), len(VIEWS)),
                                        [scaler.transform(v) for v in views_va], y_va)
            p_va, p_te = (np.mean([clf.predict_proba(scaler.transform(v))[:, 1] for v in vs], axis=0)
                          for vs in (views_va, views_te))
            # The served rule: the threshold for 95 % sensitivity on the in-source validation images,
            # frozen and applied to the new site (whose features the site normalisation has moved).
            t = choose_threshold_for_sensitivity(y_va, p_va, 0.95)
            sens, spec = (p_te[y_te == 1] >= t).mean(), (p_te[y_te == 0] < t).mean()
            print(f"held out {held:9s} site norm {mode:15s} (C={c:g}): held-out AUC {roc_auc_score(y_te, p_te):.4f}, "
                  f"sensitivity {sens:.2f} / specificity {spec:.2f} at the frozen threshold, "
                  f"in-source val AUC {auc_va:.4f}{_per_diagnosis(y_te, p_te, te['diagnosis'].astype(str).to_numpy())}",
                  flush=True)


TRAIN_DEDUPS = ("none", "kaggle-copies")


def cross_source_copies(frame) -> np.ndarray:
    """Bool per row of ``frame``: a Kaggle image whose group (lesion or duplicate cluster) also has an
    image of another source in ``frame``: the same lesion counted twice, once under each source."""
    other = frame.loc[frame["source"] != "kaggle", "group"]
    return ((frame["source"] == "kaggle") & frame["group"].isin(set(other))).to_numpy()


def fit_train_dedup(cache: Path, modes: list[str]) -> None:
    """The top features' logistic regression on all training images (``none``) or without the Kaggle copies
    of the other training source's images (``kaggle-copies``, :func:`cross_source_copies`); C picked on the
    in-source validation AUC; each mode after the first is compared with it on the same held-out images
    (paired bootstrap CI and DeLong p of the AUC difference)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from skinlesion.metrics.stats import paired_auc_test
    from skinlesion.training.train import sample_weights

    z = np.load(cache)
    for held, _data, (tr, _va, te), (x_tr, x_va, x_te), (y_tr, y_va, y_te) in fold_arrays(
            z["files"], z["features"][:, :, _columns(FEATURE_SETS["top"])]):
        first = None
        for mode in modes:
            keep = ~cross_source_copies(tr) if mode == "kaggle-copies" else np.ones(len(tr), bool)
            sub = tr[keep]
            counts = sub.groupby(["source", "label"]).size().to_dict()
            rows = view_rows(x_tr[keep])
            scaler = StandardScaler().fit(rows)
            auc_va, c, clf = fit_pick_c(scaler.transform(rows), np.repeat(y_tr[keep], len(VIEWS)),
                                        np.repeat(sample_weights(sub, "class"), len(VIEWS)),
                                        [scaler.transform(x_va[:, v]) for v in range(len(VIEWS))], y_va)
            p_te = np.mean([clf.predict_proba(scaler.transform(x_te[:, v]))[:, 1] for v in range(len(VIEWS))], axis=0)
            print(f"held out {held:9s} training {mode:13s} ({len(sub)} images, {counts}; C={c:g}): held-out AUC "
                  f"{roc_auc_score(y_te, p_te):.4f}, in-source val AUC {auc_va:.4f}"
                  f"{_per_diagnosis(y_te, p_te, te['diagnosis'].astype(str).to_numpy())}", flush=True)
            if first is None:
                first = p_te
            else:
                t = paired_auc_test(y_te, p_te, first)
                print(f"held out {held:9s} {mode} - {modes[0]}: {t['diff']:+.4f} [{t['ci_low']:+.4f}, "
                      f"{t['ci_high']:+.4f}], DeLong p = {t['p_value']:.3g}", flush=True)


def fit_extra_views(cache: Path, extra_cache: Path, extra: tuple[str, ...]) -> None:
    """The top features' logistic regression trained on the id and fh views, then on those and the
    ``extra`` views (their features in ``extra_cache``), scored on the id and fh views' mean; C picked on
    the in-source validation AUC. First, per source, how the images' red/blue balance goes with the label."""
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from skinlesion.training.train import sample_weights

    z, e = np.load(cache), np.load(extra_cache)
    if tuple(e["views"]) != extra or not np.array_equal(z["files"], e["files"]):
        raise SystemExit(f"{extra_cache} holds views {list(e['views'])} (in that order) of the files it was made "
                         f"for; name them so, or delete it to extract {list(extra)}")
    row = {f: i for i, f in enumerate(z["files"])}
    cols = _columns(FEATURE_SETS["top"])
    feats = np.concatenate([z["features"][:, :, cols], e["features"][:, :, cols]], axis=1)
    log_rb = np.log(np.maximum(e["rgb"][:, 0], 1) / np.maximum(e["rgb"][:, 2], 1))
    for held, data, (tr, _va, te), (x_tr, x_va, x_te), (y_tr, y_va, y_te) in fold_arrays(z["files"], feats):
        if held == SOURCES[0]:  # once: every source's images appear in the first fold's table
            for source, part in data.table.groupby("source"):  # each source's images as it ships them
                keep = [str(f) in row for f in data.files(part)]
                part, r = part[keep], log_rb[[row[str(f)] for f in data.files(part[keep])]]
                y = part["label"].to_numpy()
                print(f"{source:9s} log(red/blue) benign {r[y == 0].mean():.3f} (SD {r[y == 0].std():.3f}), "
                      f"malignant {r[y == 1].mean():.3f} (SD {r[y == 1].std():.3f}); AUC of red/blue for "
                      f"malignancy {roc_auc_score(y, r):.3f} (n = {len(y)})", flush=True)
        for name, train_views in (("id,fh", 2), ("id,fh," + ",".join(extra), 2 + len(extra))):
            rows = view_rows(x_tr[:, :train_views])
            scaler = StandardScaler().fit(rows)
            views_va, views_te = ([scaler.transform(xx[:, v]) for v in range(len(VIEWS))] for xx in (x_va, x_te))
            auc_va, c, clf = fit_pick_c(scaler.transform(rows), np.repeat(y_tr, train_views),
                                        np.repeat(sample_weights(tr, "class"), train_views), views_va, y_va)
            p_te = np.mean([clf.predict_proba(v)[:, 1] for v in views_te], axis=0)
            print(f"held out {held:9s} trained on {name:14s} (C={c:g}): held-out AUC {roc_auc_score(y_te, p_te):.4f}, "
                  f"in-source val AUC {auc_va:.4f}{_per_diagnosis(y_te, p_te, te['diagnosis'].astype(str).to_numpy())}",
                  flush=True)


def _per_diagnosis(y, p, diagnosis) -> str:
    """AUC of the malignant images against each benign diagnosis (only where there are several)."""
    from sklearn.metrics import roc_auc_score

    benign = sorted(set(diagnosis[y == 0]))
    if len(benign) < 2:
        return ""
    return "; malignant vs " + ", ".join(
        f"{d} {roc_auc_score(y[m], p[m]):.4f}" for d in benign for m in [(y == 1) | (diagnosis == d)])


def fit_all(cache: Path, transforms: list[str] | None = None, weightings: list[str] | None = None,
            projections: list[str] | None = None, poolings: list[str] | None = None,
            objectives: list[str] | None = None) -> None:
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from skinlesion.training.train import sample_weights

    z = np.load(cache)
    feats = z["features"]
    feats = feats.reshape(*feats.shape[:2], -1)  # pooled cache: (n, views, poolings x channels)
    for held, _data, (tr, _va, te), parts, (y_tr, y_va, y_te) in fold_arrays(z["files"], feats):
        x = dict(zip(("tr", "va", "te"), parts))
        tr_rows = tr.iloc[np.repeat(np.arange(len(tr)), len(VIEWS))]  # one per training view, in x_tr's order
        runs = ([(name, "top", TRANSFORMS[name], "class", "none") for name in transforms] if transforms else
                [(name, "top", TRANSFORMS["none"], name, "none") for name in weightings] if weightings else
                [(name, "top", TRANSFORMS["none"], "class", name) for name in projections] if projections else
                [(name, name, TRANSFORMS["none"], "class", "none") for name in poolings] if poolings else
                [(name, "top", TRANSFORMS["none"], "class", "none") for name in objectives] if objectives else
                [(name, name, TRANSFORMS["none"], "class", "none") for name in FEATURE_SETS])
        c_erm = C_GRID[0]  # set by the erm run, which comes first
        for set_name, layers_name, transform, weighting, projection in runs:
            spec = WEIGHTINGS[weighting]
            w_tr = sample_weights(tr, "class") if spec is None else diagnosis_weights(tr, *spec)
            cols = (_columns(POOLINGS[layers_name], dict.fromkeys(POOL_STORED, LAYERS["lite_top_activation"]))
                    if poolings else _columns(FEATURE_SETS[layers_name]))
            xt = {part: transform(x[part][:, :, cols]) for part in x}
            x_tr = xt["tr"].reshape(-1, len(cols))  # both views as training rows
            scaler = StandardScaler().fit(x_tr)
            x_tr = scaler.transform(x_tr)
            x_va, x_te = ([scaler.transform(xt[part][:, v]) for v in range(len(VIEWS))] for part in ("va", "te"))
            if projection != "none":
                basis = source_directions(x_tr, tr_rows, projection)
                x_tr, x_va, x_te = (x_tr - (x_tr @ basis.T) @ basis,
                                    *([xv - (xv @ basis.T) @ basis for xv in xs] for xs in (x_va, x_te)))
                set_name = f"{projection} ({len(basis)} dirs)"

            def p_mean(clf, views: list[np.ndarray]) -> np.ndarray:
                return np.mean([clf.predict_proba(xv)[:, 1] for xv in views], axis=0)

            if set_name == "dx":  # at the C the plain fit picked (erm runs first)
                w_rows = np.repeat(w_tr, len(VIEWS))
                # Half the plain fit's C: with one group per class the softmax head at C is the logistic
                # regression at 2 C (both columns are penalised), so this is the same regularisation.
                clf = fit_partial_softmax(x_tr, allowed_groups(tr_rows["diagnosis"].to_numpy(), tr_rows["label"].to_numpy()),
                                          np.array([c == 1 for _, c in DX_GROUPS]), w_rows, c_erm / 2)
                auc_va, c = roc_auc_score(y_va, p_mean(clf, x_va)), c_erm / 2
            elif objectives and set_name != "erm":  # at the C the plain fit picked (erm runs first)
                group = (tr_rows["source"].astype(str) + ":" + tr_rows["label"].astype(str)).to_numpy()
                clf, q = fit_group_dro(x_tr, tr_rows["label"].to_numpy(), group, c_erm, OBJECTIVES[set_name] or 1.0)
                auc_va, c = roc_auc_score(y_va, p_mean(clf, x_va)), c_erm
                set_name = f"{set_name} q={q}"
            else:
                auc_va, c, clf = fit_pick_c(x_tr, np.repeat(y_tr, len(VIEWS)), np.repeat(w_tr, len(VIEWS)), x_va, y_va)
                c_erm = c
            p_te = p_mean(clf, x_te)
            print(f"held out {held:9s} {set_name:16s} ({len(cols):4d} features, C={c:g}): held-out AUC "
                  f"{roc_auc_score(y_te, p_te):.4f}, in-source val AUC {auc_va:.4f}"
                  f"{_per_diagnosis(y_te, p_te, te['diagnosis'].astype(str).to_numpy())}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("data/cache/multiscale_pilot.npz"))
    ap.add_argument("--transforms", help=f"comma-separated, from {','.join(TRANSFORMS)}: top features only, transformed")
    ap.add_argument("--weightings", help=f"comma-separated, from {','.join(WEIGHTINGS)}: top features only, these weights")
    ap.add_argument("--projections", help=f"comma-separated, from {','.join(PROJECTIONS)}: top features only, "
                    "source directions removed")
    ap.add_argument("--poolings", help=f"comma-separated, from {','.join(POOLINGS)}: the top activation pooled so")
    ap.add_argument("--pool-cache", type=Path, default=Path("data/cache/pooling_pilot.npz"))
    ap.add_argument("--objectives", help=f"comma-separated, from {','.join(OBJECTIVES)}: top features only, "
                    "trained so (erm is added first)")
    ap.add_argument("--extra-views", help="comma-separated views of skinlesion.models.features (e.g. cw,cc): "
                    "top features only, the head also trained on them")
    ap.add_argument("--extra-cache", type=Path, default=Path("data/cache/extra_views_pilot.npz"))
    ap.add_argument("--site-norms", help=f"comma-separated, from {','.join(SITE_NORMS)}: top features only, "
                    "each source (and the held-out one, label-free) normalised by its own statistics")
    ap.add_argument("--train-dedups", help=f"comma-separated, from {','.join(TRAIN_DEDUPS)}: top features only, "
                    "training images as they are or without the Kaggle copies of the other training source's")
    ap.add_argument("--c-selection", action="store_true", help="top features only: C picked in-source and "
                    "source-out over a wider grid")
    args = ap.parse_args()
    from skinlesion.models.features import ALL_VIEWS

    choices = {"transforms": TRANSFORMS, "weightings": WEIGHTINGS, "projections": PROJECTIONS, "poolings": POOLINGS,
               "objectives": OBJECTIVES, "site_norms": SITE_NORMS, "train_dedups": TRAIN_DEDUPS, "extra_views": [v for v in ALL_VIEWS if v not in VIEWS]}
    given = {k: getattr(args, k).split(",") for k in choices if getattr(args, k) is not None}
    if len(given) + args.c_selection > 1:
        ap.error(f"{', '.join('--' + k.replace('_', '-') for k in choices)}, --c-selection: one at a time")
    for k, names in given.items():
        if not set(names) <= set(choices[k]):
            ap.error(f"--{k.replace('_', '-')}: comma-separated, from {', '.join(choices[k])}")
    if "objectives" in given:  # erm first: the others run at the C it picks
        given["objectives"] = ["erm"] + [o for o in given["objectives"] if o != "erm"]
    poolings = given.get("poolings")
    cache, make = (args.pool_cache, extract_pooled) if poolings else (args.cache, extract)
    if not cache.exists():
        make(cache)
    if args.c_selection:
        fit_c_selection(cache)
    elif "train_dedups" in given:
        fit_train_dedup(cache, given["train_dedups"])
    elif "site_norms" in given:
        fit_site_norm(cache, given["site_norms"])
    elif "extra_views" in given:
        extra = tuple(given["extra_views"])
        if not args.extra_cache.exists():
            extract(args.extra_cache, extra)
        fit_extra_views(cache, args.extra_cache, extra)
    else:
        fit_all(cache, given.get("transforms"), given.get("weightings"), given.get("projections"), poolings,
                given.get("objectives"))


if __name__ == "__main__":
    main()
