"""Does fine-tuning the backbone's last block help on a source it never saw? A LOSO pilot.

Full fine-tuning costs CPU-hours per LOSO run here. This pilot fine-tunes only the layers after
``--split`` (Lite0: the last MBConv block and the 1x1 top conv, BatchNorm frozen) on activations
computed once, so each epoch is a minute. For each held-out source it prints the held-out ROC AUC
(mean of the raw outputs over the id and fh views) of a linear head on the frozen features, then
after each fine-tuning epoch of the same head and top layers, and the in-source validation AUC
(the number that would pick an epoch). Splits are the LOSO ones of ``skinlesion generalise``.

    python tools/top_block_pilot.py --held isic2017,kaggle
    python tools/top_block_pilot.py --held ham10000

It runs only when told which sources to hold out (``--held``; all three: ``--held
kaggle,ham10000,isic2017``), since each one reads the full training data and trains: long on a CPU.
Without arguments it prints its usage.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

SOURCES = ("kaggle", "ham10000", "isic2017")


def _activations(trunk, files, views: tuple[str, ...]) -> np.ndarray:
    """(n, views, *trunk output) float16: the frozen lower layers' output for each view."""
    from skinlesion.models.features import apply_view, iter_image_batches

    out = np.zeros((len(files), len(views), *trunk.output_shape[1:]), np.float16)
    for batch, idx, _keys, errors in iter_image_batches(files, int(trunk.input_shape[1])):
        if errors:
            raise SystemExit(f"unreadable images: {errors}")
        for v, view in enumerate(views):
            out[idx, v] = trunk.predict_on_batch(apply_view(batch, view))
    return out


def pilot(held: str, views: tuple[str, ...], split: str, epochs: int, lr: float) -> None:
    import keras
    from sklearn.metrics import roc_auc_score

    from skinlesion.evaluation.generalise import held_out_frame
    from skinlesion.models import backbones
    from skinlesion.seeds import set_seeds
    from skinlesion.training.train import TrainConfig, load_training_data, sample_weights

    set_seeds(42)
    cfg = TrainConfig(sources=tuple(s for s in SOURCES if s != held), holdout=(held,), progress=False)
    data = load_training_data(cfg)
    tr, va = data.part("train"), data.part("val")
    te = held_out_frame(data.table, held)
    backbone = backbones.build_feature_extractor(cfg.backbone, "imagenet")
    trunk = keras.Model(backbone.input, backbone.get_layer(split).output)
    top = keras.Model(backbone.get_layer(split).output, backbone.output)  # shares the backbone's layers
    for layer in top.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference-mode BatchNorm while fine-tuning

    t0 = time.perf_counter()
    a_tr = _activations(trunk, data.files(tr), views)
    a_va = _activations(trunk, data.files(va), ("id",))[:, 0]
    a_te = _activations(trunk, data.files(te), ("id", "fh"))
    print(f"{held}: activations of {len(tr)} x {len(views)} train, {len(va)} val, {len(te)} x 2 held-out "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    x_tr = a_tr.reshape(-1, *a_tr.shape[2:])
    y_tr = np.repeat(tr["label"].to_numpy(), len(views)).astype("float32")
    w_tr = np.repeat(sample_weights(tr, cfg.balance), len(views)).astype("float32")  # every view, its image's weight
    y_va, y_te = va["label"].to_numpy(), te["label"].to_numpy()

    def feats(a: np.ndarray) -> np.ndarray:
        return top.predict(a.astype("float32"), batch_size=512, verbose=0)

    # Stage 1 like the default recipe's head (linear, dropout, L2, AdamW, early stopping on val AUC) but without
    # training.train._train_head's learning-rate schedule, which the pilot's figures were measured without.
    head = keras.Sequential([keras.Input((int(top.output_shape[-1]),)),
                             *backbones.make_head_layers(head_units=0, dropout=cfg.dropout, l2=cfg.l2)])
    head.compile(keras.optimizers.AdamW(cfg.head_lr, weight_decay=1e-4), "binary_crossentropy",
                 metrics=[keras.metrics.AUC(name="auc")])
    head.fit(feats(x_tr), y_tr, sample_weight=w_tr, validation_data=(feats(a_va), y_va), epochs=cfg.head_epochs,
             batch_size=cfg.head_batch_size, verbose=0, callbacks=[keras.callbacks.EarlyStopping(
                 monitor="val_auc", mode="max", patience=cfg.patience, restore_best_weights=True)])

    inp = keras.Input(top.input_shape[1:])
    model = keras.Model(inp, head(top(inp)))

    def report(label: str) -> None:
        p_te = np.mean([model.predict(a_te[:, v].astype("float32"), batch_size=512, verbose=0).ravel()
                        for v in range(a_te.shape[1])], axis=0)
        p_va = model.predict(a_va.astype("float32"), batch_size=512, verbose=0).ravel()
        print(f"{held}: {label}: held-out AUC {roc_auc_score(y_te, p_te):.4f}, "
              f"in-source val AUC {roc_auc_score(y_va, p_va):.4f}", flush=True)

    report("frozen backbone, linear head")
    model.compile(keras.optimizers.Adam(lr), "binary_crossentropy")
    for epoch in range(1, epochs + 1):
        t1 = time.perf_counter()
        model.fit(x_tr.astype("float32"), y_tr, sample_weight=w_tr, epochs=1, batch_size=128, verbose=0, shuffle=True)
        report(f"layers after {split} fine-tuned, epoch {epoch} ({time.perf_counter() - t1:.0f} s)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Example: python tools/top_block_pilot.py --held isic2017,kaggle")
    # Required, with no default: the pilot is long, so a bare run shows this usage instead of starting it.
    ap.add_argument("--held", required=True,
                    help=f"held-out sources, comma-separated, from {','.join(SOURCES)} (one pilot each)")
    ap.add_argument("--views", default="id,fh", help="training views (activations are computed for each)")
    ap.add_argument("--split", default="lite_block14_add", help="last frozen layer")
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs after the frozen-backbone head")
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate of the fine-tuning (Adam)")
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        ap.print_help()
        raise SystemExit(2)
    args = ap.parse_args(argv)
    held_out = [s.strip() for s in args.held.split(",") if s.strip()]
    unknown = [s for s in held_out if s not in SOURCES]
    if unknown or not held_out:
        ap.error(f"--held: unknown source(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SOURCES)}")
    for held in held_out:
        pilot(held, tuple(args.views.split(",")), args.split, args.epochs, args.lr)


if __name__ == "__main__":
    main()
