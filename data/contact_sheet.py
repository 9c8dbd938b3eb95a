"""Contact sheets: a grid of windowed CT slices with captions, saved as PNG; segmentation masks, where given,
drawn over their slices as a translucent fill with a solid contour in one colour per class, with a legend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ctssl.core.atomic import atomic_open
from ctssl.data.windowing import to_uint8

# Class id -> RGB (class 0, background, is never drawn); ids past the list reuse it.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))
FILL_ALPHA = 0.35


@dataclass
class Tile:
    hu: np.ndarray          # (H, W) Hounsfield units
    window: tuple[float, float]
    caption: str
    mask: np.ndarray | None = None   # (H, W) uint8 class ids on ``hu``, or None


def colour(class_id: int) -> tuple[int, int, int]:
    return PALETTE[(class_id - 1) % len(PALETTE)]


def overlay(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: ``grey`` (H, W) uint8 with each class of ``mask`` (H, W) filled translucently and its
    contour (pixels with a 4-neighbour of another class) in solid colour."""
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    padded = np.pad(mask, 1, mode="edge")
    edge = ((padded[1:-1, 1:-1] != padded[:-2, 1:-1]) | (padded[1:-1, 1:-1] != padded[2:, 1:-1])
            | (padded[1:-1, 1:-1] != padded[1:-1, :-2]) | (padded[1:-1, 1:-1] != padded[1:-1, 2:]))
    for class_id in np.unique(mask):
        if class_id == 0:
            continue
        inside = mask == class_id
        tint = np.array(colour(int(class_id)), dtype=np.float32)
        rgb[inside] = (1 - FILL_ALPHA) * rgb[inside] + FILL_ALPHA * tint
        rgb[inside & edge] = tint
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_contact_sheet(tiles: list[Tile], columns: int, tile_size: int = 160,
                         legend: dict[int, str] | None = None) -> Image.Image:
    """Compose tiles (each windowed and resized to ``tile_size``) into one image: greyscale, or RGB with mask
    overlays when a tile has a mask (``legend``: class id -> name, drawn below the grid)."""
    if not tiles:
        raise ValueError("A contact sheet needs at least one tile.")
    caption_h = 14
    rows = (len(tiles) + columns - 1) // columns
    coloured = any(tile.mask is not None for tile in tiles)
    classes = sorted({int(c) for t in tiles if t.mask is not None for c in np.unique(t.mask) if c}) if coloured else []
    legend_h = caption_h * ((len(classes) + columns - 1) // columns) if classes else 0
    size = (columns * tile_size, rows * (tile_size + caption_h) + legend_h)
    sheet = Image.new("RGB" if coloured else "L", size, color=0)
    draw = ImageDraw.Draw(sheet)
    white = (255, 255, 255) if coloured else 255
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        pixels = to_uint8(np.nan_to_num(tile.hu, nan=-1024.0), *tile.window)
        grey = np.asarray(Image.fromarray(pixels).resize((tile_size, tile_size), Image.BILINEAR))
        if coloured and tile.mask is not None:
            mask = np.asarray(Image.fromarray(tile.mask).resize((tile_size, tile_size), Image.NEAREST))
            img = Image.fromarray(overlay(grey, mask), "RGB")
        else:
            img = Image.fromarray(grey).convert("RGB" if coloured else "L")
        x, y = c * tile_size, r * (tile_size + caption_h)
        sheet.paste(img, (x, y + caption_h))
        draw.text((x + 2, y + 1), tile.caption[: tile_size // 6], fill=white)
    for j, class_id in enumerate(classes):
        r, c = divmod(j, columns)
        name = (legend or {}).get(class_id, str(class_id))
        draw.text((c * tile_size + 2, rows * (tile_size + caption_h) + r * caption_h + 1),
                  f"{class_id} {name}"[: tile_size // 6], fill=colour(class_id))
    return sheet


def save_contact_sheet(tiles: list[Tile], path: str | Path, columns: int = 6, tile_size: int = 160,
                       legend: dict[int, str] | None = None) -> Path:
    path = Path(path)
    sheet = render_contact_sheet(tiles, columns, tile_size, legend)
    with atomic_open(path) as handle:
        sheet.save(handle, format="PNG")
    return path
