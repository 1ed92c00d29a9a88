"""What a GGUF file's header says, read without gguf-py's full parse (which builds every
field first: 25 s for a 262k-token vocabulary)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from shiftdown.errors import ModelError


def header_fields(path: Path, until: str | None = None) -> dict[str, Any]:
    """Every scalar and string field of a GGUF file's header (arrays, such as the
    vocabulary, are skipped), or those up to the field ``until``."""
    found: dict[str, Any] = {}
    try:
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelError(f"{path} is not a GGUF file")
            _version, _tensors, kv_count = struct.unpack("<IQQ", f.read(20))
            for _ in range(kv_count):
                key = _read_string(f)
                (kind,) = struct.unpack("<I", f.read(4))
                if kind == _STRING:
                    found[key] = _read_string(f)
                elif kind in _FORMATS:
                    (found[key],) = struct.unpack(_FORMATS[kind], f.read(_SIZES[kind]))
                else:
                    _skip_value(f, kind)
                if key == until:
                    break
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not a readable GGUF file: {exc}") from exc
    return found


def gguf_architecture(path: Path) -> str:
    """The ``general.architecture`` a GGUF file declares."""
    # Written first by llama.cpp's converter: the vocabulary after it is never walked.
    arch = header_fields(path, until="general.architecture").get("general.architecture")
    if not isinstance(arch, str):
        raise ModelError(f"{path} declares no general.architecture")
    return arch


# GGUF value types (gguf.GGUFValueType) by their fixed sizes; 8 is a string, 9 an array.
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def _read_string(f: Any) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return str(f.read(length).decode("utf-8"))


def _skip_value(f: Any, kind: int) -> None:
    if kind == _STRING:
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(length, 1)
    elif kind == _ARRAY:
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _SIZES:
            f.seek(_SIZES[item] * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, item)
    else:
        f.seek(_SIZES[kind], 1)


def open_gguf(path: Path) -> Any:
    """gguf-py's reader of ``path``, parsed through a plain array over the mapped file.

    gguf-py slices its ``np.memmap`` once per string of the vocabulary, and each slice of
    a memmap pays for memmap's bookkeeping: 26 s to open a 262k-token vocabulary. Slices
    of a plain array over the same mapping are the same bytes, without it.
    """
    import gguf
    import numpy as np

    class _PlainReader(gguf.GGUFReader):
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = np.asarray(self.data)
            count = int(count)
            itemsize = np.dtype(dtype).itemsize
            arr = plain[offset : offset + itemsize * count].view(dtype=dtype)[:count]
            return arr.view(
                arr.dtype.newbyteorder(
                    self.byte_order if override_order is None else override_order
                )
            )

    return _PlainReader(str(path))
