"""Training: stage 1 (frozen backbone, cached features, head) and opt-in stage 2 fine-tuning.

CPU-first: the frozen backbone sees every image once (per view) and the cached features
train the head in seconds. Fine-tuning (``fine_tune > 0``) unfreezes the top layers with
BatchNorm kept in inference mode and early-stops on validation AUC.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion import config
from skinlesion.data.datasets import DataError
from skinlesion.data.training_data import (
    TrainingData,
    class_balanced_weights,
    multi_source_data,
    single_root_data,
    source_balanced_weights,
)

log = logging.getLogger(__name__)
BALANCE_MODES = ("class", "source")

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
    # Registered data sources to train on (empty: the single root ``data_dir``); ``holdout``
    # sources are read and de-duplicated against, but only ever evaluated on.
    sources: tuple[str, ...] = ()
    holdout: tuple[str, ...] = ()
    # Sources whose training images are left out when another training source holds the same lesion
    # (data.splits.make_split_table): ("kaggle",) trains on one copy of each HAM10000 / ISIC 2017 image.
    drop_copies_from: tuple[str, ...] = ()
    # Sample weighting: "class" (both classes weigh the same) or "source" (every source, and
    # each class within it, weighs the same).
    balance: str = "class"
    # Dihedral test-time augmentation: the served probability is the mean over the 8 views (so
    # it cannot change when the image is turned or mirrored); the threshold is fitted that way.
    tta: bool = False
    # Shades-of-Gray colour constancy as the model's first layer (inside the saved graph).
    colour_constancy: bool = False
    # Resolution harmonisation (pixels) as the model's first layer: every image low-passed to the
    # detail of the lowest-resolution source (models.resolution). None = off.
    harmonise: int | None = None
    # Each image cropped to its lesion before its views, in training and when served
    # (models.lesion): one framing for every collection. Stage 1 only. Recorded as the crop rule
    # (True is this version's, models.lesion.RULE), so a bundle of an older rule is refused when served.
    lesion_crop: bool | int = False
    # Stage-2 augmentation kinds (training.train.AUGMENTATIONS).
    augment: tuple[str, ...] = ("dihedral", "colour")
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
    # Stage 1 on several machines (training.distributed): MultiWorkerMirroredStrategy from TF_CONFIG.
    distributed: bool = False

    def __post_init__(self) -> None:
        from skinlesion.models.lesion import RULE

        if self.lesion_crop is True:
            self.lesion_crop = RULE
        elif self.lesion_crop not in (False, RULE):  # an older rule cannot be trained any more, nor served
            raise ValueError(f"lesion_crop must be True or False (recorded as rule {RULE}), not {self.lesion_crop!r}")

    @property
    def augment_kinds(self) -> tuple[str, ...]:
        """The named augmentations (``--augment ""`` gives an empty name: none)."""
        return tuple(k for k in self.augment if k)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("views", "sources", "holdout", "augment", "drop_copies_from"):
            d[k] = list(d[k])
        return d


# The default model `skinlesion run` (and so `make run`) trains on the three dermoscopic sources is
# the ensemble (`skinlesion ensemble`) of these recipes, each a bundle of its own under this name;
# the ensemble was chosen by leave-one-source-out validation (reports/generalisation/experiments.md,
# row ``config.DEFAULT_MODEL``). Everything else keeps TrainConfig's defaults. DEFAULT_RECIPE, the
# first member (stage 1 only), is also what `run` trains on a single dataset folder.
DEFAULT_RECIPE: dict[str, Any] = {"views": ("id", "fh", "zi", "zo"), "head_units": 0, "tta": True}
DEFAULT_MEMBERS: dict[str, dict[str, Any]] = {
    "lite0-s1-idfhzio-linear-tta": DEFAULT_RECIPE,
    # A second stage-1 head that reads each image cropped to its lesion (models.lesion, rule 2: cut from
    # the decoded image): it cannot see the framing, vignette and ruler that differ between collections.
    # Views id+fh of the crop.
    "lite0-s1-idfh-linear-tta-lc2": {"views": ("id", "fh"), "head_units": 0, "tta": True, "lesion_crop": True},
}


def default_recipe(**overrides: Any) -> TrainConfig:
    """The default model's first member recipe as a TrainConfig (``overrides``: data, progress, ...)."""
    return TrainConfig(**{**DEFAULT_RECIPE, **overrides})


