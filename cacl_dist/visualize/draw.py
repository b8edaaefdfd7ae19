"""Rows of framed thumbnails with captions, drawn with PIL: the picture format of every result tool.

A row is an optional header line, then tiles from left to right: each tile is an image fitted
into ``TILE_W x TILE_H`` (aspect kept, white padding), a coloured frame ``BORDER`` pixels wide
around it, and caption lines under it, in a font of ``FONT_SIZE`` pixels (a scalable font where
Pillow has one, its small built-in bitmap font otherwise). :class:`RowLayout` says where every frame lies, so tests
(and anything else) can read the colours back from the written PNG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from cacl_dist.errors import UserError

CORRECT = (30, 160, 40)
"""Frame of a gallery image of the query's identity (or a cluster member of the majority identity)."""
WRONG = (215, 35, 35)
"""Frame of an image of another identity."""
JUNK = (150, 150, 150)
"""Frame of a same-identity same-camera gallery image, which the evaluation protocol ignores."""
QUERY = (40, 100, 225)
"""Frame of the query image."""
NEUTRAL = (40, 40, 40)
"""Frame when nothing is known about the identity (search in one's own images)."""

TILE_W, TILE_H = 80, 160
BORDER = 4
GAP = 6
MARGIN = 8
SEPARATOR = 18   # extra space after the first tile when the row has a query (and before a set-apart last tile)
FONT_SIZE = 13
LINE_H = 16
HEADER_H = 20
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


@dataclass
class Tile:
    """One framed image: ``path`` of the image, frame ``colour``, caption ``lines`` under it."""

    path: str
    colour: tuple[int, int, int]
    lines: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class RowLayout:
    """Geometry of a row of ``num_tiles`` tiles with ``num_lines`` caption lines each."""

    num_tiles: int
    num_lines: int = 1
    header: bool = False
    separator: bool = False
    last_apart: bool = False
    """Extra space before the last tile (a tile that is not part of the list, e.g. a first match further down)."""

    @property
    def frame_w(self) -> int:
        return TILE_W + 2 * BORDER

    @property
    def frame_h(self) -> int:
        return TILE_H + 2 * BORDER

    def frame_box(self, index: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of tile ``index``'s frame, right and bottom exclusive."""
        left = MARGIN + index * (self.frame_w + GAP) + (SEPARATOR if self.separator and index > 0 else 0)
        left += SEPARATOR if self.last_apart and index == self.num_tiles - 1 and index > 0 else 0
        top = MARGIN + (HEADER_H if self.header else 0)
        return left, top, left + self.frame_w, top + self.frame_h

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole row in pixels."""
        right = self.frame_box(max(self.num_tiles - 1, 0))[2] if self.num_tiles else MARGIN
        bottom = self.frame_box(0)[3] + 2 + self.num_lines * LINE_H
        return max(right + MARGIN, 2 * MARGIN + 200), bottom + MARGIN


def font() -> ImageFont.ImageFont:
    """Pillow's own font at ``FONT_SIZE`` (no font files needed); its bitmap font where it has no scalable one."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, ImportError, OSError):  # Pillow before 10.1, or without FreeType
        return ImageFont.load_default()


def fitted(path: str | Path) -> Image.Image:
    """The image at ``path`` scaled to fit TILE_W x TILE_H with its aspect kept, on white."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the image {path}: {err}") from None
    scale = min(TILE_W / image.width, TILE_H / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new("RGB", (TILE_W, TILE_H), BACKGROUND)
    canvas.paste(image.resize(size, Image.BILINEAR), ((TILE_W - size[0]) // 2, (TILE_H - size[1]) // 2))
    return canvas


def draw_row(tiles: Sequence[Tile], header: str | None = None, separator: bool = False,
             min_tiles: int = 0, last_apart: bool = False) -> tuple[Image.Image, RowLayout]:
    """Render ``tiles`` as one row; returns the image and its layout.

    ``separator`` leaves extra space after the first tile (a query), ``last_apart`` before the
    last one; ``min_tiles`` reserves room for at least that many tiles, so that rows stacked
    together share one width.
    """
    num_lines = max([len(t.lines) for t in tiles] + [1])
    num_tiles = len(tiles) if last_apart else max(len(tiles), min_tiles)
    layout = RowLayout(num_tiles, num_lines, header is not None, separator, last_apart)
    text_font = font()
    width = max(layout.size[0], 2 * MARGIN + text_width(header or "", text_font))  # the header is never cut
    image = Image.new("RGB", (width, layout.size[1]), BACKGROUND)
    pen = ImageDraw.Draw(image)
    if header is not None:
        pen.text((MARGIN, MARGIN), header, fill=TEXT, font=text_font)
    for index, tile in enumerate(tiles):
        left, top, right, bottom = layout.frame_box(index)
        pen.rectangle((left, top, right - 1, bottom - 1), fill=tuple(tile.colour))
        image.paste(fitted(tile.path), (left + BORDER, top + BORDER))
        for line_no, line in enumerate(tile.lines):
            pen.text((left, bottom + 2 + line_no * LINE_H), str(line), fill=TEXT, font=text_font)
    return image, layout


def stack(images: Sequence[Image.Image], gap: int = 0) -> Image.Image:
    """Images one under the other, left-aligned, on white."""
    width = max(im.width for im in images)
    height = sum(im.height for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, height), BACKGROUND)
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height + gap
    return out


def text_width(text: str, text_font=None) -> int:
    """Width in pixels of ``text`` in the picture font."""
    return int(round((text_font or font()).getlength(text))) if text else 0


def text_block(lines: Sequence[str], width: int) -> Image.Image:
    """A white strip with one text line per entry (titles and legends), widened to its longest line."""
    width = max([width] + [2 * MARGIN + text_width(line) for line in lines])
    image = Image.new("RGB", (width, 2 * MARGIN + LINE_H * len(lines)), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for line_no, line in enumerate(lines):
        pen.text((MARGIN, MARGIN + line_no * LINE_H), line, fill=TEXT, font=font())
    return image


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as PNG (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


__all__ = ["CORRECT", "JUNK", "NEUTRAL", "QUERY", "RowLayout", "Tile", "WRONG", "draw_row", "fitted", "save_png",
           "stack", "text_block", "text_width"]
