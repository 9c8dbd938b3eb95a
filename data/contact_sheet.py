"""Contact sheets: a grid of windowed CT slices with captions, saved as PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ctssl.core.atomic import atomic_open
from ctssl.data.windowing import to_uint8


@dataclass
class Tile:
    hu: np.ndarray          # (H, W) Hounsfield units
    window: tuple[float, float]
    caption: str


def render_contact_sheet(tiles: list[Tile], columns: int, tile_size: int = 160) -> Image.Image:
    """Compose tiles (each windowed and resized to ``tile_size``) into one greyscale image."""
    if not tiles:
        raise ValueError("A contact sheet needs at least one tile.")
    caption_h = 14
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("L", (columns * tile_size, rows * (tile_size + caption_h)), color=0)
    draw = ImageDraw.Draw(sheet)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        pixels = to_uint8(np.nan_to_num(tile.hu, nan=-1024.0), *tile.window)
        img = Image.fromarray(pixels).resize((tile_size, tile_size), Image.BILINEAR)
        x, y = c * tile_size, r * (tile_size + caption_h)
        sheet.paste(img, (x, y + caption_h))
        draw.text((x + 2, y + 1), tile.caption[: tile_size // 6], fill=255)
    return sheet


def save_contact_sheet(tiles: list[Tile], path: str | Path, columns: int = 6, tile_size: int = 160) -> Path:
    path = Path(path)
    sheet = render_contact_sheet(tiles, columns, tile_size)
    with atomic_open(path) as handle:
        sheet.save(handle, format="PNG")
    return path
