"""Drawing boxes on grayscale images and tiling them into one PNG (samples, overlays).

Boxes are a DataFrame in the image's own pixel coordinates with columns x, y, w, h
(top-left, width, height) and optionally class_id, class_name and score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from cxrdet.metrics.iou import iou_xywh

# Distinct, readable on gray: one colour per class id (cycled past the end).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
)
DEFAULT_COLOR = PALETTE[0]
OVERLAY_TRUTH, OVERLAY_PREDICTION = 1, 0  # class ids picking the palette's colours: green, red
_TITLE_HEIGHT = 16


def class_color(class_id: int) -> tuple[int, int, int]:
    return PALETTE[int(class_id) % len(PALETTE)]


def to_rgb(image: np.ndarray) -> Image.Image:
    """A uint8 2-D (grayscale) or HxWx3 array as an RGB PIL image."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.ndim == 3 and array.shape[2] == 3:
        return Image.fromarray(array, mode="RGB")
    raise ValueError(f"expected a 2-D or HxWx3 image, got shape {array.shape}")


def draw_boxes(
    image: np.ndarray,
    boxes: pd.DataFrame,
    color_by_class: bool = True,
    *,
    color: tuple[int, int, int] = DEFAULT_COLOR,
    line_width: int | None = None,
) -> Image.Image:
    """The image with each box outlined and labelled by class_name (and score if present)."""
    canvas = to_rgb(image)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = line_width or max(1, round(min(canvas.size) / 200))
    for row in boxes.itertuples(index=False):
        box_color = (
            class_color(row.class_id) if color_by_class and hasattr(row, "class_id") else color
        )
        x0, y0 = float(row.x), float(row.y)
        draw.rectangle(
            (x0, y0, x0 + float(row.w), y0 + float(row.h)), outline=box_color, width=width
        )
        text = _box_label(row)
        if text:
            _draw_label(draw, (x0, y0), text, box_color, font)
    return canvas


