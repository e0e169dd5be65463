"""Stage-1 feature extraction: frozen backbone features, computed once and cached on disk.

The cache is keyed by backbone, input size, weights identity, view (augmentation) and the
sha256 of each image's bytes, so subsets, re-runs and renamed files all reuse it.
"""
from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from skinlesion import config
from skinlesion.data.intake import ImageRejected, image_fingerprint, load_for_model, read_file_bytes, read_image
from skinlesion.models import lesion

# Dihedral views: lesions have no canonical orientation, so flips/rotations are label-preserving.
VIEWS: dict[str, tuple[int, bool]] = {  # name -> (quarter turns, horizontal flip)
    "id": (0, False), "r90": (1, False), "r180": (2, False), "r270": (3, False),
    "fh": (0, True), "fh_r90": (1, True), "fh_r180": (2, True), "fh_r270": (3, True),
}


# Framing views (training augmentation only, never TTA): a tighter crop, and a wider field with a
# dark border - the two ways dermoscopes frame a lesion. The border is what a full-field
# dermoscope's vignette looks like, which the Kaggle set has on malignant images only.
# zi/zo: 15 %; zi30/zo30: 30 %, the same two framings pushed further.
FRAMING_VIEWS: dict[str, float] = {"zi": 1.15, "zo": 1 / 1.15, "zi30": 1.3, "zo30": 1 / 1.3}
ZOOM_OUT_FILL = 8  # grey level of the added border (a dark vignette, not pure black)

# Degradation views (training augmentation only): the same lesion stored or sent at lower quality.
# ``ds``: half the resolution and back (bilinear, antialiased), as a lower-resolution dermoscope or a
# downsized upload; ``wp``: a WebP quality-80 round trip (Pillow's defaults), as a re-encoded upload.
DEGRADE_VIEWS: tuple[str, ...] = ("ds", "wp")
WEBP_QUALITY = 80
# Aperture views (training augmentation only): the image seen through a full-field dermoscope's
# round field stop, dark (ZOOM_OUT_FILL) outside a circle of this radius x side with a soft edge.
# In the Kaggle set that vignette comes mostly with malignant images (they are HAM10000 and
# ISIC 2017 melanomas), so a head learns "dark corners -> malignant"; showing every training image
# of both classes with it takes that cue away. (The artefact trap paints corners outside a circle of
# 0.50-0.55 x side over the image: the same cue, measured after training, not a held-out test of it.)
APERTURE_VIEWS: dict[str, float] = {"ap": 0.47}
APERTURE_SOFT = 0.03  # width of the soft edge, x side
# Colour views (training augmentation only): the same lesion under a warmer (``cw``) or cooler (``cc``)
# white balance, red and blue gains of 1.1 and 0.9 (log red/blue ratio +-0.2, the spread of one
# source's images), as another dermatoscope's light and camera would give it. The sources disagree
# on which class is redder (``python tools/multiscale_pilot.py --extra-views cw,cc`` prints it),
# so a head trained on two of them can learn a white-balance cue that inverts on the third.
COLOUR_VIEWS: dict[str, tuple[float, float, float]] = {"cw": (1.1, 1.0, 0.9), "cc": (0.9, 1.0, 1.1)}
ALL_VIEWS: tuple[str, ...] = (*VIEWS, *FRAMING_VIEWS, *DEGRADE_VIEWS, *APERTURE_VIEWS, *COLOUR_VIEWS)


def scale_channels(img: np.ndarray, gains: Sequence[float]) -> np.ndarray:
    """Multiply the R, G, B channels of uint8 image(s) (last axis) by ``gains``, rounded and clipped."""
    out = img.astype(np.float32) * np.asarray(gains, np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _zoom(image: np.ndarray, factor: float) -> np.ndarray:
    """Zoom one square uint8 image about its centre: > 1 crops tighter, < 1 pads a dark border."""
    from PIL import Image

    size = image.shape[0]
    if factor >= 1:
        side = int(round(size / factor))
        o = (size - side) // 2
        crop = Image.fromarray(image[o:o + side, o:o + side])
        return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
    side = int(round(size * factor))
    small = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))
    out = np.full_like(image, ZOOM_OUT_FILL)
    o = (size - side) // 2
    out[o:o + side, o:o + side] = small
    return out


def downscale(img: np.ndarray, factor: float = 0.5) -> np.ndarray:
    """``img`` resized by ``factor`` with Pillow's antialiased bilinear filter."""
    from PIL import Image

    h, w = img.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))


def _degrade(image: np.ndarray, view: str) -> np.ndarray:
    """One uint8 RGB image at half resolution and back (``ds``) or after a WebP round trip (``wp``)."""
    import io

    from PIL import Image

    h, w = image.shape[:2]
    if view == "ds":
        return np.asarray(Image.fromarray(downscale(image)).resize((w, h), Image.Resampling.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", quality=WEBP_QUALITY)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"))


