"""Frames and tensors of the agent <-> worker protocol (docs/worker-protocol.md)."""

from __future__ import annotations

import itertools
import json
import math
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

PROTOCOL_VERSION = 1

# u32 header_len | u64 body_len, little-endian.
PREFIX = struct.Struct("<IQ")
MAX_HEADER_LEN = 16 * 1024 * 1024
MAX_U64 = 2**64 - 1

# Offsets of tensors this module writes are multiples of this, so the reader can view
# every fixed-size tensor in place, aligned for SIMD.
TENSOR_ALIGN = 64

BYTES = "BYTES"
DATATYPES: Dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_KIND_SIZE_TO_DATATYPE = {(dtype.kind, dtype.itemsize): name for name, dtype in DATATYPES.items()}
_ELEMENT_LEN = struct.Struct("<I")
# Unix sockets take at most IOV_MAX (1024 on Linux) buffers per sendmsg.
_MAX_IOV = 512

Buffer = Union[bytes, bytearray, memoryview, np.ndarray]


class ProtocolError(Exception):
    """A frame, header or tensor that breaks the protocol; the stream itself is intact."""


class FramingError(ProtocolError):
    """The byte stream can no longer be split into frames: the connection must close."""


@dataclass
class Frame:
    """One decoded frame: its JSON header and its raw body."""

    header: Dict[str, Any]
    body: Buffer = b""

    @property
    def id(self) -> Any:
        return self.header.get("id")

    @property
    def method(self) -> Any:
        return self.header.get("method")

    def tensors(self) -> Dict[str, np.ndarray]:
        return decode_tensors(self.header.get("tensors", []), self.body)


# ---- tensors -> bytes ---------------------------------------------------------------


def datatype_of(dtype: np.dtype) -> Optional[str]:
    """The protocol datatype that carries numpy `dtype`, or None if none does."""
    if dtype.kind in "OSU":
        return BYTES
    return _KIND_SIZE_TO_DATATYPE.get((dtype.kind, dtype.itemsize))


def as_array(value: Any) -> np.ndarray:
    """`value` as an array; lists of strings become object arrays so no bytes are lost."""
    if isinstance(value, np.ndarray):
        return value
    array = np.asarray(value)
    # np.asarray turns [b"a\0"] into dtype S2, which drops trailing NULs on the way out.
    if array.dtype.kind in "SU":
        array = np.asarray(value, dtype=object)
    return array


def encode_tensor(name: str, value: Any) -> Tuple[Dict[str, Any], Buffer]:
    """One tensor's descriptor (without offset) and its bytes, viewed in place if possible."""
    array = as_array(value)
    datatype = datatype_of(array.dtype)
    if datatype is None:
        raise ProtocolError(
            f"tensor {name!r} has unsupported dtype {array.dtype}; expected bool, "
            "(u)int8..64, float16/32/64, or bytes/str"
        )
    shape = [int(d) for d in array.shape]
    if datatype == BYTES:
        data: Buffer = encode_bytes_elements(name, array)
    else:
        # Byte order and layout are fixed by the protocol; both are no-ops for the usual
        # native little-endian C-order array.
        array = np.ascontiguousarray(array, dtype=DATATYPES[datatype])
        data = memoryview(array.reshape(-1).view(np.uint8))
    descriptor = {"name": name, "datatype": datatype, "shape": shape, "length": _nbytes(data)}
    return descriptor, data


def encode_bytes_elements(name: str, array: np.ndarray) -> bytes:
    """BYTES data: `u32 length | bytes` per element, in C order."""
    parts: List[bytes] = []
    for item in array.flat:
        if isinstance(item, (bytes, bytearray, memoryview)):
            raw = bytes(item)
        elif isinstance(item, str):
            raw = item.encode("utf-8")
        else:
            raise ProtocolError(
                f"tensor {name!r} has unsupported dtype {array.dtype} "
                f"(an element of type {type(item).__name__}); BYTES elements must be bytes or str"
            )
        if len(raw) > 0xFFFFFFFF:
            raise ProtocolError(f"tensor {name!r} has a BYTES element over 4 GiB")
        parts.append(_ELEMENT_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def encode_tensors(tensors: Mapping[str, Any]) -> Tuple[List[Dict[str, Any]], List[Buffer], int]:
    """Descriptors, body parts (padding included) and body length for `tensors`, in order."""
    descriptors: List[Dict[str, Any]] = []
    parts: List[Buffer] = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise ProtocolError(f"tensor name {name!r} is a {type(name).__name__}, not a str")
        descriptor, data = encode_tensor(name, value)
        padding = -offset % TENSOR_ALIGN
        if padding:
            parts.append(bytes(padding))
            offset += padding
        descriptor["offset"] = offset
        descriptors.append(descriptor)
        parts.append(data)
        offset += descriptor["length"]
    return descriptors, parts, offset


def encode_header(header: Mapping[str, Any]) -> bytes:
    """Compact JSON; NaN and infinities are refused because strict JSON readers reject them."""
    try:
        raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"header is not plain JSON: {e}") from None
    if len(raw) > MAX_HEADER_LEN:
        raise ProtocolError(f"header of {len(raw)} bytes is over the limit of {MAX_HEADER_LEN}")
    return raw


