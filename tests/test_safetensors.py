"""Our safetensors reader/writer: round trips, the on-disk layout of the spec, and clear errors on bad files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygrad_gpt import safetensors

DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8"]
DTYPES += ["bool"]


@given(
    arrays=st.lists(
        st.sampled_from(DTYPES).flatmap(
            lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        ),
        min_size=0,
        max_size=4,
    )
)
def test_round_trip_keeps_dtype_shape_and_values(arrays):
    tensors = {f"t{i}.weight": a for i, a in enumerate(arrays)}
    loaded, metadata = safetensors.deserialize(bytearray(safetensors.serialize(tensors, {"k": "v"})))
    assert metadata == {"k": "v"}
    assert loaded.keys() == tensors.keys()
    for name, a in tensors.items():
        assert loaded[name].dtype == a.dtype and loaded[name].shape == a.shape
        np.testing.assert_array_equal(loaded[name], a)


def test_file_round_trip_with_non_contiguous_and_big_endian_inputs(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4).T  # a transposed view
    b = np.arange(5, dtype=">i4")  # big-endian input is stored little-endian
    safetensors.save_file({"a": a, "b": b}, tmp_path / "x.safetensors")
    loaded = safetensors.load_file(tmp_path / "x.safetensors")
    np.testing.assert_array_equal(loaded["a"], a)
    np.testing.assert_array_equal(loaded["b"], b)
    loaded["a"][0, 0] = 7.0  # arrays from a file are writable
    assert loaded["a"][0, 0] == 7.0


def test_layout_follows_the_spec():
    a = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    b = np.array([7], dtype=np.int64)
    data = safetensors.serialize({"b": b, "a": a}, {"format": "pt"})
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0  # the data starts 8-byte aligned
    header = json.loads(data[8 : 8 + n])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["a"] == {"dtype": "F32", "shape": [1, 3], "data_offsets": [0, 12]}
    assert header["b"] == {"dtype": "I64", "shape": [1], "data_offsets": [12, 20]}
    assert data[8 + n :] == a.astype("<f4").tobytes() + b.astype("<i8").tobytes()


def test_reads_a_file_built_by_hand_from_the_spec():
    """A file as Hugging Face writes it (unsorted header keys, no metadata) loads with the right values."""
    values = np.array([0.5, -1.5], dtype="<f8")
    ints = np.array([[1, 2], [3, 4]], dtype="<u2")
    header = {
        "ints": {"dtype": "U16", "shape": [2, 2], "data_offsets": [16, 24]},
        "values": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
    }
    h = json.dumps(header).encode()
    data = struct.pack("<Q", len(h)) + h + values.tobytes() + ints.tobytes()
    loaded, metadata = safetensors.deserialize(data)
    assert metadata == {}
    np.testing.assert_array_equal(loaded["values"], values)
    np.testing.assert_array_equal(loaded["ints"], ints)


def _file(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def _w(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    """A header with one tensor "w"."""
    return {"w": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}


BAD_FILES = {
    "too short": (b"\x01\x02", "truncated"),
    "header length past the end": (struct.pack("<Q", 1000) + b"{}", "exceeds the file size"),
    "header not JSON": (struct.pack("<Q", 4) + b"{{{{", "corrupted safetensors header"),
    "header not an object": (_file([1, 2], b""), "not a JSON object"),  # type: ignore[arg-type]
    "offsets out of range": (_file(_w(offsets=(0, 800)), bytes(8)), "out of range"),
    "size does not match shape": (_file(_w(shape=(3,)), bytes(8)), "needs 12"),
    "unknown dtype": (_file(_w(dtype="Q7"), bytes(8)), "unsupported dtype"),
    "missing key": (_file({"w": {"dtype": "F32", "shape": [2]}}, bytes(8)), "needs dtype, shape and data_offsets"),
    "negative shape": (_file(_w(shape=(-2,)), bytes(8)), "invalid shape"),
    "hole in the data": (_file(_w(offsets=(4, 12)), bytes(12)), "expected 0"),
    "trailing bytes": (_file(_w(), bytes(12)), "after the last tensor"),
    "bad metadata": (_file({**_w(), "__metadata__": {"a": 1}}, bytes(8)), "__metadata__"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_a_clear_value_error_naming_the_file(tmp_path, case):
    data, expected = BAD_FILES[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        safetensors.load_file(path)
    message = str(info.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_every_truncation_of_a_valid_file_is_detected(tmp_path):
    data = safetensors.serialize({"a": np.ones((3, 5), np.float32), "b": np.arange(4)})
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            safetensors.deserialize(data[:cut])


def test_unsupported_dtype_is_a_type_error_on_write():
    with pytest.raises(TypeError, match="complex128"):
        safetensors.serialize({"z": np.zeros(2, dtype=np.complex128)})