def default_members(**overrides: Any) -> dict[str, TrainConfig]:
    """Run id -> TrainConfig of each member of the default ensemble (``overrides`` apply to all)."""
    return {name: TrainConfig(**{**recipe, **overrides, "run_id": name}) for name, recipe in DEFAULT_MEMBERS.items()}


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


def _capture_logs() -> tuple[_LogCapture, int]:
    """Record the package's log lines for ``train.log`` in the bundle (removed after the run).

    Only a capture handler is attached; printing is the application's choice (the CLI
    configures a stream handler).
    """
    pkg = logging.getLogger("skinlesion")
    cap = _LogCapture()
    cap.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    pkg.addHandler(cap)
    level = pkg.level
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    return cap, level


def load_training_data(cfg: TrainConfig) -> TrainingData:
    """The split table a config asks for: several sources, or one root."""
    if cfg.balance not in BALANCE_MODES:
        raise DataError(f"balance must be one of {BALANCE_MODES}, got {cfg.balance!r}")
    if cfg.sources:
        if cfg.data_dir or cfg.splits_file:
            raise DataError("give either data sources or a data folder / splits file, not both")
        return multi_source_data(list(cfg.sources), holdout=list(cfg.holdout), val_fraction=cfg.val_fraction,
                                 seed=cfg.seed, progress=cfg.progress, drop_copies_from=cfg.drop_copies_from)
    if cfg.drop_copies_from:
        raise DataError("--drop-copies-from needs --sources (copies are found across sources)")
    if cfg.holdout:
        raise DataError("held-out sources need --sources for the training side")
    return single_root_data(cfg.data_dir, cfg.splits_file, val_fraction=cfg.val_fraction, seed=cfg.seed)


def sample_weights(frame: pd.DataFrame, balance: str) -> np.ndarray:
    """Per-image training weights for ``balance`` ("class" or "source")."""
    return source_balanced_weights(frame) if balance == "source" else class_balanced_weights(frame)


