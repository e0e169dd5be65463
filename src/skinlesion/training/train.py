"""Training: stage 1 (frozen backbone, cached features, head) and opt-in stage 2 fine-tuning.

CPU-first: the frozen backbone sees every image once (per view) and the cached features
train the head in seconds. Fine-tuning (``fine_tune > 0``) unfreezes the top layers with
BatchNorm kept in inference mode and early-stops on validation AUC.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion import CLASS_NAMES, config
from skinlesion.data.datasets import DataError, load_or_create_splits, resolve_training_data

log = logging.getLogger("skinlesion")

SYNTHETIC_BANNER = (
    "!" * 78 + "\n!!  SYNTHETIC DATA: this model was trained on generated images, not real lesions.  !!\n"
    "!!  Its numbers say nothing about skin cancer. Use real data for real results.    !!\n" + "!" * 78
)


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved verbatim in bundle.json)."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    input_size: int | None = None
    data_dir: str | None = None
    splits_file: str | None = None
    val_fraction: float = 0.15
    seed: int = 42
    # Dihedral views of each training image whose features train the head (augmentation).
    views: tuple[str, ...] = ("id",)
    head_units: int = 256
    dropout: float = 0.3
    l2: float = 1e-4
    head_epochs: int = 300
    head_lr: float = 1e-3
    head_batch_size: int = 256
    batch_size: int = 64
    patience: int = 25
    fine_tune: int = 0
    fine_tune_epochs: int = 6
    fine_tune_lr: float = 2e-5
    fine_tune_patience: int = 2
    max_train_per_class: int | None = None
    max_eval_per_class: int | None = None
    target_sensitivity: float = 0.95
    ood_quantile: float = 0.995
    out_dir: str | None = None
    run_id: str | None = None
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["views"] = list(self.views)
        return d


def device_strategy():
    """MirroredStrategy over all GPUs when there are several; the default strategy otherwise."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def subsample(df: pd.DataFrame, split: str, n_per_class: int | None, seed: int) -> pd.DataFrame:
    """At most ``n_per_class`` rows of each class of ``split`` (seeded), for quick runs."""
    part = df[df["split"] == split]
    if n_per_class is None:
        return part
    keep = [g.sample(n=min(len(g), n_per_class), random_state=seed) for _, g in part.groupby("label")]
    return pd.concat(keep).sort_index()


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def _setup_logging() -> _LogCapture:
    cap = _LogCapture()
    cap.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(cap)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, _LogCapture) for h in log.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("[skinlesion] %(message)s"))
        log.addHandler(sh)
    log.setLevel(logging.INFO)
    return cap


