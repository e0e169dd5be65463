"""A rate (fraction of images flagged) with a cluster-bootstrap confidence interval.

Images of one patient or one lesion are not independent, so the interval resamples whole
groups (a cluster bootstrap); ``scipy.stats.bootstrap`` resamples single observations only,
hence these few lines. When every image agrees (rate 0 or 1) a bootstrap interval collapses
to a point, so the Wilson score interval (scipy) is reported instead and the method says so.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from skinlesion.metrics.stats import N_BOOTSTRAP


def rate_with_ci(flags: ArrayLike, groups: ArrayLike | None = None, *, n_resamples: int = N_BOOTSTRAP,
                 seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """``{"n", "rate", "ci": [lo, hi], "ci_method"}`` of boolean ``flags`` (one per image)."""
    from scipy.stats import binomtest

    f = np.asarray(flags, dtype=bool).ravel()
    n, k = int(f.size), int(f.sum())
    if n == 0:
        raise ValueError("a rate needs at least one image")
    rate = k / n
    if k in (0, n):
        ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
        return {"n": n, "rate": rate, "ci": [float(ci.low), float(ci.high)], "ci_method": "wilson (all images agree)"}
    g = np.arange(n) if groups is None else np.unique(np.asarray(groups).ravel(), return_inverse=True)[1]
    hits, sizes = np.bincount(g, weights=f.astype(float)), np.bincount(g).astype(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, hits.size, size=(int(n_resamples), hits.size))
    rates = hits[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    lo, hi = np.quantile(rates, [(1 - level) / 2, (1 + level) / 2])
    method = "percentile bootstrap" + (" over groups (patients / lesions)" if groups is not None else "")
    return {"n": n, "rate": rate, "ci": [float(lo), float(hi)], "ci_method": method}
