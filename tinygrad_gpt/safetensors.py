"""A small reader and writer of the safetensors format, on NumPy alone (no pickle, nothing executed).

A safetensors file is:

    8 bytes    N, the header's length, an unsigned little-endian 64-bit integer
    N bytes    a JSON object: {"name": {"dtype": "F32", "shape": [3, 4], "data_offsets": [begin, end]}, ...}
               and optionally "__metadata__": {str: str}; padded with spaces to a multiple of 8
    the rest   the tensors' raw little-endian bytes; offsets count from the end of the header

The same files load in Hugging Face's `safetensors` library, and its files (GPT-2's `model.safetensors`)
load here. Reading validates everything, so a truncated or corrupted file is a clear ValueError.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from tinygrad_gpt import backend

# safetensors dtype name <-> little-endian NumPy dtype
_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_NAMES = {np.dtype(v).newbyteorder("<") if np.dtype(v).itemsize > 1 else np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit too


def _dtype_name(dtype: np.dtype) -> str:
    key = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
    if key not in _NAMES:
        raise TypeError(f"safetensors cannot store dtype {dtype}; supported: {', '.join(_DTYPES)}")
    return _NAMES[key]


def serialize(tensors: dict, metadata: dict | None = None) -> bytes:
    """The safetensors bytes of `tensors`.

    Args:
        tensors: name -> array (NumPy, CuPy or anything `np.asarray` takes) of any shape.
        metadata: optional str -> str mapping, stored as the header's "__metadata__".
    Returns:
        bytes: header length, JSON header and raw data, in name order.
    """
    header: dict = {}
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    arrays, offset = [], 0
    for name in sorted(tensors):
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        array = np.asarray(backend.to_numpy(tensors[name]) if backend.is_array(tensors[name]) else tensors[name])
        dtype_name = _dtype_name(array.dtype)
        array = np.asarray(array, dtype=np.dtype(_DTYPES[dtype_name]), order="C")
        header[name] = {
            "dtype": dtype_name,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        arrays.append(array)
        offset += array.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # keeps the data 8-byte aligned
    return b"".join([struct.pack("<Q", len(header_bytes)), header_bytes] + [a.tobytes() for a in arrays])


def save_file(tensors: dict, path, metadata: dict | None = None) -> None:
    """Write `tensors` (name -> array) to `path` in safetensors format (not atomically; see checkpoint.py)."""
    with open(path, "wb") as f:
        f.write(serialize(tensors, metadata))


def _parse_header(buffer, source: str) -> tuple[dict, dict, int]:
    """(entries, metadata, data_start) from the first bytes of a safetensors buffer, validated."""
    if len(buffer) < 8:
        raise ValueError(f"{source}: not a safetensors file (only {len(buffer)} bytes, truncated?)")
    (n,) = struct.unpack("<Q", bytes(buffer[:8]))
    if n > _MAX_HEADER or 8 + n > len(buffer):
        raise ValueError(
            f"{source}: header length {n} exceeds the file size {len(buffer)} (truncated or not safetensors)"
        )
    try:
        header = json.loads(bytes(buffer[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{source}: corrupted safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{source}: corrupted safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{source}: corrupted safetensors header (__metadata__ must map str to str)")
    return header, metadata, 8 + n


def _is_count(value) -> bool:
    """A non-negative int, and not a bool (JSON's true would pass isinstance(value, int))."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(name: str, entry, data_size: int, source: str) -> tuple[np.dtype, tuple, int, int]:
    """The dtype, shape and byte range of one header entry, after checking it is consistent."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise ValueError(f"{source}: tensor {name!r} needs dtype, shape and data_offsets in the header")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise ValueError(f"{source}: tensor {name!r} has unsupported dtype {dtype_name!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ValueError(f"{source}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise ValueError(f"{source}: tensor {name!r} has invalid data_offsets {offsets!r}")
    dtype = np.dtype(_DTYPES[dtype_name])
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise ValueError(
            f"{source}: tensor {name!r} data_offsets [{begin}, {end}] are out of range of the {data_size} data bytes "
            "(truncated or corrupted file)"
        )
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise ValueError(
            f"{source}: tensor {name!r} has {end - begin} bytes but shape {tuple(shape)} of {dtype_name} "
            f"needs {math.prod(shape) * dtype.itemsize}"
        )
    return dtype, tuple(shape), begin, end


def deserialize(buffer, source: str = "<bytes>") -> tuple[dict, dict]:
    """Parse safetensors bytes.

    Args:
        buffer: the file's bytes (a writable bytearray gives writable arrays without a copy).
        source: a name for error messages, such as the file path.
    Returns:
        (tensors, metadata): name -> little-endian NumPy array, and the header's str -> str metadata.
    Raises:
        ValueError: truncated buffer, bad header, unknown dtype, offsets out of range or overlapping.
    """
    header, metadata, data_start = _parse_header(buffer, source)
    data_size = len(buffer) - data_start
    entries = sorted(
        ((name, *_check_entry(name, entry, data_size, source)) for name, entry in header.items()), key=lambda e: e[3]
    )
    position = 0
    for name, _, _, begin, end in entries:  # the data must be covered exactly once, without holes
        if begin != position:
            raise ValueError(f"{source}: tensor {name!r} starts at byte {begin}, expected {position} (corrupted file)")
        position = end
    if position != data_size:
        raise ValueError(f"{source}: {data_size - position} bytes after the last tensor (corrupted file)")
    view = memoryview(buffer)[data_start:]
    tensors = {}
    for name, dtype, shape, begin, end in entries:
        tensors[name] = np.frombuffer(view[begin:end], dtype=dtype).reshape(shape)
    return tensors, metadata


def load_file(path, with_metadata: bool = False):
    """Read a safetensors file: its header first, checked against the file's real size, then the data.

    Args:
        path: the file.
        with_metadata: also return the header's "__metadata__" dict.
    Returns:
        name -> NumPy array (writable, in the file's dtype), or (that dict, metadata) with `with_metadata`.
    Raises:
        ValueError: naming the file, when it is truncated or corrupted; FileNotFoundError when missing.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError(
                    f"{path}: header length {n} exceeds the file size {size} (truncated or not safetensors)"
                )
            head += f.read(n)
        header, _, data_start = _parse_header(head, path)
        for name, entry in header.items():  # every offset within the file before its data is read
            _check_entry(name, entry, size - data_start, path)
        buffer = bytearray(size)
        buffer[: len(head)] = head
        n_read = len(head) + f.readinto(memoryview(buffer)[len(head) :])
    tensors, metadata = deserialize(buffer[:n_read] if n_read != len(buffer) else buffer, source=path)
    return (tensors, metadata) if with_metadata else tensors
