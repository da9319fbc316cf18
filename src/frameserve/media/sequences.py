"""Image sequences: file-name patterns with a frame number, and frame ranges.

A pattern names every file of a sequence with one frame-number field::

    plate.####.exr      plate.1001.exr   (each '#' is one digit of zero padding)
    plate.@@@@.exr      plate.1001.exr   ('@' is the same as '#': '@@@@' == '####')
    plate.%04d.exr      plate.1001.exr   (printf: zero padded to 4 digits)
    plate.%d.exr        plate.7.exr      (printf: no padding)
    plate.#.exr         plate.7.exr      (one '#' is one digit at least: no padding)

In a printf pattern ``%%`` is a literal ``%``; ``%4d`` (space padding) is refused.

A number longer than the padding is written in full (``12345`` for ``####``). The minus sign of a
negative frame counts toward the width, as in printf and Nuke: frame -1 is ``-001`` for ``####``.

A frame range is written as Nuke writes it::

    parse_frames("1001-1100")       # 1001, 1002, ..., 1100
    parse_frames("1001-1100x2")     # every second frame: 1001, 1003, ..., 1099
    parse_frames("1,5,10-20")       # parts separated by commas (or spaces)
    parse_frames("1050")            # one frame
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from frameserve.errors import ConfigError

__all__ = ["MAX_FRAMES", "FramePattern", "format_frames", "parse_frames"]

#: The most frames one range may cover (a typo such as ``1-10000000`` fails fast).
MAX_FRAMES = 1_000_000

# A frame-number field: a run of '#', a run of '@', or a printf integer conversion. '%%' is a
# literal percent sign, matched first so that '%%04d' is not taken for a field.
_FIELD = re.compile(r"%%|#+|@+|%(?P<flags>[-+ 0#]*)(?P<width>\d*)d")
_RANGE_PART = re.compile(r"(?P<first>-?\d+)(?:-(?P<last>-?\d+)(?:x(?P<step>\d+))?)?\Z")


@dataclass(frozen=True)
class FramePattern:
    """A file-name pattern with exactly one frame-number field.

    Attributes:
        text: the pattern as written, e.g. ``"shots/plate.####.exr"``.
        prefix: everything before the field.
        padding: the least number of digits (the sign counts toward it); 1 means none.
        suffix: everything after the field.

    Example::

        >>> pattern = FramePattern.parse("plate.####.exr")
        >>> pattern.path(1001), pattern.path(7), pattern.path(-1)
        (PosixPath('plate.1001.exr'), PosixPath('plate.0007.exr'), PosixPath('plate.-001.exr'))
    """

    text: str
    prefix: str
    padding: int
    suffix: str

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> FramePattern:
        """Return the pattern written as ``text``.

        Raises:
            ConfigError: ``text`` has no frame-number field, more than one, or a printf
                conversion other than ``%d`` and ``%0Nd``.
        """
        text = os.fspath(text)
        fields = [m for m in _FIELD.finditer(text) if m.group() != "%%"]
        if not fields:
            raise ConfigError(
                f"file pattern {text!r} has no frame number: write it as '####' (one '#' per "
                "digit), '@@@@' or '%04d', e.g. 'plate.####.exr'"
            )
        if len(fields) > 1:
            found = ", ".join(repr(m.group()) for m in fields)
            raise ConfigError(
                f"file pattern {text!r} has {len(fields)} frame-number fields ({found}); "
                "it must have exactly one"
            )
        field = fields[0]
        written = field.group()
        if written[0] in "#@":
            padding = len(written)
        else:
            flags, width = field.group("flags"), field.group("width")
            if flags not in ("", "0") or (flags == "" and int(width or 1) > 1):
                raise ConfigError(
                    f"file pattern {text!r}: {written!r} is not a frame number field frameserve "
                    "writes; use '%d' (no padding) or '%0Nd' (zero padded to N digits)"
                )
            padding = max(1, int(width or 1))
        prefix, suffix = text[: field.start()], text[field.end() :]
        if written[0] == "%":  # printf: '%%' is a literal '%'
            prefix, suffix = prefix.replace("%%", "%"), suffix.replace("%%", "%")
        return cls(text=text, prefix=prefix, padding=padding, suffix=suffix)

    def name(self, frame: int) -> str:
        """Return the file name (as text) of ``frame``."""
        return f"{self.prefix}{frame:0{self.padding}d}{self.suffix}"

    def path(self, frame: int) -> Path:
        """Return the path of ``frame``."""
        return Path(self.name(frame))

    def frames_on_disk(self) -> list[int]:
        """Return the frames whose files exist, sorted, by listing the pattern's folder.

        A file counts when its number has the pattern's padding (``####`` finds ``0007`` and
        ``12345`` but not ``7``), so that each file is the path of exactly one frame.
        """
        if os.sep in self.suffix or "/" in self.suffix:
            raise ConfigError(
                f"file pattern {self.text!r}: cannot list frames when the number is in a folder "
                "name; give the frames with --frames"
            )
        folder, name_prefix = os.path.split(self.prefix)
        directory = Path(folder or ".")
        if not directory.is_dir():
            return []
        number = re.compile(
            re.escape(name_prefix) + r"(?P<number>-?\d+)" + re.escape(self.suffix) + r"\Z"
        )
        frames: set[int] = set()
        for entry in directory.iterdir():
            match = number.match(entry.name)
            if match is None:
                continue
            frame = int(match.group("number"))
            if f"{frame:0{self.padding}d}" == match.group("number"):
                frames.add(frame)
        return sorted(frames)

    def __str__(self) -> str:
        return self.text


def parse_frames(text: str) -> list[int]:
    """Return the frames written as ``text``, sorted and without repeats.

    Parts are separated by commas or spaces; each part is a frame (``1050``), a range
    (``1001-1100``, both ends included) or a range with a step (``1001-1100x2``). Frames may be
    negative (``-10--1``).

    Raises:
        ConfigError: naming the part that is not a frame or range, a range whose start is after
            its end, a step of 0, or a range of more than :data:`MAX_FRAMES` frames.
    """
    parts = [part for part in re.split(r"[,\s]+", text.strip()) if part]
    if not parts:
        raise ConfigError(
            f"frame range {text!r} is empty: write e.g. '1001-1100', '1001-1100x2' or '1,5,10-20'"
        )
    frames: set[int] = set()
    for part in parts:
        match = _RANGE_PART.match(part)
        if match is None:
            raise ConfigError(
                f"frame range {text!r}: {part!r} is not a frame or range; write a frame "
                "(1050), a range (1001-1100) or a range with a step (1001-1100x2)"
            )
        first = int(match.group("first"))
        last = first if match.group("last") is None else int(match.group("last"))
        step = 1 if match.group("step") is None else int(match.group("step"))
        if last < first:
            raise ConfigError(
                f"frame range {text!r}: {part!r} starts after it ends; write {last}-{first}"
            )
        if step < 1:
            raise ConfigError(f"frame range {text!r}: {part!r} has step 0; the step must be >= 1")
        count = (last - first) // step + 1
        if count + len(frames) > MAX_FRAMES:
            raise ConfigError(f"frame range {text!r}: {part!r} makes more than {MAX_FRAMES} frames")
        frames.update(range(first, last + 1, step))
    return sorted(frames)


def format_frames(frames: Iterable[int]) -> str:
    """Return ``frames`` as a compact range text: ``[1, 2, 3, 7]`` → ``"1-3,7"``.

    The result reads back with :func:`parse_frames` to the same sorted, unique frames.
    """
    ordered = sorted(set(frames))
    runs: list[str] = []
    start = 0
    for index in range(1, len(ordered) + 1):
        if index == len(ordered) or ordered[index] != ordered[index - 1] + 1:
            first, last = ordered[start], ordered[index - 1]
            runs.append(str(first) if first == last else f"{first}-{last}")
            start = index
    return ",".join(runs)
