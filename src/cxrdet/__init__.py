"""cxrdet: chest X-ray opacity detection, reproducing the RSNA and VinBigData winning recipes."""

import os

# Offline by design: albumentations asks PyPI for a newer version when it is first
# imported unless told not to; every cxrdet module imports this package first.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