def sample_grid(
    items: list[tuple[np.ndarray, pd.DataFrame, str]],
    path: Path,
    columns: int = 4,
    tile: int = 256,
    legend: Sequence[tuple[tuple[int, int, int] | None, str]] = (),
) -> Image.Image:
    """Tile (image, boxes, title) items, each fitted into tile x tile, and save a PNG; with a
    `legend` ((colour or None, meaning) pairs), a first line says what the colours mean."""
    rows = max(1, -(-len(items) // columns))
    header = _TITLE_HEIGHT + 4 if legend else 0
    grid = Image.new("RGB", (columns * tile, header + rows * (tile + _TITLE_HEIGHT)), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    x = 4
    for color, meaning in legend:
        if color is not None:
            draw.rectangle((x, 5, x + 10, 15), outline=color, width=2)
            x += 14
        draw.text((x, 4), meaning, fill=(255, 255, 255), font=font)
        x += round(draw.textlength(meaning, font=font)) + 16
    for index, (image, boxes, title) in enumerate(items):
        left = (index % columns) * tile
        top = header + (index // columns) * (tile + _TITLE_HEIGHT)
        grid.paste(_fit_tile(image, boxes, tile), (left, top + _TITLE_HEIGHT))
        shown = _fitted_text(draw, title, tile - 6, font)
        draw.text((left + 3, top + 2), shown, fill=(255, 255, 255), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid


def _fit_tile(image: np.ndarray, boxes: pd.DataFrame, tile: int) -> Image.Image:
    """Resize to fit the tile (aspect kept), then draw, so line widths match across tiles."""
    height, width = np.asarray(image).shape[:2]
    scale = tile / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(to_rgb(image).resize(size, Image.Resampling.BILINEAR))
    scaled = boxes.copy()
    scaled[["x", "y", "w", "h"]] = scaled[["x", "y", "w", "h"]].astype(float) * scale
    drawn = draw_boxes(resized, scaled)
    framed = Image.new("RGB", (tile, tile), (0, 0, 0))
    framed.paste(drawn, ((tile - size[0]) // 2, (tile - size[1]) // 2))
    return framed


def _fitted_text(
    draw: ImageDraw.ImageDraw,
    text: str,
    width: int,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> str:
    """`text`, cut with "..." to fit `width` pixels (a title never runs into the next tile)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _box_label(row: tuple) -> str:
    name = getattr(row, "class_name", None)
    text = "" if name is None or pd.isna(name) else str(name)
    score = getattr(row, "score", None)
    if score is not None and not pd.isna(score):
        text = f"{text} {float(score):.2f}".strip()
    return text


def _draw_label(
    draw: ImageDraw.ImageDraw,
    corner: tuple[float, float],
    text: str,
    color: tuple[int, int, int],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """Text on a dark backing just above the box (inside it when at the top edge), moved left
    as needed to stay inside the image (a box at the right edge keeps its whole label)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    height = bottom - top + 2
    room = draw.im.size[0] - (right - left + 4)
    x, y = max(0.0, min(corner[0], room)), corner[1] - height if corner[1] >= height else corner[1]
    draw.rectangle((x, y, x + right - left + 3, y + height), fill=(0, 0, 0))
    draw.text((x + 2, y + 1 - top), text, fill=color, font=font)


def overlay_grid(
    image_ids: Sequence[str],
    truth: pd.DataFrame,
    predicted: pd.DataFrame,
    image_of: Callable[[str], tuple[np.ndarray, float, float]],
    title_of: Callable[[str], str],
    path: Path,
    count: int = 12,
    top: int = 4,
    caption: str = "",
) -> None:
    """A PNG grid of `count` images picked to show what the model does: in turns, one with a
    hit (a truth box a prediction overlaps at IoU >= MATCH_IOU), one with a miss (a truth box
    none does), one with a false alarm (a prediction overlapping no truth box); each tile's
    title counts them. Truth boxes green (unlabelled: a legend line says which is which),
    each image's `top` best predictions red with their scores. Boxes are in original pixels;
    `image_of(image_id)` gives the image drawn on and its (scale_x, scale_y) from them;
    `caption` (what every tile shows, e.g. the model) ends the legend line."""
    best = predicted.sort_values("score", ascending=False).groupby("image_id").head(top)
    boxes = {
        image_id: (truth[truth["image_id"] == image_id], best[best["image_id"] == image_id])
        for image_id in image_ids
    }
    outcomes = {image_id: outcome(*pair) for image_id, pair in boxes.items()}
    items = []
    for image_id in pick_tiles(outcomes, count):
        image, scale_x, scale_y = image_of(image_id)
        shown_truth, shown_predicted = boxes[image_id]
        drawn = pd.concat(
            [
                shown_truth[["x", "y", "w", "h"]].assign(class_id=OVERLAY_TRUTH, class_name=""),
                shown_predicted[["x", "y", "w", "h", "score"]].assign(
                    class_id=OVERLAY_PREDICTION, class_name=""
                ),
            ],
            ignore_index=True,
        )
        drawn[["x", "w"]] *= scale_x
        drawn[["y", "h"]] *= scale_y
        hits, misses, false = outcomes[image_id]
        counts = f"hit {hits} miss {misses} false {false}"
        items.append((image, drawn, f"{counts} | {title_of(image_id)}"))
    legend = (
        (class_color(OVERLAY_TRUTH), "truth"),
        (class_color(OVERLAY_PREDICTION), f"prediction (score; top {top} per image)"),
        (None, f"titles: truth boxes hit / missed, false alarms (IoU {MATCH_IOU})"),
        *([(None, caption)] if caption else []),
    )
    sample_grid(items, path, legend=legend)


MATCH_IOU = 0.4  # the RSNA score's lowest IoU threshold: a box found at all


def outcome(truth: pd.DataFrame, predicted: pd.DataFrame) -> tuple[int, int, int]:
    """(hits, misses, false alarms) of one image: truth boxes some prediction overlaps at IoU
    >= MATCH_IOU, truth boxes none does, predictions overlapping no truth box."""
    if truth.empty or predicted.empty:
        return 0, len(truth), len(predicted)
    columns = ["x", "y", "w", "h"]
    iou = iou_xywh(truth[columns].to_numpy(float), predicted[columns].to_numpy(float))
    found = int((iou.max(axis=1) >= MATCH_IOU).sum())
    return found, len(truth) - found, int((iou.max(axis=0) < MATCH_IOU).sum())


def pick_tiles(outcomes: dict[str, tuple[int, int, int]], count: int) -> list[str]:
    """Up to `count` image ids: in turns one with a hit, a miss, a false alarm (ids in order),
    then images with truth boxes, then the rest: tiles that show something first."""
    queues = [sorted(i for i, counts in outcomes.items() if counts[k]) for k in range(3)]
    chosen: list[str] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            while queue and queue[0] in chosen:
                queue.pop(0)
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    rest = sorted(outcomes, key=lambda i: (sum(outcomes[i][:2]) == 0, i))  # truth boxes first
    return chosen + [i for i in rest if i not in chosen][: count - len(chosen)]