def outside_circle_alpha(h: int, w: int, radius: float, soft: float) -> np.ndarray:
    """(h, w) opacity of a dark field stop: 0 inside a centred circle of ``radius`` pixels, 1 outside,
    a linear ramp ``soft`` pixels wide across the edge (the aperture view and the vignette trap)."""
    y, x = np.ogrid[:h, :w]
    r = np.sqrt((y + 0.5 - h / 2) ** 2 + (x + 0.5 - w / 2) ** 2)
    return np.clip((r - radius) / soft + 0.5, 0.0, 1.0)


def _aperture(batch: np.ndarray, radius: float) -> np.ndarray:
    """A batch of square uint8 images outside a centred circle of ``radius`` x side blended into the dark fill."""
    size = batch.shape[1]
    alpha = outside_circle_alpha(size, size, radius * size, APERTURE_SOFT * size)[None, :, :, None]
    return np.rint(batch * (1 - alpha) + ZOOM_OUT_FILL * alpha).astype(np.uint8)


def apply_view(batch: np.ndarray, view: str) -> np.ndarray:
    """Apply a dihedral, framing, degradation, aperture or colour view to a batch (N, H, W, C) of square uint8 images;
    a lesion-crop view (``lc2_<view>``) is not one: its crop is cut from the decoded file
    (``skinlesion.models.lesion.crop_from``), then its base view applied here."""
    if lesion.is_crop_view(view):
        raise ValueError(f"{view!r} is a lesion-crop view: cut the crop from the decoded image "
                         f"(skinlesion.models.lesion.crop_from), then apply {lesion.base_view(view)!r}")
    if view in COLOUR_VIEWS:
        return scale_channels(batch, COLOUR_VIEWS[view])
    if view in APERTURE_VIEWS:
        return _aperture(batch, APERTURE_VIEWS[view])
    if view in FRAMING_VIEWS:
        return np.stack([_zoom(img, FRAMING_VIEWS[view]) for img in batch]) if len(batch) else batch
    if view in DEGRADE_VIEWS:
        return np.stack([_degrade(img, view) for img in batch]) if len(batch) else batch
    k, flip = VIEWS[view]
    out = batch[:, :, ::-1] if flip else batch
    return np.ascontiguousarray(np.rot90(out, k, axes=(1, 2)))


def _read_one(path: Path, size: int, crop: bool = False) -> tuple[str, np.ndarray | None, str | None]:
    try:
        # Size-limited: a huge file (or a link to one) is one refused image, not a MemoryError.
        data = read_file_bytes(path)
    except ImageRejected as exc:
        return "", None, exc.message
    except OSError as exc:
        return "", None, f"cannot read: {exc}"
    key = image_fingerprint(data)
    try:
        if crop:
            return key, lesion.crop_from(read_image(data), size)[0], None
        return key, load_for_model(data, size), None
    except ImageRejected as exc:
        return key, None, exc.message


def iter_image_batches(
    paths: Sequence[str | os.PathLike[str]], size: int, batch_size: int = 64, workers: int = 2, *,
    lesion_crop: bool = False,
) -> Iterator[tuple[np.ndarray, list[int], list[str], dict[int, str]]]:
    """Yield (batch uint8, input indices, sha256 keys, errors) while the next batch decodes; with
    ``lesion_crop`` each image is its lesion crop, cut from the decoded file (``models.lesion.crop_from``).

    Decoding runs in a thread pool (Pillow releases the GIL) one batch ahead of the
    consumer, so the model is rarely starved on a 2-core machine.
    """
    starts = range(0, len(paths), batch_size)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(start: int):
            chunk = paths[start : start + batch_size]
            return start, [pool.submit(_read_one, Path(p), size, lesion_crop) for p in chunk]

        pending = submit(starts[0]) if len(paths) else None
        for nxt in [*starts[1:], None]:
            assert pending is not None  # one submitted chunk per loop turn
            start, futures = pending
            pending = submit(nxt) if nxt is not None else None
            arrays, idx, keys, errors = [], [], [], {}
            for j, fut in enumerate(futures):
                key, arr, err = fut.result()
                keys.append(key)
                if err is None:
                    arrays.append(arr)
                    idx.append(start + j)
                else:
                    errors[start + j] = err
            batch = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
            yield batch, idx, keys, errors


