"""cxrdet: chest X-ray opacity detection, reproducing the RSNA and VinBigData winning recipes."""

__version__ = "0.1.0"