def train(cfg: TrainConfig) -> Path:
    """Run a full training job and return the bundle folder."""
    import keras

    from skinlesion.bundle import format as bundle
    from skinlesion.metrics.calibration import build_decision_policy
    from skinlesion.metrics.classification import roc_auc
    from skinlesion.models import backbones
    from skinlesion.models.features import VIEWS, extract_features
    from skinlesion.models.lesion import crop_views
    from skinlesion.models.ood import MIN_TRAIN_FEATURES, fit_ood
    from skinlesion.seeds import set_seeds

    if cfg.lesion_crop and cfg.fine_tune > 0:
        # Fine-tuning reads whole images (its augmentation pipeline has no crop); not built.
        raise ValueError("lesion_crop is for stage 1 only: give fine_tune=0 (--fine-tune 0) or leave the crop out")
    cap, level = _capture_logs()
    t0 = time.perf_counter()
    try:
        dist = _start_distributed(cfg)
        set_seeds(cfg.seed)
        spec = backbones.get_spec(cfg.backbone)
        size = int(cfg.input_size or spec.input_size)
        data = load_training_data(cfg)
        synthetic = data.synthetic
        if synthetic:
            log.warning("\n%s", SYNTHETIC_BANNER)
        tr = subsample(data.table, "train", cfg.max_train_per_class, cfg.seed)
        va = subsample(data.table, "val", cfg.max_eval_per_class, cfg.seed)
        te = subsample(data.table, "test", cfg.max_eval_per_class, cfg.seed)
        log.info("data: %s", data.describe())
        log.info("using train %d, val %d, test %d", len(tr), len(va), len(te))

        # Distributed, the models stay local to each worker: only the head's training is mirrored.
        strategy = device_strategy() if dist is None else dist.local_strategy()
        with strategy.scope():
            fe = backbones.front_end(cfg.to_dict())
            extractor = backbones.build_feature_extractor(cfg.backbone, cfg.weights, size, **fe)
        # The feature cache key names the whole front end (colour constancy, resolution).
        feat_key = backbones.feature_key(cfg.backbone, **fe)
        wtag = backbones.weights_tag(cfg.backbone, cfg.weights if cfg.weights else None)
        if wtag is None:
            log.warning("backbone %s has RANDOM weights (weights=None): features are not pretrained", cfg.backbone)

        t_feat = time.perf_counter()
        # Distributed, each worker extracts its shard of the images and all get every feature.
        extract = extract_features if dist is None else dist.extract_features
        Xtr, ok_tr, err_tr = extract(
            extractor, data.files(tr), backbone=feat_key, weights_tag=wtag,
            views=crop_views(cfg.views, bool(cfg.lesion_crop)), batch_size=cfg.batch_size, progress=cfg.progress)
        # The views a served prediction averages (BundleMeta.served_views).
        val_views = crop_views(tuple(VIEWS) if cfg.tta else ("id",), bool(cfg.lesion_crop))
        Xva, ok_va, err_va = extract(
            extractor, data.files(va), backbone=feat_key, weights_tag=wtag,
            views=val_views, batch_size=cfg.batch_size, progress=cfg.progress)
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
        if len(tr) < MIN_TRAIN_FEATURES:
            # Checked here, not after training: the out-of-distribution statistics fitted then need them.
            raise DataError(f"the train split has {len(tr)} readable images; need at least {MIN_TRAIN_FEATURES}")
        log.info("features: %d train x %d views, %d val in %.1fs", len(tr), len(cfg.views), len(va), feat_seconds)

        # Re-seeded before each stochastic stage: what ran earlier in this process (another
        # training, warm caches) must not change this model (`skinlesion run` trains two in a row).
        set_seeds(cfg.seed)
        with strategy.scope():
            full, head = backbones.build_classifier(
                cfg.backbone, None, size, head_units=cfg.head_units, dropout=cfg.dropout, l2=cfg.l2, **fe)
        # Copy the (pretrained) backbone weights into the classifier graph layer by layer.
        for layer in extractor.layers:
            if layer.weights:
                full.get_layer(layer.name).set_weights(layer.get_weights())

        if dist is None:
            history = _train_head(head, Xtr, ytr, sample_weights(tr, cfg.balance), Xva[:, 0], yva, cfg)
        else:
            history = dist.fit_head(head, Xtr, ytr, sample_weights(tr, cfg.balance), Xva[:, 0], yva, cfg)
            stop = _finish_distributed(dist, full, cfg)
            if stop is not None:
                return stop
        # Raw outputs averaged over the views before calibration, exactly as the Predictor's TTA does.
        p_val = np.mean([head.predict(Xva[:, v], verbose=0).ravel() for v in range(len(val_views))], axis=0)
        stage = "head"
        if cfg.fine_tune > 0:
            ft_hist, p_val = _fine_tune(full, data, tr, va, cfg, strategy)
            history = pd.concat([history, ft_hist], ignore_index=True)
            stage = f"fine-tuned top {cfg.fine_tune} layers"

        policy_obj = build_decision_policy(yva, p_val, cfg.target_sensitivity)
        policy, val_metrics = policy_obj.to_dict(), dict(policy_obj.validation_metrics)
        val_metrics["roc_auc_uncalibrated"] = roc_auc(yva, p_val)
        log.info("validation ROC AUC %.4f; threshold %.3f for sensitivity >= %.2f",
                 val_metrics.get("roc_auc", float("nan")), policy["threshold"], cfg.target_sensitivity)

        # OOD statistics in the feature space of the final model.
        if cfg.fine_tune > 0:
            feat_model = keras.Model(full.input, full.get_layer(backbones.FEATURE_LAYER).output)
            sample = tr.sample(n=min(len(tr), 2000), random_state=cfg.seed)
            ftr, ok1, _ = extract_features(feat_model, data.files(sample), backbone=cfg.backbone,
                                           weights_tag=None, progress=cfg.progress)
            fva, ok2, _ = extract_features(feat_model, data.files(va), backbone=cfg.backbone,
                                           weights_tag=None, progress=cfg.progress)
            ood = fit_ood(ftr[ok1, 0], fva[ok2, 0], cfg.ood_quantile)
        else:
            ood = fit_ood(Xtr[:, 0], Xva[:, 0], cfg.ood_quantile)

        # The whole table (excluded rows and reasons included) when nothing was subsampled.
        subsampled = cfg.max_train_per_class is not None or cfg.max_eval_per_class is not None
        used = pd.concat([tr, va, te], ignore_index=True) if subsampled else data.table
        val_pred = pd.DataFrame({"source": va["source"].to_numpy(), "path": va["path"].to_numpy(),
                                 "label": yva, "prob": p_val})
        meta = {
            "backbone": cfg.backbone,
            "weights": wtag or "random",
            "input_size": size,
            "feature_layer": backbones.FEATURE_LAYER,
            "last_conv_layer": spec.last_conv_layer,
            "stage": stage,
            "tta": "dihedral" if cfg.tta else None,
            "synthetic": synthetic,
            "decision": policy,
            "calibration": {"method": "temperature", "temperature": policy["temperature"]},
            "ood": {"file": "ood.npz", "threshold": ood.threshold, "quantile": ood.quantile,
                    "metric": "squared Mahalanobis distance (Ledoit-Wolf) in pooled features"},
            "training": {
                # Absolute: a relative one would mean another folder to a command run elsewhere (gate fit, evaluate).
                "data_dir": str(Path(data.data_dir).resolve()) if data.data_dir else None,
                "data_fingerprint": data.fingerprint,
                "sources": data.sources,
                "splits_file": "splits.csv",
                "n_train": len(tr), "n_val": len(va), "n_test": len(te),
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
        run_id = cfg.run_id if dist is None else _distributed_run_id(full, cfg)
        path = bundle.write_bundle(meta, files, out_dir=cfg.out_dir, run_id=run_id)
        log.info("bundle written: %s", config.display_path(path))
        if dist is not None:
            dist.barrier()  # the other workers return once the bundle is there
        if synthetic:
            log.warning("\n%s", SYNTHETIC_BANNER)
        return path
    finally:
        logging.getLogger("skinlesion").removeHandler(cap)
        logging.getLogger("skinlesion").setLevel(level)


def _start_distributed(cfg: TrainConfig):
    """Join the TF_CONFIG cluster when ``cfg.distributed`` (first, before any TensorFlow work)."""
    if not cfg.distributed:
        return None
    from skinlesion.training.distributed import DistributedError, MultiWorker

    if cfg.fine_tune > 0:
        raise DistributedError("--distributed trains stage 1 (features and head); fine-tuning needs Keras' "
                               "Model.fit, which does not run under MultiWorkerMirroredStrategy in Keras 3 "
                               "(keras-team/keras#20585). Drop --fine-tune, or fine-tune on one machine.")
    return MultiWorker.start()


def _distributed_run_id(full, cfg: TrainConfig) -> str:
    """The run id every worker agrees on without talking: the one given, else from the weights."""
    from skinlesion.models.backbones import weights_digest

    return cfg.run_id or f"{cfg.backbone}-distributed-{weights_digest(full)[:12]}"


def _finish_distributed(dist, full, cfg: TrainConfig) -> Path | None:
    """Log the weights digest; for a worker that is not the chief, wait for the chief's bundle and
    return where the chief writes it (the chief returns None and goes on to write it)."""
    from skinlesion.models.backbones import weights_digest

    digest = weights_digest(full)
    target = Path(cfg.out_dir) if cfg.out_dir else config.models_dir()
    target = target / _distributed_run_id(full, cfg)
    log.info("distributed: %s (rank %d of %d) finished training; weights sha256 %s", dist.cluster.task,
             dist.cluster.rank, dist.cluster.n_workers, digest)
    if dist.cluster.is_chief:
        return None
    dist.barrier()  # the chief calls it once its bundle is written
    log.info("distributed: the chief wrote the bundle %s (on its own disk)", config.display_path(target))
    return target


def _train_head(head, Xtr: np.ndarray, ytr: np.ndarray, wtr: np.ndarray, Xva: np.ndarray, yva: np.ndarray,
                cfg: TrainConfig) -> pd.DataFrame:
    """Fit the head on cached features (every view of a training image is one sample)."""
    import keras

    n, v, d = Xtr.shape
    X = Xtr.reshape(n * v, d)
    y = np.repeat(ytr, v)
    w = np.repeat(wtr, v)
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
                 sample_weight=w, callbacks=cb, verbose=0, shuffle=True)
    hist = pd.DataFrame(h.history)
    hist.insert(0, "epoch", np.arange(1, len(hist) + 1))
    hist.insert(0, "stage", "head")
    best = int(np.argmax(hist["val_auc"]))
    log.info("head: %d epochs, best val AUC %.4f at epoch %d", len(hist), hist["val_auc"].iloc[best], best + 1)
    return hist


def _load_arrays(files: list[Path], size: int, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    from skinlesion.models.features import iter_image_batches

    out = np.zeros((len(files), size, size, 3), np.uint8)
    bar = tqdm(total=len(files), desc="decode", unit="img", disable=not progress)
    for batch, idx, _, errs in iter_image_batches(files, size):
        out[idx] = batch
        bar.update(len(idx) + len(errs))
    bar.close()
    return out


AUGMENTATIONS = ("dihedral", "colour", "scale", "blur")


def augmentation_layers(seed: int, kinds: tuple[str, ...] = ("dihedral", "colour")):
    """Training-time augmentation layers for the named ``kinds`` (see :data:`AUGMENTATIONS`).

    ``dihedral`` (exact 90-degree turns and flips, no interpolation) is applied separately by
    :func:`random_dihedral`; these layers add colour jitter, framing (zoom in = tighter crop,
    zoom out = a wider field with a dark border, as full-field dermoscopes give) and blur.
    """
    import keras

    bad = [k for k in kinds if k not in AUGMENTATIONS]
    if bad:
        raise ValueError(f"unknown augmentation(s) {bad}; choose from {AUGMENTATIONS}")
    layers: list = []
    if "scale" in kinds:
        layers.append(keras.layers.RandomZoom((-0.25, 0.3), fill_mode="constant", fill_value=0.0, seed=seed))
    if "colour" in kinds:
        layers += [
            keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed),
            keras.layers.RandomContrast(0.15, seed=seed),
            keras.layers.RandomSaturation((0.35, 0.65), value_range=(0, 255), seed=seed),
            keras.layers.RandomHue(0.04, value_range=(0, 255), seed=seed),
        ]
    if "blur" in kinds:
        layers.append(keras.layers.RandomGaussianBlur(0.5, kernel_size=3, sigma=(0.1, 1.2), value_range=(0, 255),
                                                      seed=seed))
    return layers


def random_dihedral(x, seed: int):
    """One of the 8 dihedral views per batch, exactly (a lesion has no up)."""
    import tensorflow as tf

    k = tf.random.uniform((), 0, 4, dtype=tf.int32, seed=seed)
    x = tf.image.rot90(x, k)
    flip = tf.random.uniform((), 0, 1, seed=seed + 1) < 0.5
    return tf.cond(flip, lambda: tf.image.flip_left_right(x), lambda: x)


def augmented_batches(X: np.ndarray, y: np.ndarray, w: np.ndarray, cfg: TrainConfig, *,
                      parallel_calls: int | None = None):
    """The fine-tuning input: shuffled, batched, augmented with ``cfg.augment``, prefetched.

    ``parallel_calls`` None (what training uses) augments one batch at a time: the augmentation
    draws from stateful generators, and parallel calls would take their draws in a racy order, a
    different model every run. It stays far faster than the training step it feeds
    (``benchmarks/augment_pipeline.py``).
    """
    import tensorflow as tf

    aug = augmentation_layers(cfg.seed, cfg.augment_kinds)
    dihedral = "dihedral" in cfg.augment_kinds

    def augment(x, y, w):
        x = tf.cast(x, tf.float32)
        if dihedral:
            x = random_dihedral(x, cfg.seed)
        for layer in aug:
            x = layer(x, training=True)
        return tf.clip_by_value(x, 0.0, 255.0), y, w

    return (
        tf.data.Dataset.from_tensor_slices((X, y, w))
        .shuffle(len(X), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size // 2)
        .map(augment, num_parallel_calls=parallel_calls)
        .prefetch(tf.data.AUTOTUNE)
    )


def _fine_tune(full, data: TrainingData, tr: pd.DataFrame, va: pd.DataFrame, cfg: TrainConfig, strategy):
    """Stage 2: unfreeze the top ``cfg.fine_tune`` layers and train end to end on images."""
    import keras
    import tensorflow as tf

    from skinlesion.models.backbones import freeze_for_fine_tuning
    from skinlesion.seeds import set_seeds

    size = int(full.input_shape[1])
    Xtr = _load_arrays(data.files(tr), size, cfg.progress)
    Xva = _load_arrays(data.files(va), size, cfg.progress)
    ytr = tr["label"].to_numpy().astype("float32")
    yva = va["label"].to_numpy().astype("float32")
    wtr = sample_weights(tr, cfg.balance).astype("float32")
    set_seeds(cfg.seed)
    train_ds = augmented_batches(Xtr, ytr, wtr, cfg)
    val_ds = tf.data.Dataset.from_tensor_slices((Xva, yva)).batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE)
    with strategy.scope():
        n_trainable = freeze_for_fine_tuning(full, cfg.fine_tune)
        full.compile(
            optimizer=keras.optimizers.Adam(cfg.fine_tune_lr),
            loss="binary_crossentropy",
            metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        )
    log.info("fine-tuning: top %d layers (%d weight tensors trainable, BatchNorm frozen), augment %s, balance %s",
             cfg.fine_tune, n_trainable, ",".join(cfg.augment_kinds) or "none", cfg.balance)
    cb = [keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=cfg.fine_tune_patience,
                                        restore_best_weights=True)]
    # tf.data already shuffles (seeded); Keras' own shuffle flag does not apply to datasets.
    h = full.fit(train_ds, validation_data=val_ds, epochs=cfg.fine_tune_epochs, callbacks=cb, shuffle=False,
                 verbose=2 if cfg.progress else 0)
    hist = pd.DataFrame(h.history)
    hist.insert(0, "epoch", np.arange(1, len(hist) + 1))
    hist.insert(0, "stage", "fine_tune")
    if cfg.tta:
        from skinlesion.models.features import VIEWS, apply_view

        p_val = np.mean([full.predict(apply_view(Xva, v), verbose=0, batch_size=cfg.batch_size).ravel()
                         for v in VIEWS], axis=0)
    else:
        p_val = full.predict(val_ds, verbose=0).ravel()
    return hist, p_val
