"""Deterministic randomness: one independent stream per key, exactly proportional labels."""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent stream per (format, image): changing one count never shifts another."""
    entropy = [seed] + [zlib.crc32(key.encode()) if isinstance(key, str) else key for key in keys]
    return np.random.default_rng(entropy)


def allocate(rng: np.random.Generator, n: int, shares: dict[str, float]) -> list[str]:
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
