"""Headless helpers for the Voila dashboard: a sample image and a simulated upload.

Used by tests/test_dashboard.py and by the hidden (``voila-hide``) check cell of
``dashboards/lesion_uploader.ipynb``, which puts ``tests/`` on ``sys.path`` to import them.
"""
from __future__ import annotations

import datetime as dt
import io
from typing import Any


def sample_image() -> tuple[str, bytes]:
    """(name, JPEG bytes) of a test image: a real dermoscopic image from the shared dataset when
    it is present, otherwise a deterministic synthetic one so the check still runs."""
    from skinlesion.config import shared_dataset

    folder = shared_dataset() / "test" / "malignant"
    first = next(iter(sorted(folder.glob("*.jpg"))), None) if folder.is_dir() else None
    if first is not None:
        return first.name, first.read_bytes()
    import numpy as np
    from PIL import Image

    from skinlesion.data.synth import synth_image

    pixels = synth_image(1, np.random.default_rng(0), size=224)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=92)
    return "synthetic_malignant.jpg", buf.getvalue()


def upload_value(name: str, data: bytes, mime: str = "image/jpeg") -> tuple[dict[str, Any], ...]:
    """What ``FileUpload.value`` holds after a browser uploads one file (ipywidgets 8 layout).

    Assigning it to ``dashboard.upload.value`` runs the same callback as a real upload.
    """
    return ({
        "name": name,
        "type": mime,
        "size": len(data),
        "content": memoryview(bytes(data)),
        "last_modified": dt.datetime.now(dt.timezone.utc),
    },)