def encode_frame(header: Mapping[str, Any], tensors: Optional[Mapping[str, Any]] = None) -> List[Buffer]:
    """A whole frame as a list of buffers, to be written back to back.

    `header["tensors"]` is replaced by the descriptors of `tensors`.
    """
    descriptors, parts, body_len = encode_tensors(tensors or {})
    raw_header = encode_header({**header, "tensors": descriptors})
    return [PREFIX.pack(len(raw_header), body_len) + raw_header, *parts]


def pack_frame(header: Mapping[str, Any], tensors: Optional[Mapping[str, Any]] = None) -> bytes:
    """A whole frame as one bytes object."""
    return b"".join(bytes(part) for part in encode_frame(header, tensors))


def pack_raw_frame(header: Mapping[str, Any], body: bytes = b"") -> bytes:
    """A frame whose header (descriptors included) is sent exactly as given."""
    raw_header = encode_header(header)
    return PREFIX.pack(len(raw_header), len(body)) + raw_header + body


# ---- bytes -> tensors ---------------------------------------------------------------


def decode_tensors(descriptors: Any, body: Buffer) -> Dict[str, np.ndarray]:
    """Arrays for each descriptor, viewing `body` in place where alignment allows.

    The arrays share memory with `body`: writable when `body` is (as frames read from a
    socket are), read-only when it is `bytes`.
    """
    if not isinstance(descriptors, list):
        raise ProtocolError(f"header field 'tensors' must be a list, got {type(descriptors).__name__}")
    data = np.frombuffer(body, dtype=np.uint8) if _nbytes(body) else np.empty(0, np.uint8)
    arrays: Dict[str, np.ndarray] = {}
    for descriptor in descriptors:
        name, datatype, shape, offset, length = _check_descriptor(descriptor, len(data))
        if name in arrays:
            raise ProtocolError(f"tensor {name!r} appears twice in one frame")
        raw = data[offset : offset + length]
        if datatype == BYTES:
            arrays[name] = decode_bytes_elements(name, shape, raw)
        else:
            arrays[name] = _decode_fixed(name, datatype, shape, raw)
    return arrays


def _decode_fixed(name: str, datatype: str, shape: List[int], raw: np.ndarray) -> np.ndarray:
    dtype = DATATYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(
            f"tensor {name!r} ({datatype}, shape {shape}) needs {expected} bytes, got {len(raw)}"
        )
    if raw.ctypes.data % dtype.alignment:
        # Many libraries (torch.from_numpy among them) mishandle unaligned arrays.
        raw = raw.copy()
    if datatype == "BOOL" and len(raw) and int(raw.max()) > 1:
        raise ProtocolError(f"tensor {name!r} (BOOL) holds byte {int(raw.max())}; expected 0 or 1")
    return raw.view(dtype).reshape(shape)