def train(cfg: TrainConfig) -> Path:
    """Run a full training job and return the bundle folder."""
    import keras

    from skinlesion.models import backbones

    from skinlesion.bundle import format as bundle
    from skinlesion.models.features import extract_features
    from skinlesion.models.ood import fit_ood
    from skinlesion.seeds import set_seeds
    from skinlesion.data.synth import is_synthetic

    cap = _setup_logging()
    t0 = time.perf_counter()
    try:
        set_seeds(cfg.seed)
        spec = backbones.get_spec(cfg.backbone)
        size = int(cfg.input_size or spec.input_size)
        root = resolve_training_data(cfg.data_dir)
        synthetic = is_synthetic(root)
        if synthetic:
            log.warning("\n%s", SYNTHETIC_BANNER)
        splits, splits_file = load_or_create_splits(
            root, cfg.splits_file, val_fraction=cfg.val_fraction, seed=cfg.seed
        )
        tr = subsample(splits, "train", cfg.max_train_per_class, cfg.seed)
        va = subsample(splits, "val", cfg.max_eval_per_class, cfg.seed)
        te = subsample(splits, "test", cfg.max_eval_per_class, cfg.seed)
        log.info("data %s: train %d, val %d, test %d (splits %s)", config.display_path(root), len(tr), len(va), len(te),
                 config.display_path(splits_file))

        strategy = device_strategy()
        with strategy.scope():
            extractor = backbones.build_feature_extractor(cfg.backbone, cfg.weights, size)
        wtag = backbones.weights_tag(cfg.backbone, cfg.weights if cfg.weights else None)
        if wtag is None:
            log.warning("backbone %s has RANDOM weights (weights=None): features are not pretrained", cfg.backbone)

        t_feat = time.perf_counter()
        Xtr, ok_tr, err_tr = extract_features(
            extractor, [root / p for p in tr["path"]], backbone=cfg.backbone, weights_tag=wtag,
            views=cfg.views, batch_size=cfg.batch_size, progress=cfg.progress)
        Xva, ok_va, err_va = extract_features(
            extractor, [root / p for p in va["path"]], backbone=cfg.backbone, weights_tag=wtag,
            views=("id",), batch_size=cfg.batch_size, progress=cfg.progress)
        feat_seconds = time.perf_counter() - t_feat
        for name, errs, df in (("train", err_tr, tr), ("val", err_va, va)):
            for i, msg in list(errs.items())[:20]:
                log.warning("skipped unreadable %s image %s: %s", name, df["path"].iloc[i], msg)
        tr, Xtr = tr[ok_tr], Xtr[ok_tr]
        va, Xva = va[ok_va], Xva[ok_va]
        ytr, yva = tr["label"].to_numpy(), va["label"].to_numpy()
        for name, y in (("train", ytr), ("validation", yva)):
            if len(np.unique(y)) < 2:
                raise DataError(f"the {name} split has only one class after reading the images; need both")
        log.info("features: %d train x %d views, %d val in %.1fs", len(tr), len(cfg.views), len(va), feat_seconds)

        with strategy.scope():
            full, head = backbones.build_classifier(
                cfg.backbone, None, size, head_units=cfg.head_units, dropout=cfg.dropout, l2=cfg.l2)
        # Copy the (pretrained) backbone weights into the classifier graph layer by layer.
        for layer in extractor.layers:
            if layer.weights:
                full.get_layer(layer.name).set_weights(layer.get_weights())

        history = _train_head(head, Xtr, ytr, Xva[:, 0], yva, cfg)
        p_val = head.predict(Xva[:, 0], verbose=0).ravel()
        stage = "head"
        if cfg.fine_tune > 0:
            ft_hist, p_val = _fine_tune(full, root, tr, va, cfg, strategy)
            history = pd.concat([history, ft_hist], ignore_index=True)
            stage = f"fine-tuned top {cfg.fine_tune} layers"

        policy, val_metrics = _decision_policy(yva, p_val, cfg.target_sensitivity)
        log.info("validation ROC AUC %.4f; threshold %.3f for sensitivity >= %.2f",
                 val_metrics.get("roc_auc", float("nan")), policy["threshold"], cfg.target_sensitivity)

        # OOD statistics in the feature space of the final model.
        if cfg.fine_tune > 0:
            feat_model = keras.Model(full.input, full.get_layer(backbones.FEATURE_LAYER).output)
            sample = tr.sample(n=min(len(tr), 2000), random_state=cfg.seed)
            ftr, ok1, _ = extract_features(feat_model, [root / p for p in sample["path"]], backbone=cfg.backbone,
                                           weights_tag=None, progress=cfg.progress)
            fva, ok2, _ = extract_features(feat_model, [root / p for p in va["path"]], backbone=cfg.backbone,
                                           weights_tag=None, progress=cfg.progress)
            ood = fit_ood(ftr[ok1, 0], fva[ok2, 0], cfg.ood_quantile)
        else:
            ood = fit_ood(Xtr[:, 0], Xva[:, 0], cfg.ood_quantile)

        used = pd.concat([tr, va, te], ignore_index=True)
        val_pred = pd.DataFrame({"path": va["path"].to_numpy(), "label": yva, "prob": p_val})
        meta = {
            "backbone": cfg.backbone,
            "weights": wtag or "random",
            "input_size": size,
            "feature_layer": backbones.FEATURE_LAYER,
            "last_conv_layer": spec.last_conv_layer,
            "stage": stage,
            "synthetic": synthetic,
            "decision": policy,
            "calibration": {"method": "temperature", "temperature": policy["temperature"]},
            "ood": {"file": "ood.npz", "threshold": ood.threshold, "quantile": ood.quantile,
                    "metric": "squared Mahalanobis distance (Ledoit-Wolf) in pooled features"},
            "training": {
                "data_dir": str(root),
                "data_fingerprint": Path(splits_file).stem.split("-")[0],
                "splits_file": "splits.csv",
                "n_train": int(len(tr)), "n_val": int(len(va)), "n_test": int(len(te)),
                "skipped_unreadable": int(len(err_tr) + len(err_va)),
                "feature_seconds": round(feat_seconds, 1),
                "config": cfg.to_dict(),
            },
            "metrics": {"val": val_metrics},
        }
        log.info("total training time %.1fs", time.perf_counter() - t0)
        files = {
            "model.keras": full,
            "history.csv": history,
            "splits.csv": used,
            "val_predictions.csv": val_pred,
            "ood.npz": lambda p: ood.save(p),
            "train.log": lambda p: Path(p).write_text("\n".join(cap.lines) + "\n"),
        }
        path = bundle.write_bundle(meta, files, out_dir=cfg.out_dir, run_id=cfg.run_id)
        log.info("bundle written: %s", config.display_path(path))
        if synthetic:
            log.warning("\n%s", SYNTHETIC_BANNER)
        return path
    finally:
        log.removeHandler(cap)


def _class_weights(y: np.ndarray) -> dict[int, float]:
    counts = np.bincount(y, minlength=2).astype(float)
    return {k: float(len(y) / (2.0 * counts[k])) for k in range(2)}


