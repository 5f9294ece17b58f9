"""Unit tests for frame and tensor encoding, without processes or sockets."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading

import numpy as np
import pytest

from mycel_worker.protocol import (
    DATATYPES,
    PREFIX,
    TENSOR_ALIGN,
    FramingError,
    ProtocolError,
    decode_tensors,
    encode_frame,
    encode_tensors,
    pack_frame,
    pack_raw_frame,
    parse_frame,
    read_frame,
    send_buffers,
    write_frame,
)

FIXED = {
    "BOOL": np.array([[True, False, True]]),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-32768, 1, 32767], dtype=np.int16),
    "INT32": np.array([[-(2**31)], [2**31 - 1]], dtype=np.int32),
    "INT64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "UINT8": np.arange(12, dtype=np.uint8).reshape(2, 3, 2),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "FP16": np.array([1.5, -0.0, np.inf], dtype=np.float16),
    "FP32": np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4),
    "FP64": np.array([np.pi, np.nan, -np.inf]),
}


def round_trip(tensors):
    frame = parse_frame(pack_frame({"id": 1, "method": "predict"}, tensors))
    return frame, frame.tensors()


@pytest.mark.parametrize("datatype", sorted(FIXED))
def test_fixed_datatypes_round_trip(datatype):
    value = FIXED[datatype]
    frame, decoded = round_trip({"x": value})
    assert frame.header["tensors"][0]["datatype"] == datatype
    assert decoded["x"].dtype == DATATYPES[datatype]
    assert decoded["x"].shape == value.shape
    np.testing.assert_array_equal(decoded["x"], value)


def test_descriptor_fields_and_little_endian_bytes():
    frame = parse_frame(pack_frame({"id": 9, "method": "predict"}, {"x": np.array([1.0, 2.0], np.float32)}))
    assert frame.header == {
        "id": 9,
        "method": "predict",
        "tensors": [{"name": "x", "datatype": "FP32", "shape": [2], "length": 8, "offset": 0}],
    }
    assert bytes(frame.body) == bytes.fromhex("0000803f00000040")


def test_big_endian_and_non_contiguous_inputs_are_normalized():
    big = np.array([1, 2, 3], dtype=">i4")
    strided = np.arange(12, dtype=np.float64).reshape(3, 4).T
    _, decoded = round_trip({"big": big, "strided": strided})
    assert decoded["big"].dtype == np.dtype("<i4")
    np.testing.assert_array_equal(decoded["big"], [1, 2, 3])
    np.testing.assert_array_equal(decoded["strided"], strided)


def test_zero_d_and_empty_arrays():
    _, decoded = round_trip(
        {"scalar": np.float32(2.5), "empty": np.zeros((0, 3), np.int16), "none": np.zeros(0, object)}
    )
    assert decoded["scalar"].shape == () and decoded["scalar"] == 2.5
    assert decoded["empty"].shape == (0, 3) and decoded["empty"].dtype == np.int16
    assert decoded["none"].shape == (0,) and decoded["none"].dtype == object


def test_python_scalars_and_lists_become_arrays():
    _, decoded = round_trip({"i": 3, "f": 0.5, "b": True, "l": [[1, 2], [3, 4]], "s": "hé"})
    assert decoded["i"].dtype == np.int64 and decoded["i"] == 3
    assert decoded["f"].dtype == np.float64 and decoded["f"] == 0.5
    assert decoded["b"].dtype == np.bool_ and decoded["b"]
    assert decoded["l"].shape == (2, 2)
    assert decoded["s"].shape == () and decoded["s"].item() == "hé".encode()


def test_bytes_round_trip_from_object_str_and_fixed_width_arrays():
    objects = np.array([[b"a", b""], [b"\x00\xff", "zürich"]], dtype=object)
    _, decoded = round_trip(
        {
            "objects": objects,
            "fixed": np.array([b"ab", b"c"]),
            "unicode": np.array(["x", "yz"]),
            "list": [b"trailing\x00", b"nul"],
        }
    )
    assert decoded["objects"].dtype == object and decoded["objects"].shape == (2, 2)
    assert decoded["objects"].tolist() == [[b"a", b""], [b"\x00\xff", "zürich".encode()]]
    assert decoded["fixed"].tolist() == [b"ab", b"c"]
    assert decoded["unicode"].tolist() == [b"x", b"yz"]
    # A list of bytes must not lose trailing NULs to numpy's fixed-width S dtype.
    assert decoded["list"].tolist() == [b"trailing\x00", b"nul"]


def test_bytes_wire_layout():
    descriptors, parts, body_len = encode_tensors({"s": np.array([b"hi", b"abc"], dtype=object)})
    assert descriptors[0]["length"] == body_len == 4 + 2 + 4 + 3
    assert b"".join(bytes(p) for p in parts) == b"\x02\x00\x00\x00hi\x03\x00\x00\x00abc"


def test_offsets_are_aligned():
    descriptors, _, body_len = encode_tensors(
        {"a": np.zeros(3, np.uint8), "b": np.zeros(5, np.float64), "c": np.zeros(0, np.int32)}
    )
    assert [d["offset"] for d in descriptors] == [0, TENSOR_ALIGN, 2 * TENSOR_ALIGN]
    assert body_len == 2 * TENSOR_ALIGN


def test_decoded_arrays_view_the_body_and_misaligned_ones_are_copied():
    body = np.zeros(64, np.uint8)
    body[8:16] = np.frombuffer(np.float64(1.5).tobytes(), np.uint8)
    body[17:25] = np.frombuffer(np.float64(2.5).tobytes(), np.uint8)
    decoded = decode_tensors(
        [
            {"name": "aligned", "datatype": "FP64", "shape": [], "offset": 8, "length": 8},
            {"name": "odd", "datatype": "FP64", "shape": [1], "offset": 17, "length": 8},
        ],
        body,
    )
    assert decoded["aligned"] == 1.5 and np.shares_memory(decoded["aligned"], body)
    assert decoded["odd"][0] == 2.5 and decoded["odd"].flags.aligned
    assert decoded["aligned"].flags.writeable


@pytest.mark.parametrize(
    "value, message",
    [
        (np.array([1 + 2j]), "tensor 'y' has unsupported dtype complex128"),
        (np.array([1, "a", None], dtype=object), "unsupported dtype object (an element of type int)"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "unsupported dtype datetime64[D]"),
    ],
)
def test_unsupported_dtypes_name_the_tensor(value, message):
    with pytest.raises(ProtocolError, match=re.escape(message)):
        encode_tensors({"y": value})


@pytest.mark.parametrize(
    "descriptor, body, message",
    [
        ({"datatype": "FP32", "shape": [2], "offset": 0, "length": 4}, 8, "tensor 'x' (FP32, shape [2]) needs 8 bytes, got 4"),
        ({"datatype": "INT16", "shape": [2, 2], "offset": 0, "length": 10}, 16, "needs 8 bytes, got 10"),
        ({"datatype": "FP32", "shape": [1], "offset": 4, "length": 4}, 6, "lies outside the frame body"),
        ({"datatype": "BF16", "shape": [1], "offset": 0, "length": 2}, 2, "unknown datatype 'BF16'"),
        ({"datatype": "FP32", "shape": [-1], "offset": 0, "length": 4}, 4, "shape [-1]"),
        ({"datatype": "FP32", "shape": [1], "offset": -1, "length": 4}, 4, "offset -1"),
        ({"datatype": "BOOL", "shape": [1], "offset": 0, "length": 1}, 1, "holds byte 7"),
    ],
)
def test_bad_descriptors_are_named(descriptor, body, message):
    with pytest.raises(ProtocolError, match=re.escape(message)):
        decode_tensors([{"name": "x", **descriptor}], bytes([7] * body))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x05\x00\x00\x00abc", "end inside element 0 of 1"),
        (b"\x01\x00", "end inside element 0 of 1"),
        (b"\x01\x00\x00\x00ab", "needs 5 bytes for its 1 elements, got 6"),
    ],
)
def test_bad_bytes_data(data, message):
    with pytest.raises(ProtocolError, match=message):
        decode_tensors([{"name": "s", "datatype": "BYTES", "shape": [1], "offset": 0, "length": len(data)}], data)


def test_duplicate_tensor_names_are_refused():
    d = {"name": "x", "datatype": "UINT8", "shape": [1], "offset": 0, "length": 1}
    with pytest.raises(ProtocolError, match="appears twice"):
        decode_tensors([d, d], b"\x01")


def test_header_must_be_plain_json():
    with pytest.raises(ProtocolError, match="not plain JSON"):
        encode_frame({"id": 1, "method": "result", "loss": float("nan")})
    with pytest.raises(ProtocolError, match="JSON object"):
        parse_frame(PREFIX.pack(2, 0) + b"[]")
    with pytest.raises(ProtocolError, match="not UTF-8 JSON"):
        parse_frame(PREFIX.pack(1, 0) + b"{")


def test_parse_frame_checks_lengths():
    frame = pack_frame({"id": 1, "method": "ping"})
    with pytest.raises(FramingError):
        parse_frame(frame[:-1])
    with pytest.raises(FramingError):
        parse_frame(frame[:5])


def test_prefix_layout():
    frame = pack_raw_frame({"id": 1, "method": "ping"}, b"xyz")
    header_len, body_len = struct.unpack_from("<IQ", frame)
    assert body_len == 3 and frame.endswith(b"xyz")
    assert json.loads(frame[12 : 12 + header_len]) == {"id": 1, "method": "ping"}


def test_socket_round_trip_with_many_buffers():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.settimeout(10)
        b.settimeout(10)
        # More tensors than one sendmsg takes, and a body larger than the socket buffer,
        # written from a thread so neither side blocks the other.
        tensors = {f"t{i}": np.full(3, i, np.int32) for i in range(1500)}
        tensors["big"] = np.arange(1 << 20, dtype=np.float32)
        writer = threading.Thread(target=write_frame, args=(a, {"id": 3, "method": "predict"}, tensors))
        writer.start()
        frame = read_frame(b)
        writer.join()
        decoded = frame.tensors()
        assert len(decoded) == 1501
        np.testing.assert_array_equal(decoded["t1499"], [1499] * 3)
        np.testing.assert_array_equal(decoded["big"], tensors["big"])
        a.close()
        assert read_frame(b) is None


def test_read_frame_mid_frame_close_is_a_framing_error():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with b:
        send_buffers(a, [pack_frame({"id": 1, "method": "ping"})[:-2]])
        a.close()
        with pytest.raises(FramingError, match="mid-frame"):
            read_frame(b)


def test_read_frame_refuses_huge_headers():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.sendall(PREFIX.pack(1 << 30, 0))
        with pytest.raises(FramingError, match="over the limit"):
            read_frame(b)
