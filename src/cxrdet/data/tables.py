"""The canonical data contract every dataset source produces (see DESIGN.md).

`images`: one row per image, original pixel sizes.
`boxes`: one row per box, top-left x/y and w/h in original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

IMAGE_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "path": "string",  # absolute or relative to the source's raw_dir, as the source wrote it
    "width": "int64",
    "height": "int64",
    "label": "string",  # image-level class (RSNA: 3 classes; VinBigData: normal/abnormal)
    "patient_id": "string",  # equals image_id when the format has no patient notion
}
OPTIONAL_IMAGE_COLUMNS: dict[str, str] = {
    "sex": "string",  # "M" / "F" / <NA>
    "age": "Int64",
    "view": "string",  # "PA" / "AP" / <NA>
}
BOX_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "x": "float64",
    "y": "float64",
    "w": "float64",
    "h": "float64",
    "class_id": "int64",
    "class_name": "string",
    "reader": "string",  # radiologist id (VinBigData rad_id); <NA> when not known
}


@dataclass
class SourceTables:
    """What a dataset source returns.

    `class_names[i]` is the name of box class_id i. `image_labels` lists the image-level
    classes in a fixed order (index = class index for classifiers). `targets` is an
    optional multi-label matrix (NIH: 15 columns, 14 findings + abnormal) indexed like
    `images`. `dropped` lists rows removed under on_bad_rows="drop" (file, row, problem).
    """

    images: pd.DataFrame
    boxes: pd.DataFrame
    class_names: list[str]
    image_labels: list[str]
    targets: pd.DataFrame | None = None
    dropped: list[tuple[str, int | None, str]] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)


def empty_boxes() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in BOX_COLUMNS.items()})


def conform_images(df: pd.DataFrame) -> pd.DataFrame:
    """Order and type the images table; optional metadata columns are kept when present."""
    columns = dict(IMAGE_COLUMNS)
    columns.update({c: t for c, t in OPTIONAL_IMAGE_COLUMNS.items() if c in df.columns})
    missing = [c for c in IMAGE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"images table lacks columns {missing}")
    return df[list(columns)].astype(columns).reset_index(drop=True)


def conform_boxes(df: pd.DataFrame) -> pd.DataFrame:
    """Order and type the boxes table (reader defaults to <NA>)."""
    df = df.copy()
    if "reader" not in df.columns:
        df["reader"] = pd.NA
    missing = [c for c in BOX_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"boxes table lacks columns {missing}")
    return df[list(BOX_COLUMNS)].astype(BOX_COLUMNS).reset_index(drop=True)
