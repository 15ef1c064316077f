"""DemoSpec: how much demo data to write, and from which seed."""

from __future__ import annotations

from dataclasses import dataclass


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
