"""skinlesion: dermoscopic skin lesion classification (benign vs malignant).

A research tool, not a medical device.
"""
from __future__ import annotations

import os

# TensorFlow's C++ INFO/WARNING lines drown out our own output and break notebook
# output comparison; users can still override these before importing us.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

DISCLAIMER = (
    "Research tool, not a medical device. It has not been clinically validated and must not be "
    "used to diagnose, treat or rule out skin cancer. See a dermatologist about any lesion that "
    "worries you."
)
CLASS_NAMES: tuple[str, str] = ("benign", "malignant")