def decode_bytes_elements(name: str, shape: List[int], raw: np.ndarray) -> np.ndarray:
    """An object array of `bytes` from BYTES data."""
    count = math.prod(shape)
    elements: List[bytes] = []
    position = 0
    for index in range(count):
        if position + 4 > len(raw):
            raise ProtocolError(
                f"tensor {name!r} (BYTES, shape {shape}) has {len(raw)} bytes, "
                f"which end inside element {index} of {count}"
            )
        (size,) = _ELEMENT_LEN.unpack_from(raw, position)
        position += 4
        if position + size > len(raw):
            raise ProtocolError(
                f"tensor {name!r} (BYTES, shape {shape}) has {len(raw)} bytes, "
                f"which end inside element {index} of {count}"
            )
        elements.append(raw[position : position + size].tobytes())
        position += size
    if position != len(raw):
        raise ProtocolError(
            f"tensor {name!r} (BYTES, shape {shape}) needs {position} bytes for its "
            f"{count} elements, got {len(raw)}"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array.reshape(shape)


def _check_descriptor(descriptor: Any, body_len: int) -> Tuple[str, str, List[int], int, int]:
    if not isinstance(descriptor, dict):
        raise ProtocolError(f"tensor descriptor must be an object, got {descriptor!r}")
    name = descriptor.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"tensor descriptor has no string 'name': {descriptor!r}")
    datatype = descriptor.get("datatype")
    if datatype != BYTES and datatype not in DATATYPES:
        known = ", ".join([*DATATYPES, BYTES])
        raise ProtocolError(f"tensor {name!r} has unknown datatype {datatype!r}; expected one of {known}")
    shape = descriptor.get("shape")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise ProtocolError(f"tensor {name!r} has shape {shape!r}; expected a list of non-negative ints")
    offset = descriptor.get("offset")
    length = descriptor.get("length")
    if not _is_uint(offset) or not _is_uint(length):
        raise ProtocolError(
            f"tensor {name!r} has offset {offset!r} and length {length!r}; expected non-negative ints"
        )
    if offset + length > body_len:
        raise ProtocolError(
            f"tensor {name!r} lies outside the frame body "
            f"(offset {offset} + length {length} > {body_len} bytes)"
        )
    return name, datatype, shape, offset, length


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_U64


def _nbytes(buffer: Buffer) -> int:
    return buffer.nbytes if isinstance(buffer, (memoryview, np.ndarray)) else len(buffer)


def parse_header(raw: Buffer) -> Dict[str, Any]:
    """The JSON object in a frame's header bytes."""
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"frame header is not UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"frame header must be a JSON object, got {type(header).__name__}")
    return header


def parse_frame(data: Buffer) -> Frame:
    """One whole frame held in memory (the socket reader is `read_frame`)."""
    view = memoryview(data).cast("B")
    if len(view) < PREFIX.size:
        raise FramingError(f"frame of {len(view)} bytes is shorter than its {PREFIX.size}-byte prefix")
    header_len, body_len = PREFIX.unpack_from(view)
    if len(view) != PREFIX.size + header_len + body_len:
        raise FramingError(
            f"frame holds {len(view)} bytes; its prefix announces {PREFIX.size + header_len + body_len}"
        )
    header = parse_header(view[PREFIX.size : PREFIX.size + header_len])
    return Frame(header, view[PREFIX.size + header_len :])


# ---- sockets ------------------------------------------------------------------------


def read_frame(sock: socket.socket) -> Optional[Frame]:
    """The next frame, or None when the peer closed the connection between frames.

    Raises FramingError when the stream breaks mid-frame, and ProtocolError (after the
    whole frame was consumed, so the stream stays usable) when the header is not JSON.
    """
    prefix = bytearray(PREFIX.size)
    if not _recv_exact(sock, memoryview(prefix), at_frame_start=True):
        return None
    header_len, body_len = PREFIX.unpack(prefix)
    if header_len > MAX_HEADER_LEN:
        raise FramingError(f"frame header of {header_len} bytes is over the limit of {MAX_HEADER_LEN}")
    raw_header = bytearray(header_len)
    _recv_exact(sock, memoryview(raw_header))
    try:
        # np.empty skips the zero-fill that bytearray would do; the arrays decoded from
        # it are writable views.
        body = np.empty(body_len, dtype=np.uint8)
    except (MemoryError, ValueError) as e:
        raise FramingError(f"cannot hold a frame body of {body_len} bytes: {e}") from None
    _recv_exact(sock, memoryview(body))
    return Frame(parse_header(raw_header), body)


def _recv_exact(sock: socket.socket, view: memoryview, at_frame_start: bool = False) -> bool:
    received = 0
    while received < len(view):
        n = sock.recv_into(view[received:])
        if n == 0:
            if at_frame_start and received == 0:
                return False
            raise FramingError(f"connection closed mid-frame ({received} of {len(view)} bytes read)")
        received += n
    return True


def send_buffers(sock: socket.socket, buffers: Sequence[Buffer]) -> None:
    """Writes `buffers` back to back with scatter-gather I/O, without joining them."""
    pending: Deque[memoryview] = deque()
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        if len(view):
            pending.append(view)
    while pending:
        sent = sock.sendmsg(list(itertools.islice(pending, _MAX_IOV)))
        while sent:
            head = pending[0]
            if sent >= len(head):
                sent -= len(head)
                pending.popleft()
            else:
                pending[0] = head[sent:]
                sent = 0


def write_frame(
    sock: socket.socket, header: Mapping[str, Any], tensors: Optional[Mapping[str, Any]] = None
) -> None:
    """Encodes and sends one frame."""
    send_buffers(sock, encode_frame(header, tensors))
