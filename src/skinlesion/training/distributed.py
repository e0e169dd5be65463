"""Stage-1 training on several machines: ``skinlesion train --distributed``.

Standard TensorFlow, nothing home-made: every machine runs the same command with its own
``TF_CONFIG`` (the cluster's ``host:port`` list and this machine's task), and
``tf.distribute.MultiWorkerMirroredStrategy`` keeps one synchronous copy of the trained weights on
every worker with collective all-reduce (no parameter server). What runs where:

1. **Feature extraction is split by image.** Each image belongs to worker
   ``shard_of(sha256 of its bytes, n_workers)``; every worker pushes only its own images through
   the frozen backbone (the slow part), and one all-reduce gives every worker the whole feature
   matrix. The split depends on the image bytes alone, so it is the same on every machine whatever
   the file paths, and stable when images are added.
2. **The head is trained data-parallel** under the strategy: each global batch is split across the
   workers, gradients are all-reduced, so all workers hold identical weights after every step.
   Keras 3's ``Model.fit`` does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585:
   it hands ``strategy.reduce`` whole batches and scalar logs), so :meth:`MultiWorker.fit_head` is
   TensorFlow's documented custom training loop (``strategy.run`` + ``GradientTape``), with the same
   loss, optimizer, early stopping and learning-rate schedule (the Keras callbacks) as the
   single-machine :func:`skinlesion.training.train._train_head`.
3. **The chief (rank 0) writes the bundle**; the others log the same weights digest and stop.

Stage-2 fine-tuning is not distributed (it needs ``Model.fit``); ``--distributed`` refuses it.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from skinlesion import config
from skinlesion.data.datasets import DataError
from skinlesion.data.intake import ImageRejected, image_fingerprint, read_file_bytes

if TYPE_CHECKING:
    import keras

    from skinlesion.training.train import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["Cluster", "DistributedError", "MultiWorker", "parse_tf_config", "shard_of"]

# One all-reduce moves at most this many bytes (the feature matrix of a big run is hundreds of MB).
_REDUCE_CHUNK_BYTES = 32 * 2**20


class DistributedError(DataError):
    """A distributed run that cannot start: missing or malformed TF_CONFIG, unsupported option."""


@dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster described by TF_CONFIG."""

    n_workers: int
    rank: int          # 0 is the chief, which writes the bundle
    task: str          # "chief:0", "worker:1", ... as TF_CONFIG names it

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def parse_tf_config(raw: str | None) -> Cluster:
    """The :class:`Cluster` of a TF_CONFIG string; :class:`DistributedError` says what is wrong.

    Ranks follow TensorFlow's convention: a ``chief`` task is rank 0 and the ``worker`` tasks
    follow it; without a chief, ``worker`` 0 is the chief.
    """
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not raw:
        raise DistributedError(f"--distributed needs TF_CONFIG (the cluster and this machine's task), {example}")
    try:
        spec = json.loads(raw)
        cluster, task = spec["cluster"], spec["task"]
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        kind, index = str(task["type"]), int(task["index"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DistributedError(f"TF_CONFIG is not a valid cluster description ({exc}); {example}") from None
    if len(chiefs) > 1:
        raise DistributedError(f"TF_CONFIG lists {len(chiefs)} chiefs; there can be at most one")
    members = {"chief": chiefs, "worker": workers}
    if kind not in members or not 0 <= index < len(members[kind]):
        raise DistributedError(f"TF_CONFIG's task {kind}:{index} is not in its cluster "
                               f"(chief: {len(chiefs)}, worker: {len(workers)}); only chief and worker tasks train")
    rank = 0 if kind == "chief" else index + len(chiefs)
    return Cluster(n_workers=len(chiefs) + len(workers), rank=rank, task=f"{kind}:{index}")


def shard_of(sha256: str, n_workers: int) -> int:
    """The worker (0 .. n_workers-1) that extracts the features of the image with this sha256.

    The first 64 bits of the digest modulo the number of workers: uniform, the same on every
    machine, and independent of file names and of the order of the image list.
    """
    if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise ValueError(f"expected a sha256 hex digest (64 characters), got {sha256!r}")
    try:
        return int(sha256[:16], 16) % n_workers
    except ValueError:
        raise ValueError(f"expected a sha256 hex digest, got {sha256!r}") from None


class MultiWorker:
    """This process's MultiWorkerMirroredStrategy and the collective steps of a distributed run."""

    def __init__(self, cluster: Cluster, strategy: Any) -> None:
        self.cluster = cluster
        self.strategy = strategy

    @classmethod
    def start(cls) -> MultiWorker:
        """Join the cluster in TF_CONFIG. Call it before any other TensorFlow work in the process:
        collective ops can only be configured at start-up (the CLI does it first thing)."""
        cluster = parse_tf_config(config.tf_config())
        import tensorflow as tf

        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:
            raise DistributedError(f"cannot join the cluster: {exc} (--distributed must be the first TensorFlow "
                                   "work of the process)") from exc
        log.info("distributed: %s, rank %d of %d workers (%s), %d replicas in sync", cluster.task, cluster.rank,
                 cluster.n_workers, "chief" if cluster.is_chief else "not the chief", strategy.num_replicas_in_sync)
        return cls(cluster, strategy)

    @staticmethod
    def local_strategy() -> Any:
        """TensorFlow's default strategy: what builds the models each worker keeps to itself."""
        import tensorflow as tf

        return tf.distribute.get_strategy()

    # -- collectives ------------------------------------------------------------------------
    def all_reduce_sum(self, array: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``array`` over all workers (each must pass the same shape)."""
        import tensorflow as tf

        a = np.asarray(array)
        flat = a.reshape(-1)
        step = max(1, _REDUCE_CHUNK_BYTES // max(1, a.itemsize))
        out = np.empty_like(flat)
        for start in range(0, max(len(flat), 1), step):
            part = flat[start:start + step]
            if not len(part):
                break
            value = self.strategy.run(lambda p=part: tf.constant(p))
            out[start:start + step] = self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy()
        return out.reshape(a.shape)

    def barrier(self) -> None:
        """Return once every worker has reached this point."""
        self.all_reduce_sum(np.zeros(1, np.float32))

    # -- stage 1 ----------------------------------------------------------------------------
    def extract_features(self, extractor: keras.Model, paths: Sequence[str | os.PathLike[str]],
                         **kwargs: Any) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """:func:`skinlesion.models.features.extract_features` of this worker's shard of ``paths``,
        assembled with the other workers' shards into the result for all of ``paths``."""
        from skinlesion.models.features import extract_features

        n, rank = self.cluster.n_workers, self.cluster.rank
        mine: list[int] = []
        for i, p in enumerate(paths):
            try:
                owner = shard_of(image_fingerprint(read_file_bytes(p)), n)
            except (ImageRejected, OSError):
                owner = i % n  # unreadable or refused (too large...): whoever owns it reports the error
            if owner == rank:
                mine.append(i)
        views = tuple(kwargs.get("views", ("id",)))
        dim = int(extractor.output_shape[-1])
        feats = np.zeros((len(paths), len(views), dim), np.float32)
        ok = np.zeros(len(paths), np.float32)
        local_errors: dict[int, str] = {}
        if mine:
            x, good, errs = extract_features(extractor, [paths[i] for i in mine], **kwargs)
            rows = np.asarray(mine)
            feats[rows] = x
            ok[rows] = good
            local_errors = {mine[j]: msg for j, msg in errs.items()}
        log.info("distributed: worker %d extracted %d of %d images (%d views)", rank, len(mine), len(paths), len(views))
        feats = self.all_reduce_sum(feats)
        all_ok = self.all_reduce_sum(ok) > 0.5
        errors = {int(i): local_errors.get(int(i), "could not be read (reported by another worker)")
                  for i in np.flatnonzero(~all_ok)}
        return feats, all_ok, errors

    def fit_head(self, head: keras.Model, Xtr: np.ndarray, ytr: np.ndarray, wtr: np.ndarray, Xva: np.ndarray,
                 yva: np.ndarray, cfg: TrainConfig) -> pd.DataFrame:
        """Train ``head`` on cached features, data-parallel over the workers; its history.

        A copy of ``head`` is trained under the strategy (mirrored variables, initial values
        broadcast from the chief) and its weights are copied back, so ``head`` (and the full model
        that shares its layers) stays an ordinary local model for prediction and saving.
        """
        import keras
        import tensorflow as tf

        strategy = self.strategy
        n, v, d = Xtr.shape
        X = Xtr.reshape(n * v, d).astype(np.float32)
        y = np.repeat(ytr, v).astype(np.float32)
        w = np.repeat(wtr, v).astype(np.float32)
        batch = int(cfg.head_batch_size)
        with strategy.scope():
            model = keras.models.clone_model(head)
            optimizer = keras.optimizers.AdamW(cfg.head_lr, weight_decay=1e-4)
            # compile() only attaches the optimizer, for the callbacks (ReduceLROnPlateau reads it).
            model.compile(optimizer=optimizer, loss="binary_crossentropy")
            optimizer.build(model.trainable_variables)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        # The same seeded shuffle on every worker, so the DATA sharding splits one global order.
        # Batched, then repeated: every epoch is `steps` batches, the last one partial, as in fit().
        # One iterator for the whole run (a new distributed iterator per epoch costs ~0.4 s).
        steps = math.ceil(len(X) / batch)
        dataset = (tf.data.Dataset.from_tensor_slices((X, y, w))
                   .shuffle(len(X), seed=cfg.seed, reshuffle_each_iteration=True)
                   .batch(batch).repeat().with_options(options))
        batches = iter(strategy.experimental_distribute_dataset(dataset))
        bce = keras.losses.BinaryCrossentropy(reduction=None)

        def replica_step(xb, yb, wb):
            with tf.GradientTape() as tape:
                p = model(xb, training=True)
                # Keras' "sum over batch size" with sample weights, over the global batch.
                loss = tf.nn.compute_average_loss(bce(yb[:, None], p) * wb, global_batch_size=batch)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))  # all-reduced across workers
            return loss

        @tf.function
        def train_epoch(iterator):
            total = tf.constant(0.0)
            for _ in tf.range(steps):
                total += strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=next(iterator)),
                                         axis=None)
            return total / steps

        callbacks = keras.callbacks.CallbackList([
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=cfg.patience,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(3, cfg.patience // 3)),
        ], model=model)
        rows: list[dict[str, float]] = []
        callbacks.on_train_begin()
        for epoch in range(cfg.head_epochs):
            loss = float(train_epoch(batches))
            # Every worker holds the same weights and the whole validation set: the same numbers,
            # so every worker's callbacks take the same decisions without talking to each other.
            logs = {"loss": loss, **_validation_logs(model, Xva, yva),
                    "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate))}
            rows.append(logs)
            callbacks.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        callbacks.on_train_end()
        head.set_weights(model.get_weights())
        hist = pd.DataFrame(rows)
        hist.insert(0, "epoch", np.arange(1, len(hist) + 1))
        hist.insert(0, "stage", "head")
        best = int(np.argmax(hist["val_auc"]))
        log.info("head (%d workers): %d epochs, best val AUC %.4f at epoch %d", self.cluster.n_workers, len(hist),
                 hist["val_auc"].iloc[best], best + 1)
        return hist


def _validation_logs(model: keras.Model, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """val_loss, val_auc and val_accuracy as Keras' fit would log them (same metric classes)."""
    import keras

    p = keras.ops.convert_to_numpy(model(X, training=False)).reshape(-1, 1)
    yy = np.asarray(y, np.float32).reshape(-1, 1)
    auc = keras.metrics.AUC()
    auc.update_state(yy, p)
    acc = keras.metrics.BinaryAccuracy()
    acc.update_state(yy, p)
    loss = float(np.mean(keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(yy, p))))
    return {"val_loss": loss, "val_auc": float(auc.result()), "val_accuracy": float(acc.result())}
