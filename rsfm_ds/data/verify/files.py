"""Checks every verifier shares: folders, file lists, image headers, split names."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ...errors import ConfigError
from .report import VerifyReport

IO_THREADS = 16
"""Threads for per-file header reads and hashing (I/O bound; hashlib releases the GIL)."""

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8"
_PNG_END = b"IEND"
_JPEG_END = b"\xff\xd9"
_TIFF = (b"II*\x00", b"MM\x00*")
_BMP = b"BM"


def need_dir(report: VerifyReport, path: Path, what: str) -> bool:
    if path.is_dir():
        return True
    report.error(path, f"missing folder ({what})")
    return False


def list_files(folder: Path) -> List[Path]:
    """Regular files (or links to them) of ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name)


def _cut_short(path: Path, end_marker: bytes) -> bool:
    """True when ``end_marker`` is not in the last kilobyte of ``path``: a JPEG ends with its
    end-of-image marker and a PNG with its IEND chunk, which a file cut short has lost (a few bytes
    of padding after them are tolerated). Reads only the tail."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 1024))
        return end_marker not in f.read()


def image_header(path: Path, need_size: bool) -> Tuple[str, Optional[Tuple[int, int]]]:
    """``(format, (width, height) or None)`` from the first bytes of an image file; the size only
    when ``need_size`` (PNG and JPEG), else only the signature is read. PNG and JPEG files must
    also end as their format does (a file cut short does not).

    Raises:
        ValueError: the signature is no PNG, JPEG, TIFF or BMP, or the file is cut short.
    """
    from ..jpeg import jpeg_size

    with open(path, "rb") as f:
        head = f.read(4096 if need_size else 8)
    for signature, end, name in ((_PNG, _PNG_END, "PNG"), (_JPEG, _JPEG_END, "JPEG")):
        if head.startswith(signature) and _cut_short(path, end):
            raise ValueError(f"{name} file cut short (no {'IEND chunk' if name == 'PNG' else 'end-of-image marker'})")
    if head.startswith(_PNG):
        if not need_size:
            return "png", None
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ValueError("PNG header is cut short (no IHDR chunk)")
        return "png", (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
    if head.startswith(_JPEG):
        if not need_size:
            return "jpeg", None
        try:
            return "jpeg", jpeg_size(head)
        except ValueError:  # EXIF or other segments before the frame header
            return "jpeg", jpeg_size(path.read_bytes())
    if head[:4] in _TIFF:
        return "tiff", None
    if head.startswith(_BMP):
        return "bmp", None
    if not head:
        raise ValueError("empty file")
    raise ValueError("not an image (no PNG, JPEG, TIFF or BMP signature)")


def check_images(report: VerifyReport, paths: Sequence[Path], formats: Tuple[str, ...],
                  size: Optional[Tuple[int, int]] = None, need_size: bool = False
                  ) -> Dict[Path, Optional[Tuple[int, int]]]:
    """Signature of every image and, with ``size``, its dimensions (reading a few kB instead of a
    few bytes per file); returns the sizes read (with ``size`` or ``need_size``)."""
    need_size = need_size or size is not None

    def read(path: Path):
        try:
            return path, image_header(path, need_size), None
        except (OSError, ValueError) as e:
            return path, None, e

    sizes: Dict[Path, Optional[Tuple[int, int]]] = {}
    with ThreadPoolExecutor(IO_THREADS) as pool:
        for path, header, exc in pool.map(read, paths):
            if exc is not None:
                report.error(path, f"unreadable image: {exc}")
                continue
            kind, dims = header
            if kind not in formats:
                report.error(path, f"{kind.upper()} data, expected {' or '.join(f.upper() for f in formats)}")
            elif size is not None and dims is not None and dims != size:
                report.error(path, f"image is {dims[0]}x{dims[1]}, the release's are {size[0]}x{size[1]}")
            sizes[path] = dims
    return sizes


def default_splits(root: Path, required: Sequence[str], optional: Sequence[str],
                    present: Callable[[Path, str], bool]) -> List[str]:
    return list(required) + [s for s in optional if present(root, s)]


def check_split_names(splits: Sequence[str], known: Sequence[str], dataset: str) -> None:
    unknown = [s for s in splits if s not in known]
    if unknown or not splits:
        raise ConfigError(f"splits: {dataset} has {', '.join(known)}; got {', '.join(splits) or 'none'}")
