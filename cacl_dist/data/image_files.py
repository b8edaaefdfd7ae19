"""What every reader of an image file checks first: a regular file, 8 bits per sample.

A leaf module (the image check in integrity.py and the decoder in transforms.py both use it).
"""

from __future__ import annotations

import stat

DEEP_SAMPLES = ("{bits} bits per sample: the pipelines would not decode it alike (8-bit images only); "
                "convert it to 8 bits per channel")
"""Why an image of more (or fewer) than 8 bits per sample is refused, for every pipeline."""

_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_a_regular_file(mode: int) -> str | None:
    """Why a file of ``os.stat`` mode ``mode`` is no image (a FIFO, a device, ...), or None for a regular file.

    Only regular files are images: reading a FIFO waits for a writer forever, a device may never end.
    """
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
    return f"it is {kind}, not a regular file"


__all__ = ["DEEP_SAMPLES", "not_a_regular_file"]