def _train_head(head, Xtr: np.ndarray, ytr: np.ndarray, Xva: np.ndarray, yva: np.ndarray, cfg: TrainConfig) -> pd.DataFrame:
    """Fit the head on cached features (every view of a training image is one sample)."""
    import keras

    n, v, d = Xtr.shape
    X = Xtr.reshape(n * v, d)
    y = np.repeat(ytr, v)
    head.compile(
        optimizer=keras.optimizers.AdamW(cfg.head_lr, weight_decay=1e-4),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )
    cb = [
        keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=cfg.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(3, cfg.patience // 3)),
    ]
    h = head.fit(X, y, validation_data=(Xva, yva), epochs=cfg.head_epochs, batch_size=cfg.head_batch_size,
                 class_weight=_class_weights(ytr), callbacks=cb, verbose=0, shuffle=True)
    hist = pd.DataFrame(h.history)
    hist.insert(0, "epoch", np.arange(1, len(hist) + 1))
    hist.insert(0, "stage", "head")
    best = int(np.argmax(hist["val_auc"]))
    log.info("head: %d epochs, best val AUC %.4f at epoch %d", len(hist), hist["val_auc"].iloc[best], best + 1)
    return hist


def _load_arrays(root: Path, rel_paths, size: int, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    from skinlesion.models.features import iter_image_batches

    out = np.zeros((len(rel_paths), size, size, 3), np.uint8)
    bar = tqdm(total=len(rel_paths), desc="decode", unit="img", disable=not progress)
    for batch, idx, _, errs in iter_image_batches([root / p for p in rel_paths], size):
        out[idx] = batch
        bar.update(len(idx) + len(errs))
    bar.close()
    return out


def augmentation_layers(seed: int):
    """Training-time augmentation: dihedral flips/rotations plus mild colour jitter."""
    import keras

    return [
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomRotation(0.5, fill_mode="reflect", seed=seed),
        keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed),
        keras.layers.RandomContrast(0.15, seed=seed),
    ]


def _fine_tune(full, root: Path, tr: pd.DataFrame, va: pd.DataFrame, cfg: TrainConfig, strategy):
    """Stage 2: unfreeze the top ``cfg.fine_tune`` layers and train end to end on images."""
    import keras
    import tensorflow as tf

    from skinlesion.models.backbones import freeze_for_fine_tuning

    size = int(full.input_shape[1])
    Xtr = _load_arrays(root, tr["path"].tolist(), size, cfg.progress)
    Xva = _load_arrays(root, va["path"].tolist(), size, cfg.progress)
    ytr = tr["label"].to_numpy().astype("float32")
    yva = va["label"].to_numpy().astype("float32")
    aug = augmentation_layers(cfg.seed)

    def augment(x, y):
        x = tf.cast(x, tf.float32)
        for layer in aug:
            x = layer(x, training=True)
        return tf.clip_by_value(x, 0.0, 255.0), y

    train_ds = (
        tf.data.Dataset.from_tensor_slices((Xtr, ytr))
        .shuffle(len(Xtr), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size // 2)
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((Xva, yva)).batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE)
    with strategy.scope():
        n_trainable = freeze_for_fine_tuning(full, cfg.fine_tune)
        full.compile(
            optimizer=keras.optimizers.Adam(cfg.fine_tune_lr),
            loss="binary_crossentropy",
            metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        )
    log.info("fine-tuning: top %d layers (%d weight tensors trainable, BatchNorm frozen)", cfg.fine_tune, n_trainable)
    cb = [keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=cfg.fine_tune_patience,
                                        restore_best_weights=True)]
    # tf.data already shuffles (seeded); Keras' own shuffle flag does not apply to datasets.
    h = full.fit(train_ds, validation_data=val_ds, epochs=cfg.fine_tune_epochs, callbacks=cb, shuffle=False,
                 class_weight=_class_weights(tr["label"].to_numpy()), verbose=2 if cfg.progress else 0)
    hist = pd.DataFrame(h.history)
    hist.insert(0, "epoch", np.arange(1, len(hist) + 1))
    hist.insert(0, "stage", "fine_tune")
    p_val = full.predict(val_ds, verbose=0).ravel()
    return hist, p_val


def _decision_policy(y_val: np.ndarray, p_val: np.ndarray, target_sensitivity: float) -> tuple[dict, dict]:
    """Temperature scaling and the frozen decision threshold, both fitted on validation."""
    from skinlesion.metrics import calibration
    from skinlesion.metrics import classification as metrics

    T = calibration.fit_temperature(y_val, p_val)
    p_cal = calibration.apply_temperature(p_val, T)
    policy = calibration.fit_decision_policy(y_val, p_cal, target_sensitivity=target_sensitivity, temperature=T)
    summary = metrics.summarize(y_val, p_cal, threshold=policy.threshold)
    summary["ece_before"] = calibration.expected_calibration_error(y_val, p_val)
    summary["ece_after"] = calibration.expected_calibration_error(y_val, p_cal)
    summary["roc_auc_uncalibrated"] = metrics.roc_auc(y_val, p_val)
    return policy.to_dict(), summary