class FeatureCache:
    """An npz per (backbone, size, weights, view): sha256 keys -> float32 feature rows."""

    def __init__(self, backbone: str, size: int, weights_tag: str | None, view: str, root: Path | None = None):
        self.enabled = weights_tag is not None  # random weights change every build: never cache
        tag = f"{backbone}-{size}-{weights_tag}-{view}"
        self.path = (root or config.cache_dir() / "features") / f"{tag}.npz"
        self._lock = threading.Lock()
        self.store: dict[str, np.ndarray] = {}
        if self.enabled and self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    self.store = dict(zip(z["keys"].tolist(), z["features"]))
            except Exception as exc:  # a corrupt cache is rebuilt, never trusted
                warnings.warn(f"ignoring unreadable feature cache {self.path}: {exc}", stacklevel=2)

    def get(self, key: str) -> np.ndarray | None:
        return self.store.get(key)

    def put_many(self, keys: list[str], feats: np.ndarray) -> None:
        with self._lock:
            self.store.update(zip(keys, feats))

    def save(self) -> None:
        if not self.enabled or not self.store:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.store.keys()))
        feats = np.stack(list(self.store.values())).astype(np.float32)
        tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=keys, features=feats)
        os.replace(tmp, self.path)


# Below this many backbone passes Keras runs the job: on 2 cores the conversion took 6.3 s and the
# twin ran 1.66x as fast (186 vs 112 img/s), which repays after ~1,800 passes
# (benchmarks/feature_backends.py).
TFLITE_MIN_PASSES = 2000


def _runner(model, passes: int):
    """What computes the features: ``model`` itself, or its TFLite twin for a large job
    (``SKINLESION_FEATURE_BACKEND``: auto, keras, tflite). A model that cannot be converted
    falls back to Keras with a warning, never an error."""
    choice = config.feature_backend()
    if choice == "keras" or (choice == "auto" and passes < TFLITE_MIN_PASSES):
        return model
    from skinlesion.models.tflite_features import tflite_features

    try:
        return tflite_features(model)
    except Exception as exc:  # conversion errors come from deep inside TF in many types
        warnings.warn(f"TFLite conversion of {getattr(model, 'name', 'the model')} failed, features come from "
                      f"Keras ({type(exc).__name__}: {str(exc)[:200]})", stacklevel=3)
        return model


def extract_features(
    model,
    paths: Sequence[str | os.PathLike[str]],
    *,
    backbone: str,
    weights_tag: str | None,
    views: Sequence[str] = ("id",),
    batch_size: int = 64,
    progress: bool = True,
    cache_root: Path | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Features of every image for every view: (features (n, n_views, d), ok mask, errors).

    Images that cannot be decoded are reported in ``errors`` and masked out, never fatal.
    """
    from tqdm.auto import tqdm

    size = int(model.input_shape[1])
    dim = int(model.output_shape[-1])
    n = len(paths)
    caches = [FeatureCache(backbone, size, weights_tag, v, cache_root) for v in views]
    keys_all = [""] * n
    out = np.zeros((n, len(views), dim), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    errors: dict[int, str] = {}

    # Hash first (cheap) so that fully cached images are never decoded, and only the views an
    # image lacks are computed (adding views to a run reuses the ones already cached).
    todo: list[int] = []
    missing = np.zeros((n, len(views)), dtype=bool)
    for i, p in enumerate(paths):
        try:
            keys_all[i] = image_fingerprint(read_file_bytes(p))
        except ImageRejected as exc:  # too large or not a regular file: skipped like a corrupt image
            errors[i] = exc.message
            continue
        except OSError as exc:
            errors[i] = f"cannot read: {exc}"
            continue
        for v, c in enumerate(caches):
            hit = c.get(keys_all[i])
            if hit is None:
                missing[i, v] = True
            else:
                out[i, v] = hit
        if missing[i].any():
            todo.append(i)
        else:
            ok[i] = True

    if todo:
        model = _runner(model, int(missing.sum()))
        # The whole images' views, then the lesion crops' (each crop cut once from its decoded file, then
        # its views): an image that lacks views of both kinds is decoded twice.
        for crop in (False, True):
            group = [v for v, view in enumerate(views) if lesion.is_crop_view(view) == crop]
            part = [i for i in todo if i not in errors and missing[i, group].any()]  # unreadable: once
            if not part:
                continue
            bar = tqdm(total=len(part), desc=f"features {backbone}@{size}" + (" (lesion crops)" if crop else ""),
                       unit="img", disable=not progress)
            for batch, idx, _keys, errs in iter_image_batches([paths[i] for i in part], size, batch_size,
                                                              lesion_crop=crop):
                for j, msg in errs.items():
                    errors[part[j]] = msg
                if len(batch):
                    rows = np.array([part[j] for j in idx])
                    for v in group:
                        need = missing[rows, v]
                        if not need.any():
                            continue
                        feats = np.asarray(model.predict_on_batch(apply_view(batch[need], lesion.base_view(views[v]))),
                                           dtype=np.float32)
                        out[rows[need], v] = feats
                        caches[v].put_many([keys_all[r] for r in rows[need]], feats)
                        missing[rows[need], v] = False
                bar.update(len(idx) + len(errs))
            bar.close()
        ok[todo] = ~missing[todo].any(axis=1)
        ok[list(errors)] = False
        for c in caches:
            c.save()
    if errors:
        warnings.warn(f"{len(errors)} image(s) could not be read and were skipped", stacklevel=2)
    return out, ok, errors
