"""Pieces of `tools/multiscale_pilot.py`: its heads (group DRO, diagnosis-group softmax), the source-out C rule, site normalisation, its rows and its options."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _pilot():
    sys.path.insert(0, str(TOOLS))
    try:
        spec = importlib.util.spec_from_file_location("multiscale_pilot", TOOLS / "multiscale_pilot.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["multiscale_pilot"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    finally:
        sys.path.remove(str(TOOLS))


def _toy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source a: classes far apart; source b: close together (hard to fit) and a quarter of a's size."""
    rng = np.random.default_rng(0)
    x, y, group = [], [], []
    for source, gap, n in (("a", 3.0, 400), ("b", 0.7, 100)):
        for label in (0, 1):
            x.append(rng.normal([gap * label, 0.0], 1.0, (n, 2)) + [0.0, 1.5 if source == "b" else 0.0])
            y += [label] * n
            group += [f"{source}:{label}"] * n
    return np.vstack(x), np.array(y), np.array(group)


def _group_losses(head, x, y, group) -> dict[str, float]:
    p = np.clip(head.predict_proba(x)[:, 1], 1e-12, 1 - 1e-12)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return {g: float(loss[group == g].mean()) for g in np.unique(group)}


def test_group_dro_with_one_group_is_sklearns_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    pilot = _pilot()
    x, y, _ = _toy()
    head, q = pilot.fit_group_dro(x, y, np.array(["all"] * len(y)), c=0.05, temperature=0.01)
    ref = LogisticRegression(C=0.05, max_iter=5000, tol=1e-10).fit(x, y)
    assert q == {"all": 1.0}
    np.testing.assert_allclose(head.coef, ref.coef_[0], atol=1e-4)
    np.testing.assert_allclose(head.intercept, ref.intercept_[0], atol=1e-4)


def test_group_dro_lowers_the_worst_group_loss_and_weights_the_hard_source() -> None:
    from sklearn.linear_model import LogisticRegression

    pilot = _pilot()
    x, y, group = _toy()
    head, q = pilot.fit_group_dro(x, y, group, c=1.0, temperature=0.01)
    plain = LogisticRegression(C=1.0, max_iter=5000).fit(x, y)
    dro_worst = max(_group_losses(head, x, y, group).values())
    assert dro_worst < max(_group_losses(plain, x, y, group).values()) - 0.01
    assert abs(sum(q.values()) - 1) < 1e-6 and q["b:0"] + q["b:1"] > q["a:0"] + q["a:1"]


def test_source_out_auc_scores_each_source_by_a_head_fitted_on_the_others() -> None:
    pilot = _pilot()
    rng = np.random.default_rng(1)
    n = 200
    y = np.tile([0, 1], n)
    source = np.repeat(["a", "b"], n)
    x = rng.normal(0.0, 1.0, (2 * n, 2))
    # Feature 0 carries the label the same way in both sources, feature 1 in opposite ways.
    x[:, 0] += 1.5 * y
    x[:, 1] += np.where(source == "a", 3.0, -3.0) * y
    w = np.ones(2 * n)
    same = pilot.source_out_auc(x[:, :1], y, w, source, c=1.0)
    opposite = pilot.source_out_auc(x[:, 1:], y, w, source, c=1.0)
    assert same > 0.8
    assert opposite < 0.1  # each source's head learned the other's direction
    # Rows come in groups of views per image: identical views score as one row per image (each row
    # adds its loss, so twice the rows at half the C is the same fit).
    assert pilot.source_out_auc(np.repeat(x, 2, axis=0), np.repeat(y, 2), np.repeat(w, 2), np.repeat(source, 2),
                                c=0.5, views=2) == pytest.approx(pilot.source_out_auc(x, y, w, source, c=1.0))


def test_softmax_head_with_one_group_per_class_is_sklearns_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    pilot = _pilot()
    x, y, _ = _toy()
    allowed = np.stack([y == 0, y == 1], axis=1)
    head = pilot.fit_partial_softmax(x, allowed, np.array([False, True]), np.ones(len(y)), c=0.05)
    # Two groups, both columns penalised: the optimum splits the direction in halves, |w|^2 / 4, so
    # it is sklearn's fit at twice the C.
    ref = LogisticRegression(C=0.1, max_iter=5000, tol=1e-10).fit(x, y)
    np.testing.assert_allclose(head.predict_proba(x), ref.predict_proba(x), atol=1e-4)


def test_partial_labels_may_be_any_group_of_their_class() -> None:
    pilot = _pilot()
    allowed = pilot.allowed_groups(np.array(["nv", "seborrheic_keratosis", "benign", "malignant", "mel"]),
                                   np.array([0, 0, 0, 1, 1]))
    names = [g for g, _ in pilot.DX_GROUPS]
    assert [names[i] for i in np.flatnonzero(allowed[0])] == ["nevus"]
    assert [names[i] for i in np.flatnonzero(allowed[1])] == ["keratosis"]
    assert [names[i] for i in np.flatnonzero(allowed[2])] == ["nevus", "keratosis", "other-benign"]
    assert [names[i] for i in np.flatnonzero(allowed[3])] == ["melanoma", "bcc", "akiec"]
    assert [names[i] for i in np.flatnonzero(allowed[4])] == ["melanoma"]


