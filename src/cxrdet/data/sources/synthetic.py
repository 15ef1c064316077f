"""Deterministic synthetic chest X-rays, written in the real on-disk dataset formats.

`synthesize(out_dir, spec)` writes four datasets that the real parsers read, and returns
for each the canonical tables a correct parser must produce (the ground truth of the
parser tests). The same spec gives byte-identical CSVs and identical pixel data.

Layout (paths in the returned `images.path` are relative to the format's directory):

    rsna/stage_2_train_labels.csv         patientId,x,y,width,height,Target
    rsna/stage_2_detailed_class_info.csv  patientId,class (one row per box, as Kaggle's)
    rsna/stage_2_train_images/<patientId>.dcm
    vinbigdata/train.csv                  image_id,class_name,class_id,rad_id,
                                          x_min,y_min,x_max,y_max
    vinbigdata/train/<image_id>.dicom
    nih/Data_Entry_2017.csv               the real header, bracketed names included
    nih/BBox_List_2017.csv                the real header `Image Index,Finding Label,
                                          Bbox [x,y,w,h],,,`
    nih/images/<8-digit patient>_<3-digit follow-up>.png
    folder/images/<image_id>.{png,jpg,dcm}
    folder/annotations.csv                image_id,x,y,width,height,label (pixels)
    folder/images.csv                     image_id,label,patient_id
    samples.png                           a few images per format with their boxes

Conventions the parsers follow (and the returned tables encode):

- RSNA: image_id = patientId; one box class, class_id 0 "Lung Opacity"; image label = the
  detailed class; image_labels = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"];
  patient_id = patientId; sex/age/view from the DICOM header (PatientAge is a bare number
  string like "47", as in the Kaggle files).
- VinBigData: one box row per reader box (reader = rad_id); `No finding` (class 14) rows have
  empty box fields and give no box; class_names = the 14 finding names; image label
  "abnormal" if any reader marked a finding else "normal"; image_labels = ["normal",
  "abnormal"]; patient_id = image_id; width/height = DICOM Columns/Rows. Rows are shuffled
  as in the real file; a reader may miss a finding another reader marked (then, with no
  box left, that reader has a `No finding` row like in the real data).
- NIH: image_id = the PNG stem ("00000001_000"); patient_id = Patient ID as written ("1");
  width/height = the PNG size (NOT the OriginalImage[Width,Height] columns, which describe
  the pre-downscaling original as in the real file); label "abnormal"/"normal";
  image_labels = ["normal", "abnormal"]; class_names = NIH_FINDINGS; box class_id = index
  in NIH_FINDINGS. BBox_List spells Infiltration as "Infiltrate", as the real file does.
  targets = 15 int 0/1 columns (NIH_FINDINGS + "Abnormal") indexed like images.
- folder: image_id = file stem; class_names = sorted unique annotation labels;
  image_labels = sorted unique images.csv labels; images without annotation rows are
  negatives.

Box coordinates are integers, except NIH's (two decimals); the returned floats equal what
`float()` of the written text gives. Returned images follow file order; returned boxes
follow CSV row order (VinBigData rows are shuffled), so compare tables order-insensitively.

File details a reader must handle:

- NIH headers are the real ones: Data_Entry has 12 header fields (bracketed names split at
  their inner commas, plus a trailing empty one) over 11-field rows, so pandas reads columns
  "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", "Unnamed: 11";
  BBox_List has 9 header fields over 6-field rows: "Bbox [x", "y", "w", "h]", "Unnamed: 6..8".
- VinBigData DICOMs cycle through VINBIG_VARIANTS: MONOCHROME1 and 2; 8, 12, 14 and 16 bits
  stored; Implicit and Explicit VR Little Endian; RLE Lossless; JPEG 2000 Lossless; JPEG
  Baseline (8-bit, lossy, as the real RSNA files use); Rescale Slope/Intercept; Window
  Center/Width spanning the stored range. Stored values use only part of the bit range.
  JPEG-LS is not written: pydicom has no JPEG-LS encoder without pyjpegls.
- RSNA DICOMs are 8-bit MONOCHROME2, Explicit VR Little Endian, Secondary Capture, with the
  Kaggle header (PatientID, PatientSex, PatientAge, ViewPosition, Modality CR, ...).
- folder images are 8-bit: PNG, JPEG (quality 95) and DICOM, cycling by index.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pydicom import config as dicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)
from scipy import ndimage
from tqdm import tqdm

from cxrdet.data.tables import SourceTables, conform_boxes, conform_images, empty_boxes
from cxrdet.viz import sample_grid

RSNA_BOX_CLASS = "Lung Opacity"
RSNA_LABELS = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]
VINBIG_CLASSES = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
]
VINBIG_NO_FINDING = (14, "No finding")
NIH_FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
NIH_TARGETS = [*NIH_FINDINGS, "Abnormal"]
BINARY_LABELS = ["normal", "abnormal"]

NIH_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
# The NIH box list names one finding differently from Data_Entry.
NIH_BBOX_SPELLING = {"Infiltration": "Infiltrate"}

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"
Box = tuple[int, int, int, int]  # x, y, w, h in pixels


@dataclass(frozen=True)
class DemoSpec:
    seed: int = 2018
    image_size: int = 256  # RSNA/NIH/folder side; VinBigData sizes vary around it (non-square)
    rsna_images: int = 120
    vinbigdata_images: int = 40
    nih_images: int = 160
    folder_images: int = 24

    def __post_init__(self) -> None:
        if self.image_size < 64:
            raise ValueError(f"image_size must be at least 64 pixels, got {self.image_size}")
        counts = {
            n: getattr(self, n)
            for n in ("rsna_images", "vinbigdata_images", "nih_images", "folder_images")
        }
        small = {name: count for name, count in counts.items() if count < 1}
        if small:
            raise ValueError(f"image counts must be at least 1, got {small}")


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class Anatomy:
    """One patient's geometry in normalised units.

    X runs across the image in half-widths from the body midline (image right = patient
    left, as in a PA film); Y runs down the image in heights.
    """

    center: float  # body midline, fraction of the image width
    tilt: float  # degrees
    body: float  # trunk half-width (X)
    apex: float  # lung apices (Y)
    base: float  # patient-left costophrenic angle (Y); the right one sits a little higher
    lateral: float  # lateral lung borders (X)
    medial: float  # medial lung borders (X)
    dome: float  # diaphragm dome height, fraction of lung height
    heart_x: float
    heart_y: float
    heart_w: float  # semi-axes (X, Y)
    heart_h: float
    knob: float  # aortic knob radius (X)
    lung_density: float  # how much less dense aerated lung is than soft tissue
    markings: float  # vascular marking strength
    rib_phase: float  # vertical offset of the rib cage (Y)
    gastric_bubble: bool
    brightness: float
    contrast: float
    gamma: float


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    apex = rng.uniform(0.10, 0.15)
    base = rng.uniform(0.72, 0.80)
    return Anatomy(
        center=0.5 + rng.normal(0, 0.015),
        tilt=float(np.clip(rng.normal(0, 1.8), -4, 4)),
        body=rng.uniform(0.93, 1.02),
        apex=apex,
        base=base,
        lateral=rng.uniform(0.72, 0.80),
        medial=rng.uniform(0.08, 0.11),
        dome=rng.uniform(0.12, 0.18),
        heart_x=rng.uniform(0.10, 0.15),
        heart_y=base - rng.uniform(0.02, 0.05),
        heart_w=rng.uniform(0.33, 0.38),
        heart_h=rng.uniform(0.12, 0.15),
        knob=rng.uniform(0.04, 0.05),
        lung_density=rng.uniform(0.30, 0.38),
        markings=rng.uniform(0.8, 1.2),
        rib_phase=rng.uniform(-0.015, 0.015),
        gastric_bubble=bool(rng.random() < 0.6),
        brightness=rng.uniform(-0.04, 0.04),
        contrast=rng.uniform(0.95, 1.1),
        gamma=rng.uniform(0.85, 1.15),
    )


# Findings that change the anatomy itself rather than adding a lesion on top.
_ANATOMY_CHANGES: dict[str, Callable[[Anatomy, np.random.Generator], Anatomy]] = {
    "cardiomegaly": lambda a, rng: replace(a, heart_w=a.heart_w * rng.uniform(1.3, 1.45)),
    "aortic": lambda a, rng: replace(a, knob=a.knob * rng.uniform(1.6, 1.9)),
    "emphysema": lambda a, rng: replace(
        a,
        lateral=a.lateral + 0.04,
        base=a.base + 0.04,
        dome=a.dome * 0.4,
        lung_density=a.lung_density * 1.15,
        markings=a.markings * 0.5,
    ),
}


@dataclass
class Lesion:
    kind: str
    box: Box
    mask: np.ndarray  # bool, the finding's extent


@dataclass
class Chest:
    image: np.ndarray  # float32 in [0, 1], higher = denser (brighter)
    lungs: np.ndarray  # bool, the aerated lung fields before any finding
    lesions: list[Lesion]

    def to_uint8(self) -> np.ndarray:
        return np.round(self.image * 255).astype(np.uint8)


@dataclass
class _Scene:
    """Coordinate grids and anatomical masks that the finding painters draw into."""

    anatomy: Anatomy
    xx: np.ndarray  # pixel grids
    yy: np.ndarray
    X: np.ndarray  # normalised (rotated) coordinates
    Y: np.ndarray
    px: float  # pixels per X unit
    py: float  # pixels per Y unit
    side_lungs: list[np.ndarray]  # soft masks, image-left then image-right lung
    side_ut: list[tuple[np.ndarray, np.ndarray]]  # per-lung (u across, t down), 0..1 inside
    heart: np.ndarray
    knob: np.ndarray
    markings: np.ndarray = field(init=False)  # vessel texture (pneumothorax removes it)
    density: np.ndarray = field(init=False)
    occupied: np.ndarray = field(init=False)
    _edge_distance: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.occupied = np.zeros(self.X.shape, bool)

    @property
    def lungs(self) -> np.ndarray:
        return np.maximum(*self.side_lungs)

    def lung_hard(self, side: int) -> np.ndarray:
        return self.side_lungs[side] > 0.5

    def edge_distance(self, side: int) -> np.ndarray:
        if side not in self._edge_distance:
            self._edge_distance[side] = ndimage.distance_transform_edt(self.lung_hard(side))
        return self._edge_distance[side]

    def pick_point(
        self, rng: np.random.Generator, side: int, clearance: float
    ) -> tuple[float, float]:
        """A random (y, x) inside one lung, away from its border and from earlier lesions,
        favouring the lower zones where pneumonia usually sits."""
        inside = self.lung_hard(side)
        free = ndimage.distance_transform_edt(~self.occupied) if self.occupied.any() else np.inf
        for scale in (1.0, 0.5, 0.0):
            candidates = (
                inside & (self.edge_distance(side) > clearance * scale) & (free > clearance * scale)
            )
            if candidates.any():
                break
        else:
            candidates = inside
        index = np.flatnonzero(candidates)
        weight = 0.3 + np.clip(self.side_ut[side][1].ravel()[index], 0, 1)
        chosen = rng.choice(index, p=weight / weight.sum())
        return float(chosen // self.X.shape[1]), float(chosen % self.X.shape[1])

    def add(self, layer: np.ndarray, mask: np.ndarray, kind: str) -> Lesion:
        self.density += layer
        self.occupied |= mask
        return Lesion(kind, _mask_box(mask), mask)


def _smoothstep(low: float, high: float, value: np.ndarray) -> np.ndarray:
    t = np.clip((value - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _soft(margin_px: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """0 outside, 1 inside, a ~2*edge pixel ramp across a border at margin 0."""
    return 0.5 * (1.0 + np.tanh(margin_px / edge))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian-filtered noise; large sigmas are made at low resolution (fast)."""
    factor = max(1, int(sigma // 3))
    small = (shape[0] // factor + 2, shape[1] // factor + 2)
    noise = ndimage.gaussian_filter(
        rng.standard_normal(small, dtype=np.float32), sigma / factor, mode="wrap"
    )
    if factor > 1:
        noise = ndimage.zoom(noise, factor, order=1)
    noise = noise[: shape[0], : shape[1]]
    return ((noise - noise.mean()) / (noise.std() + 1e-9)).astype(np.float32)


def _mask_box(mask: np.ndarray) -> Box:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _build_scene(anatomy: Anatomy, height: int, width: int) -> _Scene:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Python floats keep the float32 grids float32 (numpy scalars would promote to float64).
    cos, sin = math.cos(math.radians(anatomy.tilt)), math.sin(math.radians(anatomy.tilt))
    cy, cx = (height - 1) / 2, (width - 1) / 2
    xr = cos * (xx - cx) + sin * (yy - cy) + cx
    yr = -sin * (xx - cx) + cos * (yy - cy) + cy
    px, py = width / 2, float(height)
    X = (xr - anatomy.center * width) / px
    Y = yr / py
    side_ut = [_lung_coordinates(anatomy, X, Y, side) for side in (0, 1)]
    heart = _heart_mask(anatomy, X, Y, px, py)
    knob = _soft(
        anatomy.knob * px
        - np.hypot((X - anatomy.medial - 0.015) * px, (Y - anatomy.apex - 0.2) * py)
    )
    side_lungs = [_lung_mask(anatomy, u, t, px, py) * (1 - heart) * (1 - knob) for u, t in side_ut]
    return _Scene(anatomy, xx, yy, X, Y, px, py, side_lungs, side_ut, heart, knob)


def _lung_coordinates(
    anatomy: Anatomy, X: np.ndarray, Y: np.ndarray, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """u: 0 at the medial border, 1 at the lateral one; t: 0 at the apex, 1 at the lowest point."""
    lateral = X if side == 1 else -X
    base = anatomy.base if side == 1 else anatomy.base - 0.025  # liver lifts the right side
    u = (lateral - anatomy.medial) / (anatomy.lateral - anatomy.medial)
    t = (Y - anatomy.apex) / (base - anatomy.apex)
    return u, t


def _lung_mask(anatomy: Anatomy, u: np.ndarray, t: np.ndarray, px: float, py: float) -> np.ndarray:
    """Rounded apex widening downwards, domed diaphragm below, sharp costophrenic angle."""
    width_px = (anatomy.lateral - anatomy.medial) * px
    height_px = (anatomy.base - anatomy.apex) * py
    grow = np.clip(t / 0.7, 0, 1)
    centre = 0.38 + 0.12 * grow
    half = (0.30 + 0.20 * grow) * np.sqrt(1 - (1 - np.clip(t / 0.35, 0, 1)) ** 2)
    across = (half - np.abs(u - centre)) * width_px
    floor = 1 - anatomy.dome * np.clip(np.sin(np.pi * np.clip(u, 0, 1) ** 1.2), 0, 1) ** 0.5
    down = (floor - t) * height_px
    return _soft(np.minimum(np.where(t > 0, across, t * height_px), down), 1.2)


def _heart_mask(anatomy: Anatomy, X: np.ndarray, Y: np.ndarray, px: float, py: float) -> np.ndarray:
    # An ellipse tilted so the apex points down towards the patient's left.
    cos, sin = math.cos(math.radians(-18)), math.sin(math.radians(-18))
    dx, dy = (X - anatomy.heart_x) * px, (Y - anatomy.heart_y) * py
    along = cos * dx - sin * dy
    across = sin * dx + cos * dy
    r = np.hypot(along / (anatomy.heart_w * px), across / (anatomy.heart_h * py))
    return _soft((1 - r) * min(anatomy.heart_w * px, anatomy.heart_h * py), 1.5)


def _compose(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Density map of the normal chest: body, lungs, mediastinum, bones, markings."""
    a, X, Y, px, py = scene.anatomy, scene.X, scene.Y, scene.px, scene.py
    body_half = a.body * (0.45 + 0.55 * _smoothstep(0.0, a.apex + 0.02, Y))
    body = _soft((body_half - np.abs(X)) * px, 2.5)
    thickness = np.sqrt(np.clip(1 - (X / body_half) ** 2, 0, 1))
    density = body * (0.42 + 0.2 * thickness)
    # Heart and abdomen share one soft-tissue level so the heart's lower edge disappears.
    density += 0.05 * body * np.maximum(scene.heart, _smoothstep(a.base - 0.12, a.base + 0.06, Y))

    lungs = scene.lungs
    t = np.maximum(np.where(X < 0, scene.side_ut[0][1], scene.side_ut[1][1]), 0)
    inner = np.clip(ndimage.gaussian_filter(lungs, 0.025 * px) * 1.8, 0, 1)  # thinner lung at edges
    darkening = (
        a.lung_density * (1 - 0.3 * _smoothstep(0.55, 1.0, t)) * (1 - 0.25 * np.exp(-t / 0.12))
    )
    density -= lungs * inner * darkening

    density += 0.03 * scene.knob
    spine = _soft((0.05 - np.abs(X)) * px, 1.5) * body
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * (Y - a.rib_phase) / 0.045)
    density += spine * (0.035 + 0.025 * vertebrae**4) * (1 - 0.5 * scene.heart)
    trachea = _soft((0.028 - np.abs(X - 0.005)) * px, 1.5) * (
        1 - _smoothstep(a.apex + 0.12, a.apex + 0.2, Y)
    )
    density -= 0.10 * trachea * body
    if a.gastric_bubble:
        bubble = np.hypot((X - 0.32) * px / 0.07, (Y - a.base - 0.04) * py / 0.035) / px
        density -= 0.12 * _soft((1 - bubble) * 8, 1.0) * body

    density += _bones(scene, lungs) * body
    density += _hila(scene, lungs)
    scene.markings = _vessels(scene, rng, lungs)
    density += scene.markings
    return density


def _bones(scene: _Scene, lungs: np.ndarray) -> np.ndarray:
    """Clavicles, posterior ribs (bright bands curving down laterally) and fainter anterior ribs."""
    a, X, Y, py = scene.anatomy, scene.X, scene.Y, scene.py
    reach = np.abs(X)
    clavicle_y = a.apex + 0.045 - 0.13 * reach + 0.05 * reach**2
    clavicle = np.exp(-(((Y - clavicle_y) * py / (0.012 * py + 1)) ** 4))
    clavicle *= _smoothstep(0.04, 0.08, reach) * (1 - _smoothstep(0.58, 0.68, reach))

    # Posterior ribs leave the spine rising slightly, then arc down along the lateral wall.
    spacing = 0.078
    posterior_y = (Y - a.apex + 0.03 - a.rib_phase + 0.12 * reach - 0.42 * reach**2) / spacing
    nearest = np.round(posterior_y)
    offset = (posterior_y - nearest) * spacing * py
    thick = (0.010 + 0.006 * reach) * py + 0.5
    edge = np.abs(offset / thick)
    rib = np.exp(-(edge**4)) * (0.75 + 0.25 * edge**2)  # the cortex is brighter than the middle
    rib *= (nearest >= 0) & (nearest <= 8)
    rib *= _smoothstep(0.04, 0.1, reach) * (
        1 - _smoothstep(a.lateral + 0.04, a.lateral + 0.14, reach)
    )

    # Anterior ribs run down towards the midline and fade where cartilage takes over.
    anterior_y = (Y - a.apex - 0.04 - 0.3 * (a.lateral - reach)) / 0.09
    a_offset = (anterior_y - np.round(anterior_y)) * 0.09 * py
    anterior = np.exp(-((a_offset / (0.011 * py + 0.5)) ** 2)) * _smoothstep(0.3, 0.5, reach)
    anterior *= (1 - _smoothstep(a.lateral - 0.05, a.lateral + 0.05, reach)) * (Y < a.base - 0.05)
    return 0.12 * clavicle + (0.045 * rib + 0.022 * anterior) * (0.25 + 0.75 * lungs)


def _hila(scene: _Scene, lungs: np.ndarray) -> np.ndarray:
    a, X, Y, px, py = scene.anatomy, scene.X, scene.Y, scene.px, scene.py
    hy = a.apex + 0.32 * (a.base - a.apex)
    blobs = sum(
        np.exp(
            -(((X - s * (a.medial + 0.08)) * px) ** 2 + ((Y - hy) * py) ** 2)
            / (2 * (0.045 * py) ** 2)
        )
        for s in (-1, 1)
    )
    return 0.10 * blobs * lungs


def _vessels(scene: _Scene, rng: np.random.Generator, lungs: np.ndarray) -> np.ndarray:
    """Branching-looking vessel markings: ridges (zero crossings) of smooth noise, strongest
    near the hila and fading to the periphery."""
    a, X, Y = scene.anatomy, scene.X, scene.Y
    size = min(X.shape)
    coarse = _smooth_noise(rng, X.shape, 0.018 * size)
    fine = _smooth_noise(rng, X.shape, 0.008 * size)
    ridges = 0.6 * np.exp(-((coarse / 0.18) ** 2)) + 0.4 * np.exp(-((fine / 0.22) ** 2))
    hy = a.apex + 0.35 * (a.base - a.apex)
    hilar = np.exp(-np.hypot(np.abs(X) - a.medial - 0.08, (Y - hy) * 1.4) / 0.35)
    return (0.07 * a.markings * ridges * (0.2 + hilar) * lungs).astype(np.float32)


# ------------------------------------------------------------------- finding painters


def _opacity(
    scene: _Scene, rng: np.random.Generator, amp: tuple[float, float] = (0.16, 0.26)
) -> Lesion:
    """Consolidation: an irregular blob of a few merged Gaussians, patchy, inside one lung."""
    side = int(rng.integers(2))
    size = min(scene.X.shape)
    radius = rng.uniform(0.07, 0.11) * size
    cy, cx = scene.pick_point(rng, side, 0.6 * radius)
    count = int(rng.integers(2, 6))
    offsets = np.vstack([[0.0, 0.0], rng.normal(0, 0.45 * radius, (count - 1, 2))])
    sigmas = rng.uniform(0.3, 0.55, count) * radius
    weights = np.concatenate([[1.0], rng.uniform(0.5, 0.9, count - 1)])
    blob = sum(
        w * np.exp(-((scene.yy - cy - dy) ** 2 + (scene.xx - cx - dx) ** 2) / (2 * s**2))
        for (dy, dx), s, w in zip(offsets, sigmas, weights, strict=True)
    )
    blob *= 0.85 + 0.15 * _smooth_noise(rng, blob.shape, 0.15 * radius)  # patchy
    lung = scene.side_lungs[side]
    blob /= blob[lung > 0.5].max()  # peak inside the lung is 1: the mask is never empty
    mask = (blob > 0.4) & (lung > 0.5)
    return scene.add(rng.uniform(*amp) * _smoothstep(0.25, 0.65, blob) * lung, mask, "opacity")


def _faint_opacity(scene: _Scene, rng: np.random.Generator) -> Lesion:
    lesion = _opacity(scene, rng, amp=(0.12, 0.17))
    lesion.kind = "faint_opacity"
    return lesion


def _round_lesion(
    scene: _Scene, rng: np.random.Generator, kind: str, radius_range: tuple[float, float]
) -> Lesion:
    """Nodule or mass: a sharp-edged, slightly lobulated round density."""
    side = int(rng.integers(2))
    radius = max(2.5, rng.uniform(*radius_range) * min(scene.X.shape))
    cy, cx = scene.pick_point(rng, side, radius + 2)
    dy, dx = scene.yy - cy, scene.xx - cx
    lobes = 1 + 0.12 * np.sin(3 * np.arctan2(dy, dx) + rng.uniform(0, 2 * np.pi))
    r = np.hypot(dy, dx) / (radius * lobes)
    profile = ndimage.gaussian_filter(np.sqrt(np.clip(1 - r**2, 0, 1)), 0.7)
    lung = scene.side_lungs[side]
    mask = (r <= 1) & (lung > 0.5)
    return scene.add(rng.uniform(0.16, 0.26) * profile * lung, mask, kind)


def _effusion(scene: _Scene, rng: np.random.Generator) -> Lesion:
    """Fluid filling the lung base with a meniscus climbing laterally (blunted angle)."""
    side = int(rng.integers(2))
    u, t = scene.side_ut[side]
    a = scene.anatomy
    level = rng.uniform(0.72, 0.86) - 0.25 * np.clip(u, 0, 1) ** 2
    margin = (t - level) * (a.base - a.apex) * scene.py
    lung = scene.side_lungs[side]
    mask = (margin > 0) & (lung > 0.5)
    layer = a.lung_density * rng.uniform(0.8, 1.0) * _smoothstep(-2, 6, margin) * lung
    return scene.add(layer, mask, "effusion")


def _cardiomegaly(scene: _Scene, rng: np.random.Generator) -> Lesion:
    # The enlargement itself is an anatomy change; the box is the visible heart shadow.
    mask = (scene.heart > 0.5) & (scene.Y < scene.anatomy.base + 0.01)
    return Lesion("cardiomegaly", _mask_box(mask), mask)


def _aortic(scene: _Scene, rng: np.random.Generator) -> Lesion:
    return scene.add(0.04 * scene.knob, scene.knob > 0.5, "aortic")


def _pleural_thickening(scene: _Scene, rng: np.random.Generator) -> Lesion:
    """A dense band along the apical or lateral pleura."""
    side = int(rng.integers(2))
    u, t = scene.side_ut[side]
    band = scene.edge_distance(side) < rng.uniform(0.012, 0.022) * min(scene.X.shape) + 1
    zone = (
        (t < rng.uniform(0.2, 0.3)) if rng.random() < 0.5 else ((u > 0.75) & (t > 0.3) & (t < 0.75))
    )
    mask = band & zone & scene.lung_hard(side)
    layer = 0.22 * ndimage.gaussian_filter(mask.astype(np.float32), 1.0) * scene.side_lungs[side]
    return scene.add(layer, mask, "pleural_thickening")


def _pneumothorax(scene: _Scene, rng: np.random.Generator) -> Lesion:
    """Apical-lateral air rim: no lung markings, darker, a thin bright visceral pleural line."""
    side = int(rng.integers(2))
    u, t = scene.side_ut[side]
    rim = rng.uniform(0.04, 0.07) * min(scene.X.shape)
    distance = scene.edge_distance(side)
    inside = scene.lung_hard(side) & (t < rng.uniform(0.55, 0.8))
    mask = inside & (distance < rim)
    line = np.exp(-(((distance - rim) / 0.8) ** 2)) * inside
    layer = -scene.markings * mask - 0.06 * mask + 0.10 * line
    return scene.add(layer, mask, "pneumothorax")


def _atelectasis(scene: _Scene, rng: np.random.Generator) -> Lesion:
    """Plate-like (linear) density, roughly horizontal, in a lower zone."""
    side = int(rng.integers(2))
    size = min(scene.X.shape)
    long, short = rng.uniform(0.05, 0.09) * size, rng.uniform(0.008, 0.014) * size + 0.8
    cy, cx = scene.pick_point(rng, side, long * 0.5)
    angle = np.deg2rad(rng.uniform(-25, 25))
    along = np.cos(angle) * (scene.xx - cx) + np.sin(angle) * (scene.yy - cy)
    across = -np.sin(angle) * (scene.xx - cx) + np.cos(angle) * (scene.yy - cy)
    plate = np.exp(-(along**2) / (2 * long**2) - across**2 / (2 * short**2))
    lung = scene.side_lungs[side]
    mask = (plate > 0.3) & (lung > 0.5)
    return scene.add(rng.uniform(0.16, 0.24) * plate * lung, mask, "atelectasis")


def _edema(scene: _Scene, rng: np.random.Generator) -> Lesion:
    """Bilateral perihilar haze (bat-wing)."""
    a, X, Y = scene.anatomy, scene.X, scene.Y
    hy = a.apex + 0.4 * (a.base - a.apex)
    haze = np.exp(-((np.abs(X) - a.medial - 0.12) ** 2 / 0.06 + (Y - hy) ** 2 / 0.03))
    mask = (haze > 0.35) & (scene.lungs > 0.5)
    return scene.add(rng.uniform(0.10, 0.15) * haze * scene.lungs, mask, "edema")


def _emphysema(scene: _Scene, rng: np.random.Generator) -> Lesion:
    # Bigger, darker, flatter lungs come from the anatomy change.
    mask = scene.lungs > 0.5
    return Lesion("emphysema", _mask_box(mask), mask)


def _fibrosis(scene: _Scene, rng: np.random.Generator) -> Lesion:
    """Reticular (net-like) densities in the lower, peripheral zone of one lung."""
    side = int(rng.integers(2))
    u, t = scene.side_ut[side]
    net = np.exp(
        -((_smooth_noise(rng, scene.X.shape, 0.006 * min(scene.X.shape) + 0.6) / 0.3) ** 2)
    )
    zone = _smoothstep(0.35, 0.8, t) * _smoothstep(0.2, 0.7, u)
    lung = scene.side_lungs[side]
    mask = (zone > 0.3) & (lung > 0.5)
    return scene.add(0.12 * net * zone * lung, mask, "fibrosis")


def _hernia(scene: _Scene, rng: np.random.Generator) -> Lesion:
    """Hiatal hernia: a round retrocardiac density with an air-fluid level."""
    a = scene.anatomy
    radius = 0.07 * scene.px
    cy, cx = (a.base - 0.06) * scene.py, (a.center + 0.02) * scene.xx.shape[1]
    r = np.hypot(scene.yy - cy, scene.xx - cx) / radius
    disc = _soft((1 - r) * radius, 1.0)
    air = disc * (scene.yy < cy - 0.2 * radius)
    return scene.add(0.08 * disc - 0.14 * air, r <= 1, "hernia")


_PAINTERS: dict[str, Callable[[_Scene, np.random.Generator], Lesion]] = {
    "opacity": _opacity,
    "faint_opacity": _faint_opacity,
    "nodule": lambda s, rng: _round_lesion(s, rng, "nodule", (0.014, 0.03)),
    "mass": lambda s, rng: _round_lesion(s, rng, "mass", (0.04, 0.065)),
    "effusion": _effusion,
    "cardiomegaly": _cardiomegaly,
    "aortic": _aortic,
    "pleural_thickening": _pleural_thickening,
    "pneumothorax": _pneumothorax,
    "atelectasis": _atelectasis,
    "edema": _edema,
    "emphysema": _emphysema,
    "fibrosis": _fibrosis,
    "hernia": _hernia,
}
FINDING_KINDS = tuple(_PAINTERS)


def render_chest(
    anatomy: Anatomy,
    rng: np.random.Generator,
    height: int,
    width: int,
    findings: Sequence[str] = (),
) -> Chest:
    """A chest radiograph with the given findings (kinds from FINDING_KINDS) and their extents."""
    unknown = sorted(set(findings) - set(_PAINTERS))
    if unknown:
        raise ValueError(f"unknown finding kinds {unknown}; known: {list(_PAINTERS)}")
    for kind in findings:
        if kind in _ANATOMY_CHANGES:
            anatomy = _ANATOMY_CHANGES[kind](anatomy, rng)
    scene = _build_scene(anatomy, height, width)
    lungs = scene.lungs > 0.5
    scene.density = _compose(scene, rng)
    lesions = [_PAINTERS[kind](scene, rng) for kind in findings]
    return Chest(_expose(scene, rng), lungs, lesions)


def _expose(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Density -> detector image: tone curve, slow exposure drift, a little blur and noise."""
    a = scene.anatomy
    drift = 0.03 * _smooth_noise(rng, scene.X.shape, 0.2 * min(scene.X.shape))
    image = (
        np.clip(a.brightness + a.contrast * (scene.density + drift * (scene.density > 0.1)), 0, 1)
        ** a.gamma
    )
    image = ndimage.gaussian_filter(image, 0.6) + 0.012 * rng.standard_normal(
        image.shape, dtype=np.float32
    )
    return np.clip(image, 0, 1).astype(np.float32)


# ------------------------------------------------------------------------ encoding


@dataclass(frozen=True)
class _DicomVariant:
    """How one VinBigData file stores its pixels (cycled by image index)."""

    name: str
    photometric: str
    bits: int  # Bits Stored; 8 means uint8 storage, otherwise uint16
    syntax: UID
    rescale: bool = False  # Rescale Slope/Intercept that a reader must apply
    window: bool = False  # Window Center/Width covering the stored range


VINBIG_VARIANTS: tuple[_DicomVariant, ...] = (
    _DicomVariant("mono2-12bit-implicit", "MONOCHROME2", 12, ImplicitVRLittleEndian),
    _DicomVariant("mono1-12bit-window", "MONOCHROME1", 12, ExplicitVRLittleEndian, window=True),
    _DicomVariant("mono2-16bit-rescale", "MONOCHROME2", 16, ExplicitVRLittleEndian, rescale=True),
    _DicomVariant("mono1-16bit-rle", "MONOCHROME1", 16, RLELossless),
    _DicomVariant("mono2-12bit-j2k", "MONOCHROME2", 12, JPEG2000Lossless, window=True),
    _DicomVariant("mono1-14bit-j2k-rescale", "MONOCHROME1", 14, JPEG2000Lossless, rescale=True),
    _DicomVariant("mono2-8bit-jpeg-baseline", "MONOCHROME2", 8, JPEGBaseline8Bit),
)
# pylibjpeg-rle is ~10x faster than pydicom's pure-Python RLE encoder.
_ENCODING_PLUGINS = {RLELossless: "pylibjpeg", JPEG2000Lossless: "pylibjpeg"}


def _uid(*keys: object) -> UID:
    """A deterministic UID: the same keys always give the same UID."""
    return generate_uid(entropy_srcs=[str(key) for key in keys])


def _new_dicom(sop_class: str, instance_uid: UID, syntax: UID, tags: dict[str, Any]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    for keyword, value in tags.items():
        if keyword == "PatientAge":
            # Kaggle's RSNA files hold bare numbers ("47"), which are not valid AS values.
            ds.add(DataElement(0x00101010, "AS", value, validation_mode=dicom_config.IGNORE))
        else:
            setattr(ds, keyword, value)
    return ds


def _write_dicom(path: Path, ds: Dataset, pixels: np.ndarray, photometric: str, bits: int) -> None:
    """Set the pixels in the dataset's transfer syntax (compressing when it says so) and save."""
    syntax = ds.file_meta.TransferSyntaxUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax.is_compressed else syntax
    ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    if syntax == JPEGBaseline8Bit:
        # pydicom has no JPEG baseline encoder: encode with Pillow and encapsulate.
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif syntax.is_compressed:
        ds.compress(
            syntax, pixels, encoding_plugin=_ENCODING_PLUGINS[syntax], generate_instance_uid=False
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _stored_pixels(
    image: np.ndarray, variant: _DicomVariant, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Detector values on part of the bit range, inverted for MONOCHROME1, plus the LUT tags."""
    top = 2**variant.bits - 1
    if variant.bits == 8:
        low, span = 0.0, float(top)
    else:
        low, span = rng.uniform(0.02, 0.12) * top, rng.uniform(0.55, 0.85) * top
    values = np.round(low + image * span)
    stored = top - values if variant.photometric == "MONOCHROME1" else values
    stored = stored.astype(np.uint8 if variant.bits == 8 else np.uint16)
    tags: dict[str, Any] = {}
    slope, intercept = (0.5, -1024.0) if variant.rescale else (1.0, 0.0)
    if variant.rescale:
        tags.update(RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="US")
    if variant.window:
        lowest, highest = (float(v) * slope + intercept for v in (stored.min(), stored.max()))
        tags.update(
            WindowCenter=round((lowest + highest) / 2, 1),
            WindowWidth=round(highest - lowest + 1, 1),
        )
    return stored, tags


def _save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path, format="PNG", compress_level=1)  # speed over size


def _save_jpeg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path, format="JPEG", quality=95)


def _write_csv(path: Path, header: Sequence[str] | str, rows: Iterable[Sequence[Any]]) -> None:
    """Rows as text exactly as given; a str header is written verbatim (NIH's odd headers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if isinstance(header, str):
            handle.write(header + "\n")
        else:
            writer.writerow(header)
        writer.writerows(rows)


def _coordinate(value: float) -> str:
    """Kaggle writes pixel coordinates as floats ("264.0")."""
    return f"{value:.1f}"


# ------------------------------------------------------------------------ helpers


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent stream per (format, image): changing one count never shifts another."""
    entropy = [seed] + [zlib.crc32(key.encode()) if isinstance(key, str) else key for key in keys]
    return np.random.default_rng(entropy)


def _allocate(rng: np.random.Generator, n: int, shares: dict[str, float]) -> list[str]:
    """Exactly proportional labels (largest remainder), every label at least once when n allows."""
    names = list(shares)
    exact = np.array([shares[name] for name in names]) * n / sum(shares.values())
    counts = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[index] += 1
    while n >= len(names) and (counts == 0).any():
        counts[np.argmax(counts)] -= 1
        counts[np.argmin(counts)] += 1
    return [str(label) for label in rng.permutation(np.repeat(names, counts))]


@dataclass
class _Sample:
    """Keeps a few images per format for samples.png: boxed ones first, then one negative."""

    fmt: str
    wanted_boxed: int = 2
    wanted_plain: int = 1
    items: list[tuple[np.ndarray, pd.DataFrame, str]] = field(default_factory=list)
    _boxed: int = 0
    _plain: int = 0

    def offer(self, pixels: np.ndarray, boxes: list[dict[str, Any]], title: str) -> None:
        if boxes and self._boxed < self.wanted_boxed:
            self._boxed += 1
        elif not boxes and self._plain < self.wanted_plain:
            self._plain += 1
        else:
            return
        table = pd.DataFrame(boxes, columns=["x", "y", "w", "h", "class_id", "class_name"])
        item = (pixels, table, f"{self.fmt}: {title}")
        self.items.insert(self._boxed - 1 if boxes else len(self.items), item)


def _box_row(
    image_id: str, box: Sequence[float], class_id: int, class_name: str, reader: str | None = None
) -> dict[str, Any]:
    x, y, w, h = (float(v) for v in box)
    return dict(
        image_id=image_id,
        x=x,
        y=y,
        w=w,
        h=h,
        class_id=class_id,
        class_name=class_name,
        reader=reader,
    )


def _boxes_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return conform_boxes(pd.DataFrame(rows)) if rows else empty_boxes()


def _progress(total: int, name: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=f"synthesize {name}", unit="img", disable=not enabled)


# --------------------------------------------------------------------------- RSNA

_RSNA_OTHER = (
    "cardiomegaly",
    "effusion",
    "nodule",
    "fibrosis",
    "pleural_thickening",
    "atelectasis",
    "emphysema",
    "hernia",
)


def _write_rsna(root: Path, spec: DemoSpec, progress: bool) -> tuple[SourceTables, _Sample]:
    size = spec.image_size
    labels = _allocate(
        _rng(spec.seed, "rsna"),
        spec.rsna_images,
        {"Lung Opacity": 0.25, "No Lung Opacity / Not Normal": 0.40, "Normal": 0.35},
    )
    label_rows, class_rows, images, boxes = [], [], [], []
    sample = _Sample("rsna")
    with _progress(len(labels), "rsna", progress) as bar:
        for index, label in enumerate(labels):
            rng = _rng(spec.seed, "rsna", index)
            patient = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            sex = "M" if rng.random() < 0.55 else "F"
            age = int(np.clip(rng.normal(47, 16), 2, 90))
            view = "AP" if rng.random() < (0.6 if label == "Lung Opacity" else 0.35) else "PA"
            chest = render_chest(sample_anatomy(rng), rng, size, size, _rsna_findings(rng, label))
            pixels = chest.to_uint8()
            tags = _rsna_tags(patient, sex, age, view, size)
            ds = _new_dicom(
                SECONDARY_CAPTURE, _uid(spec.seed, "rsna", patient), ExplicitVRLittleEndian, tags
            )
            path = f"stage_2_train_images/{patient}.dcm"
            _write_dicom(root / path, ds, pixels, "MONOCHROME2", 8)

            found = [lesion.box for lesion in chest.lesions if label == "Lung Opacity"]
            label_rows += [[patient, *map(_coordinate, box), 1] for box in found] or [
                [patient, "", "", "", "", 0]
            ]
            class_rows += [[patient, label]] * max(1, len(found))
            boxes += [_box_row(patient, box, 0, RSNA_BOX_CLASS) for box in found]
            images.append(
                dict(
                    image_id=patient,
                    path=path,
                    width=size,
                    height=size,
                    label=label,
                    patient_id=patient,
                    sex=sex,
                    age=age,
                    view=view,
                )
            )
            sample.offer(
                pixels,
                [
                    dict(zip("xywh", box, strict=True), class_id=0, class_name=RSNA_BOX_CLASS)
                    for box in found
                ],
                label,
            )
            bar.update()
    _write_csv(
        root / "stage_2_train_labels.csv",
        ["patientId", "x", "y", "width", "height", "Target"],
        label_rows,
    )
    _write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], class_rows)
    tables = SourceTables(
        conform_images(pd.DataFrame(images)),
        _boxes_table(boxes),
        [RSNA_BOX_CLASS],
        list(RSNA_LABELS),
    )
    return tables, sample


def _rsna_findings(rng: np.random.Generator, label: str) -> list[str]:
    if label == "Lung Opacity":
        return ["opacity"] * int(rng.choice([1, 2, 3], p=[0.35, 0.55, 0.10]))
    if label == "Normal":
        return []
    count = int(rng.choice([1, 2], p=[0.7, 0.3]))
    return [str(kind) for kind in rng.choice(_RSNA_OTHER, count, replace=False)]


def _rsna_tags(patient: str, sex: str, age: int, view: str, size: int) -> dict[str, Any]:
    """The header Kaggle's RSNA files carry (anonymised dates, SC storage, CR modality)."""
    spacing = f"{0.168 * 1024 / size:.6f}"
    return dict(
        StudyDate="19010101",
        StudyTime="000000.00",
        AccessionNumber="",
        Modality="CR",
        ConversionType="WSD",
        ReferringPhysicianName="",
        SeriesDescription=f"view: {view}",
        PatientName=patient,
        PatientID=patient,
        PatientBirthDate="",
        PatientSex=sex,
        PatientAge=str(age),
        BodyPartExamined="CHEST",
        ViewPosition=view,
        StudyInstanceUID=_uid("study", patient),
        SeriesInstanceUID=_uid("series", patient),
        StudyID="",
        SeriesNumber=1,
        InstanceNumber=1,
        PatientOrientation="",
        PixelSpacing=[spacing, spacing],
    )


# --------------------------------------------------------------------- VinBigData

# The classes drawn (a plausible subset of the 14) and their relative frequency, roughly
# following the real data where aortic enlargement and cardiomegaly dominate.
_VINBIG_KINDS = {
    0: "aortic",
    1: "atelectasis",
    3: "cardiomegaly",
    4: "opacity",
    7: "faint_opacity",
    8: "nodule",
    10: "effusion",
    11: "pleural_thickening",
    12: "pneumothorax",
    13: "fibrosis",
}
_VINBIG_WEIGHTS = {
    0: 3.0,
    1: 1.0,
    3: 3.0,
    4: 1.0,
    7: 1.5,
    8: 1.5,
    10: 1.5,
    11: 2.0,
    12: 0.5,
    13: 1.0,
}
_READERS = [f"R{number}" for number in range(1, 18)]
_VINBIG_HEADER = [
    "image_id",
    "class_name",
    "class_id",
    "rad_id",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
]


def _write_vinbigdata(root: Path, spec: DemoSpec, progress: bool) -> tuple[SourceTables, _Sample]:
    file_rng = _rng(spec.seed, "vinbigdata")
    labels = _allocate(file_rng, spec.vinbigdata_images, {"normal": 0.4, "abnormal": 0.6})
    rows: list[tuple[list[Any], dict[str, Any] | None]] = []
    images = []
    sample = _Sample("vinbigdata")
    with _progress(len(labels), "vinbigdata", progress) as bar:
        for index, label in enumerate(labels):
            rng = _rng(spec.seed, "vinbigdata", index)
            image_id = rng.bytes(16).hex()
            width = round(spec.image_size * rng.uniform(0.9, 1.2))
            height = round(spec.image_size * rng.uniform(1.0, 1.3))
            class_ids = _vinbig_classes(rng) if label == "abnormal" else []
            findings = [_vinbig_kind(rng, class_id) for class_id in class_ids]
            chest = render_chest(sample_anatomy(rng), rng, height, width, findings)
            image_rows = _reader_rows(rng, image_id, class_ids, chest.lesions, width, height)
            rows += image_rows
            variant = VINBIG_VARIANTS[index % len(VINBIG_VARIANTS)]
            path = f"train/{image_id}.dicom"
            _write_vinbig_dicom(root / path, image_id, chest, variant, rng, spec.seed)
            images.append(
                dict(
                    image_id=image_id,
                    path=path,
                    width=width,
                    height=height,
                    label=label,
                    patient_id=image_id,
                )
            )
            drawn = [box for _, box in image_rows if box is not None]
            sample.offer(chest.to_uint8(), drawn, f"{label} ({variant.name})")
            bar.update()
    order = file_rng.permutation(len(rows))  # the real train.csv is not grouped by image
    rows = [rows[i] for i in order]
    _write_csv(root / "train.csv", _VINBIG_HEADER, [csv_row for csv_row, _ in rows])
    boxes = [box for _, box in rows if box is not None]
    tables = SourceTables(
        conform_images(pd.DataFrame(images)),
        _boxes_table(boxes),
        list(VINBIG_CLASSES),
        list(BINARY_LABELS),
    )
    return tables, sample


def _vinbig_classes(rng: np.random.Generator) -> list[int]:
    ids = list(_VINBIG_WEIGHTS)
    weights = np.array([_VINBIG_WEIGHTS[i] for i in ids])
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    chosen = sorted(
        int(i) for i in rng.choice(ids, count, replace=False, p=weights / weights.sum())
    )
    if 8 in chosen and rng.random() < 0.3:
        chosen.append(8)  # a second nodule
    return chosen


def _vinbig_kind(rng: np.random.Generator, class_id: int) -> str:
    if class_id == 8:
        return "nodule" if rng.random() < 0.7 else "mass"
    return _VINBIG_KINDS[class_id]


def _reader_rows(
    rng: np.random.Generator,
    image_id: str,
    class_ids: list[int],
    lesions: list[Lesion],
    width: int,
    height: int,
) -> list[tuple[list[Any], dict[str, Any] | None]]:
    """Three distinct readers; each marks every finding (the first reader) or most of them,
    with its own few-pixel jitter; a reader who marks nothing writes `No finding`."""
    readers = [str(r) for r in rng.choice(_READERS, 3, replace=False)]
    rows: list[tuple[list[Any], dict[str, Any] | None]] = []
    for position, reader in enumerate(readers):
        marked = [
            (c, lesion)
            for c, lesion in zip(class_ids, lesions, strict=True)
            if position == 0 or rng.random() < 0.85
        ]
        for class_id, lesion in marked:
            x, y, w, h = _jitter(rng, lesion.box, width, height)
            name = VINBIG_CLASSES[class_id]
            csv_row = [image_id, name, class_id, reader, *map(_coordinate, (x, y, x + w, y + h))]
            rows.append((csv_row, _box_row(image_id, (x, y, w, h), class_id, name, reader)))
        if not marked:
            no_id, no_name = VINBIG_NO_FINDING
            rows.append(([image_id, no_name, no_id, reader, "", "", "", ""], None))
    return rows


def _jitter(rng: np.random.Generator, box: Box, width: int, height: int) -> Box:
    """Each edge moved by up to 5% of the box size (IoU between readers stays above 0.6)."""
    x, y, w, h = box
    jx, jy = int(0.05 * w), int(0.05 * h)
    x0 = max(0, x + int(rng.integers(-jx, jx + 1)))
    y0 = max(0, y + int(rng.integers(-jy, jy + 1)))
    x1 = min(width, x + w + int(rng.integers(-jx, jx + 1)))
    y1 = min(height, y + h + int(rng.integers(-jy, jy + 1)))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def _write_vinbig_dicom(
    path: Path,
    image_id: str,
    chest: Chest,
    variant: _DicomVariant,
    rng: np.random.Generator,
    seed: int,
) -> None:
    stored, lut_tags = _stored_pixels(chest.image, variant, rng)
    tags = dict(
        Modality="DX",
        PatientID="",
        PatientSex=str(rng.choice(["M", "F", "O"])),
        PatientAge=f"{int(rng.integers(18, 90)):03d}Y",
        BodyPartExamined="CHEST",
        PixelSpacing=["0.175", "0.175"],
        **lut_tags,
    )
    ds = _new_dicom(DIGITAL_XRAY, _uid(seed, "vinbigdata", image_id), variant.syntax, tags)
    _write_dicom(path, ds, stored, variant.photometric, variant.bits)


# ---------------------------------------------------------------------------- NIH

_NIH_KINDS = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Effusion": "effusion",
    "Infiltration": "faint_opacity",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pneumonia": "opacity",
    "Pneumothorax": "pneumothorax",
    "Consolidation": "opacity",
    "Edema": "edema",
    "Emphysema": "emphysema",
    "Fibrosis": "fibrosis",
    "Pleural_Thickening": "pleural_thickening",
    "Hernia": "hernia",
}
# The eight findings the real BBox_List_2017.csv has boxes for.
NIH_BOXED = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)


def _write_nih(root: Path, spec: DemoSpec, progress: bool) -> tuple[SourceTables, _Sample]:
    file_rng = _rng(spec.seed, "nih")
    entry_rows, bbox_rows, images, boxes, targets = [], [], [], [], []
    sample = _Sample("nih")
    abnormal = 0
    with _progress(spec.nih_images, "nih", progress) as bar:
        for patient, follow_up in _nih_studies(file_rng, spec.nih_images):
            rng = _rng(spec.seed, "nih", patient, follow_up)
            anatomy = sample_anatomy(
                _rng(spec.seed, "nih-patient", patient)
            )  # follow-ups share anatomy
            found: list[str] = []
            if file_rng.random() >= 0.45:
                found = _nih_findings(rng, abnormal)
                abnormal += 1
            chest = render_chest(
                anatomy, rng, spec.image_size, spec.image_size, [_NIH_KINDS[f] for f in found]
            )
            pixels = chest.to_uint8()
            stem = f"{patient:08d}_{follow_up:03d}"
            _save_png(root / "images" / f"{stem}.png", pixels)
            entry_rows.append(
                _nih_entry(rng, stem, found, patient, follow_up, _nih_patient(spec.seed, patient))
            )
            # Boxes for alternate rounds of the 14-finding cycle: "for some images" as in NIH.
            listed = bool(found) and (abnormal - 1) // len(NIH_FINDINGS) % 2 == 0
            drawn = []
            for finding, lesion in zip(found, chest.lesions, strict=True):
                if listed and finding in NIH_BOXED:
                    text = _nih_box_text(rng, lesion.box, spec.image_size)
                    bbox_rows.append(
                        [f"{stem}.png", NIH_BBOX_SPELLING.get(finding, finding), *text]
                    )
                    box = _box_row(
                        stem, [float(v) for v in text], NIH_FINDINGS.index(finding), finding
                    )
                    boxes.append(box)
                    drawn.append(box)
            images.append(
                dict(
                    image_id=stem,
                    path=f"images/{stem}.png",
                    width=spec.image_size,
                    height=spec.image_size,
                    label="abnormal" if found else "normal",
                    patient_id=str(patient),
                )
            )
            targets.append([int(f in found) for f in NIH_FINDINGS] + [int(bool(found))])
            sample.offer(pixels, drawn, "|".join(sorted(found)) or "No Finding")
            bar.update()
    _write_csv(root / "Data_Entry_2017.csv", NIH_ENTRY_HEADER, entry_rows)
    _write_csv(root / "BBox_List_2017.csv", NIH_BBOX_HEADER, bbox_rows)
    tables = SourceTables(
        conform_images(pd.DataFrame(images)),
        _boxes_table(boxes),
        list(NIH_FINDINGS),
        list(BINARY_LABELS),
        targets=pd.DataFrame(targets, columns=NIH_TARGETS, dtype="int64"),
    )
    return tables, sample


def _nih_studies(rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    """(patient, follow-up) pairs in file order: patients numbered from 1, 1-6 studies each."""
    studies: list[tuple[int, int]] = []
    patient = 0
    while len(studies) < count:
        patient += 1
        follow_ups = min(int(rng.geometric(0.45)), 6, count - len(studies))
        studies += [(patient, follow_up) for follow_up in range(follow_ups)]
    return studies


def _nih_findings(rng: np.random.Generator, abnormal_index: int) -> list[str]:
    """Cycles the primary finding through all 14 so every target column gets positives."""
    found = [NIH_FINDINGS[abnormal_index % len(NIH_FINDINGS)]]
    if rng.random() < 0.3:
        found.append(str(rng.choice([f for f in NIH_FINDINGS if f != found[0]])))
    return sorted(found)


@dataclass(frozen=True)
class _NihPatient:
    age: int
    gender: str


def _nih_patient(seed: int, patient: int) -> _NihPatient:
    rng = _rng(seed, "nih-person", patient)
    return _NihPatient(int(rng.integers(8, 85)), "M" if rng.random() < 0.56 else "F")


def _nih_entry(
    rng: np.random.Generator,
    stem: str,
    found: list[str],
    patient: int,
    follow_up: int,
    person: _NihPatient,
) -> list[Any]:
    """One Data_Entry row (11 fields under the 12-field header, as in the real file)."""
    spacing = str(rng.choice(["0.143", "0.139", "0.168"]))
    return [
        f"{stem}.png",
        "|".join(found) or "No Finding",
        follow_up,
        patient,
        person.age + follow_up // 3,
        person.gender,
        "AP" if rng.random() < 0.4 else "PA",
        int(rng.integers(2000, 3057)),
        int(rng.integers(2000, 3057)),
        spacing,
        spacing,
    ]


def _nih_box_text(rng: np.random.Generator, box: Box, size: int) -> list[str]:
    """x, y, w, h with two decimals (NIH boxes were rescaled), kept inside the image."""
    x, y, w, h = box
    x_text = round(min(max(0.0, x + rng.uniform(-0.5, 0.5)), size - 1.0), 2)
    y_text = round(min(max(0.0, y + rng.uniform(-0.5, 0.5)), size - 1.0), 2)
    w_text = round(min(w + rng.uniform(-0.5, 0.5), size - x_text), 2)
    h_text = round(min(h + rng.uniform(-0.5, 0.5), size - y_text), 2)
    return [repr(v) for v in (x_text, y_text, w_text, h_text)]


# ------------------------------------------------------------------------- folder

_FOLDER_EXTENSIONS = (".png", ".jpg", ".dcm")
_FOLDER_LABELS = ("nodule", "opacity")  # box labels, also the kinds drawn


def _write_folder(root: Path, spec: DemoSpec, progress: bool) -> tuple[SourceTables, _Sample]:
    file_rng = _rng(spec.seed, "folder")
    labels = _allocate(file_rng, spec.folder_images, {"abnormal": 0.5, "normal": 0.5})
    size = spec.image_size
    annotation_rows, image_rows, images, named_boxes = [], [], [], []
    sample = _Sample("folder")
    patient, abnormal = 0, 0
    with _progress(len(labels), "folder", progress) as bar:
        for index, label in enumerate(labels):
            if index == 0 or file_rng.random() < 0.6:
                patient += 1  # otherwise a second image of the same patient
            patient_id = f"P{patient:04d}"
            rng = _rng(spec.seed, "folder", index)
            names = _folder_findings(rng, abnormal) if label == "abnormal" else []
            abnormal += label == "abnormal"
            anatomy = sample_anatomy(_rng(spec.seed, "folder-patient", patient))
            chest = render_chest(anatomy, rng, size, size, names)
            pixels = chest.to_uint8()
            image_id = f"cxr_{index:04d}"
            extension = _FOLDER_EXTENSIONS[index % len(_FOLDER_EXTENSIONS)]
            path = f"images/{image_id}{extension}"
            _write_folder_image(root / path, pixels, patient_id, spec.seed)
            drawn = []
            for name, lesion in zip(names, chest.lesions, strict=True):
                annotation_rows.append([image_id, *lesion.box, name])
                named_boxes.append((image_id, lesion.box, name))
                drawn.append(
                    dict(
                        zip("xywh", lesion.box, strict=True),
                        class_id=_FOLDER_LABELS.index(name),
                        class_name=name,
                    )
                )
            image_rows.append([image_id, label, patient_id])
            images.append(
                dict(
                    image_id=image_id,
                    path=path,
                    width=size,
                    height=size,
                    label=label,
                    patient_id=patient_id,
                )
            )
            sample.offer(pixels, drawn, label)
            bar.update()
    _write_csv(
        root / "annotations.csv",
        ["image_id", "x", "y", "width", "height", "label"],
        annotation_rows,
    )
    _write_csv(root / "images.csv", ["image_id", "label", "patient_id"], image_rows)
    class_names = sorted({name for _, _, name in named_boxes})
    boxes = [_box_row(i, box, class_names.index(name), name) for i, box, name in named_boxes]
    tables = SourceTables(
        conform_images(pd.DataFrame(images)), _boxes_table(boxes), class_names, sorted(set(labels))
    )
    return tables, sample


def _folder_findings(rng: np.random.Generator, abnormal_index: int) -> list[str]:
    """Alternates opacity / nodule so both box classes exist in small sets."""
    found = [_FOLDER_LABELS[1 - abnormal_index % 2]]
    if rng.random() < 0.3:
        found.append(str(rng.choice(_FOLDER_LABELS)))
    return found


def _write_folder_image(path: Path, pixels: np.ndarray, patient_id: str, seed: int) -> None:
    if path.suffix == ".png":
        _save_png(path, pixels)
    elif path.suffix == ".jpg":
        _save_jpeg(path, pixels)
    else:
        tags = dict(Modality="DX", PatientID=patient_id, BodyPartExamined="CHEST")
        ds = _new_dicom(
            SECONDARY_CAPTURE, _uid(seed, "folder", path.name), ExplicitVRLittleEndian, tags
        )
        _write_dicom(path, ds, pixels, "MONOCHROME2", 8)


# -------------------------------------------------------------------------- entry

_WRITERS: dict[str, Callable[[Path, DemoSpec, bool], tuple[SourceTables, _Sample]]] = {
    "rsna": _write_rsna,
    "vinbigdata": _write_vinbigdata,
    "nih": _write_nih,
    "folder": _write_folder,
}


def synthesize(out_dir: Path, spec: DemoSpec, *, progress: bool = True) -> dict[str, SourceTables]:
    """Write the four demo datasets and samples.png under out_dir; return what a correct
    parser of each format must read back (paths relative to out_dir/<format>)."""
    out_dir = Path(out_dir)
    tables: dict[str, SourceTables] = {}
    samples: list[_Sample] = []
    for name, writer in _WRITERS.items():
        target = out_dir / name
        if target.exists():
            shutil.rmtree(target)  # stale files from a larger spec would be read as data
        tables[name], sample = writer(target, spec, progress)
        samples.append(sample)
    _write_samples(out_dir / "samples.png", samples)
    return tables


def _write_samples(path: Path, samples: list[_Sample]) -> None:
    """One column per format, boxed examples above a negative one."""
    depth = max(len(sample.items) for sample in samples)
    items = [
        sample.items[row] for row in range(depth) for sample in samples if row < len(sample.items)
    ]
    sample_grid(items, path, columns=len(samples))
