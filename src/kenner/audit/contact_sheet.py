"""Contact sheets: rows of thumbnails, each captioned with its sample id and label, under a line of text.

A pair of near-duplicates, a sample with its suggested label, an outlier: one row each, so a user can judge a
finding at a glance.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from kenner.io import atomic_write_bytes

THUMB = 112
PAD = 6
LINE = 13
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (90, 90, 90)


@dataclass(frozen=True)
class Tile:
    """One thumbnail: the image and up to two caption lines (e.g. id, then label and split)."""

    path: Path
    caption: tuple[str, ...]


@dataclass(frozen=True)
class SheetRow:
    """A line of text above a few tiles."""

    title: str
    tiles: tuple[Tile, ...]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _thumbnail(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "P"):
                image = image.convert("RGBA")
                flat = Image.new("RGB", image.size, BACKGROUND)
                flat.paste(image, mask=image.getchannel("A"))
                image = flat
            image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            return image
    except OSError:
        return Image.new("RGB", (THUMB, THUMB), (230, 200, 200))


def _clip(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def write_contact_sheet(rows: Sequence[SheetRow], path: str | Path, title: str) -> Path:
    """Draw ``rows`` under ``title`` into a PNG at ``path`` (atomically)."""
    font, bold = _font(11), _font(13)
    columns = max((len(row.tiles) for row in rows), default=1)
    captions = max((len(tile.caption) for row in rows for tile in row.tiles), default=0)
    row_height = LINE + PAD + THUMB + captions * LINE + 2 * PAD
    width = max(columns * (THUMB + PAD) + PAD, 360)
    sheet = Image.new("RGB", (width, 2 * LINE + PAD + len(rows) * row_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), _clip(title, draw, bold, width - 2 * PAD), fill=INK, font=bold)
    top = 2 * LINE + PAD
    for row in rows:
        draw.text((PAD, top), _clip(row.title, draw, font, width - 2 * PAD), fill=INK, font=font)
        for column, tile in enumerate(row.tiles):
            left = PAD + column * (THUMB + PAD)
            thumb = _thumbnail(tile.path)
            sheet.paste(thumb, (left + (THUMB - thumb.width) // 2, top + LINE + PAD + (THUMB - thumb.height) // 2))
            for line, text in enumerate(tile.caption):
                y = top + LINE + PAD + THUMB + 2 + line * LINE
                draw.text((left, y), _clip(text, draw, font, THUMB), fill=MUTED if line else INK, font=font)
        top += row_height
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return atomic_write_bytes(path, buffer.getvalue())