def test_softmax_head_reads_two_benign_groups_a_single_direction_cannot() -> None:
    """Malignant in the middle, one benign group on each side: no line separates them, two do."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    pilot = _pilot()
    rng = np.random.default_rng(2)
    centres = {"nv": -3.0, "bkl": 3.0, "mel": 0.0}
    diagnosis = np.repeat(list(centres), 300)
    x = rng.normal([centres[d] for d in diagnosis], 0.7)[:, None]
    y = (diagnosis == "mel").astype(int)
    # Half the benign rows are coarse ("benign"): they still pull the benign groups' mass.
    coarse = np.where((y == 0) & (np.arange(len(y)) % 2 == 0), "benign", diagnosis)
    head = pilot.fit_partial_softmax(x, pilot.allowed_groups(coarse, y),
                                     np.array([c == 1 for _, c in pilot.DX_GROUPS]), np.ones(len(y)), c=1.0)
    line = LogisticRegression(C=1.0).fit(x, y)
    assert roc_auc_score(y, head.predict_proba(x)[:, 1]) > 0.95
    assert roc_auc_score(y, line.predict_proba(x)[:, 1]) < 0.7


def test_site_normalisation_takes_each_sites_own_offset_and_spread_out() -> None:
    pilot = _pilot()
    rng = np.random.default_rng(3)
    x = np.vstack([rng.normal(5.0, 2.0, (300, 3)), rng.normal(-1.0, 0.5, (100, 3))])
    label = np.r_[np.tile([0, 0, 1], 100), np.tile([0, 1], 50)]
    x[label == 1] += 1.0
    source = np.repeat(["a", "b"], [300, 100])

    def normalised(mode: str, labelled: bool = True) -> np.ndarray:
        stats = {s: pilot.site_stats(x[source == s], label[source == s] if labelled else None, mode) for s in "ab"}
        return pilot.by_site(x, source, stats)

    assert np.array_equal(normalised("none"), x)
    for s in "ab":
        rows = source == s
        np.testing.assert_allclose(normalised("centre")[rows].mean(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(normalised("standardise")[rows].std(axis=0), 1.0, atol=1e-12)
        # Class-balanced: the two classes' means sit either side of zero, whatever the malignant share.
        bal = normalised("centre-bal")[rows]
        np.testing.assert_allclose(bal[label[rows] == 0].mean(axis=0) + bal[label[rows] == 1].mean(axis=0), 0.0,
                                   atol=1e-12)
    # A new site has no labels: its "-bal" statistics are its plain ones.
    np.testing.assert_allclose(normalised("centre-bal", labelled=False), normalised("centre"))
    # standardise-bal: unit spread about the balanced centre, each class weighing half.
    for s in "ab":
        rows, y = source == s, label[source == s]
        z = normalised("standardise-bal")[rows]
        second = 0.5 * (z[y == 0] ** 2).mean(axis=0) + 0.5 * (z[y == 1] ** 2).mean(axis=0)
        np.testing.assert_allclose(second, 1.0, atol=1e-12)


def test_view_rows_line_up_with_per_image_arrays_repeated() -> None:
    pilot = _pilot()
    x = np.arange(3 * 2 * 4).reshape(3, 2, 4)  # 3 images, 2 views, 4 features
    rows = pilot.view_rows(x)
    image = np.repeat(np.arange(3), 2)
    view = np.tile(np.arange(2), 3)
    for r, (i, v) in enumerate(zip(image, view)):
        assert np.array_equal(rows[r], x[i, v])


@pytest.mark.parametrize("argv", [["--site-norms="], ["--extra-views", "cw,nope"], ["--objectives", "dx,nope"],
                                  ["--c-selection", "--site-norms", "centre"], ["--poolings", "gap", "--transforms", "l2"]])
def test_options_are_checked_before_any_feature_is_extracted(argv, monkeypatch, tmp_path) -> None:
    pilot = _pilot()

    def no_extraction(*_a, **_k):
        raise AssertionError("extracted features before checking the options")

    monkeypatch.setattr(pilot, "extract", no_extraction)
    monkeypatch.setattr(pilot, "extract_pooled", no_extraction)
    monkeypatch.setattr("sys.argv", ["multiscale_pilot.py", "--cache", str(tmp_path / "none.npz"), *argv])
    with pytest.raises(SystemExit) as exc:
        pilot.main()
    assert exc.value.code == 2


def test_cross_source_copies_are_the_kaggle_images_of_a_group_another_source_has() -> None:
    import pandas as pd

    pilot = _pilot()
    frame = pd.DataFrame({"source": ["kaggle", "ham10000", "kaggle", "kaggle", "isic2017", "kaggle"],
                          "group": ["g1", "g1", "g2", "g3", "g4", "g4"]})
    assert pilot.cross_source_copies(frame).tolist() == [True, False, False, False, False, True]
