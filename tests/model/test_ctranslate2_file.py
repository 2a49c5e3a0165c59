"""The CTranslate2 model.bin reader on files written here byte by byte (the layout in its docstring), and on
the real Whisper tiny.en file: what ctranslate2 itself reports about it."""

import struct

import numpy as np
import pytest

from ambig.model.ctranslate2_file import CTranslate2FormatError, read_model_bin


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _file(version=6, dtype_id=4, values=None, extra=b"") -> bytes:
    values = np.arange(6, dtype=np.float16) if values is None else values
    out = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<II", 2, 1)
    out += _string("enc/w") + struct.pack("<B", 2) + struct.pack("<II", 2, 3) + struct.pack("<B", dtype_id)
    out += struct.pack("<I", values.nbytes) + values.tobytes()
    out += struct.pack("<I", 1) + _string("dec/w") + _string("enc/w")
    return out + extra


def test_a_written_file_reads_back(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(_file())
    model = read_model_bin(path)
    assert (model.spec, model.revision) == ("TestSpec", 2)
    assert model.get("enc/w").dtype == np.float16
    np.testing.assert_array_equal(model.get("dec/w"), np.arange(6, dtype=np.float16).reshape(2, 3))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_file(version=5), "format version 5"),
        (_file(dtype_id=5), "bfloat16"),
        (_file(dtype_id=9), "unknown data type 9"),
        (_file()[:-7], "truncated"),
        (_file(extra=b"\0\0"), "2 bytes left"),
        (_file(values=np.arange(5, dtype=np.float16)), "5 values for shape"),
    ],
)
def test_a_malformed_file_is_refused_with_the_reason(tmp_path, blob, message):
    path = tmp_path / "model.bin"
    path.write_bytes(blob)
    with pytest.raises(CTranslate2FormatError, match=message):
        read_model_bin(path)


def test_whisper_tiny_en_has_the_geometry_ctranslate2_reports():
    import ctranslate2

    from ambig.model.mini import WHISPER_TINY_EN

    path = WHISPER_TINY_EN.path()
    model = read_model_bin(path)
    assert (model.spec, model.revision, len(model.variables)) == ("WhisperSpec", 3, 148)
    assert model.get("encoder/conv1/weight").shape == (384, 80, 3)
    assert model.get("encoder/position_encodings/encodings").shape == (1500, 384)
    whisper = ctranslate2.models.Whisper(str(path.parent), device="cpu")
    assert whisper.n_mels == 80 and not whisper.is_multilingual
