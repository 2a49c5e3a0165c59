"""A reader for CTranslate2's `model.bin` (binary format version 6), in numpy, without ctranslate2.

The layout (CTranslate2's `ModelSpec._serialize` and `models/model.cc`): a little-endian uint32 format
version; the spec name as a string; a uint32 spec revision; a uint32 variable count; per variable its name,
a uint8 rank, `rank` uint32 dimensions, a uint8 data type, a uint32 byte count and the bytes; then a uint32
alias count and (alias, target) string pairs. A string is a uint16 byte count (the terminating NUL included)
and the bytes.

`ambig.model.mini` reads Whisper tiny.en's encoder from such a file; the tests check the reader against
ctranslate2's own encoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 6
# CTranslate2's DataType enum (include/ctranslate2/types.h).
DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
}
# 5 is bfloat16, which numpy lacks: such a file is refused by name (Whisper tiny.en ships float16).
DTYPE_NAMES = {5: "bfloat16"}


class CTranslate2FormatError(ValueError):
    """The file is not a CTranslate2 model.bin this reader understands."""


@dataclass(frozen=True)
class CTranslate2Model:
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise KeyError(f"{self.spec} has no variable {name!r}")
        return self.variables[name]


class _Cursor:
    def __init__(self, blob: bytes, path: Path):
        self.blob, self.offset, self.path = blob, 0, path

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.blob):
            raise CTranslate2FormatError(
                f"{self.path}: truncated at byte {self.offset} (wanted {n} more of {len(self.blob)})"
            )
        out = self.blob[self.offset : self.offset + n]
        self.offset += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("H")).rstrip(b"\0").decode("utf-8")


def read_model_bin(path: str | Path) -> CTranslate2Model:
    """Every variable of a CTranslate2 `model.bin`, as numpy arrays of the stored dtype."""
    path = Path(path)
    cursor = _Cursor(path.read_bytes(), path)
    version = cursor.unpack("I")
    if version != FORMAT_VERSION:
        raise CTranslate2FormatError(
            f"{path}: CTranslate2 binary format version {version}; this reader reads version {FORMAT_VERSION}"
        )
    spec = cursor.string()
    revision = cursor.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(cursor.unpack("I")):
        name = cursor.string()
        shape = tuple(cursor.unpack("I") for _ in range(cursor.unpack("B")))
        dtype_id = cursor.unpack("B")
        if dtype_id not in DTYPES:
            what = DTYPE_NAMES.get(dtype_id, f"unknown data type {dtype_id}")
            raise CTranslate2FormatError(
                f"{path}: variable {name!r} is {what}, which this reader cannot read"
            )
        data = cursor.take(cursor.unpack("I"))
        array = np.frombuffer(data, dtype=DTYPES[dtype_id])
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise CTranslate2FormatError(
                f"{path}: variable {name!r} holds {array.size} values for shape {shape}"
            )
        variables[name] = array.reshape(shape)
    aliases = {}
    for _ in range(cursor.unpack("I")):
        alias = cursor.string()
        aliases[alias] = cursor.string()
    if cursor.offset != len(cursor.blob):
        raise CTranslate2FormatError(
            f"{path}: {len(cursor.blob) - cursor.offset} bytes left after the aliases"
        )
    return CTranslate2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)
