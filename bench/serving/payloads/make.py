"""Writes the request bodies every server receives, as OIP v2 JSON (stdlib only).

    python3 payloads/make.py            # noop.json, mobilenet-uint8.json, mobilenet-fp32.json,
                                        # noop.bin, mobilenet-uint8.bin

noop.json            `x` FP32 [1, 4]: the serving overhead, nothing to compute.
mobilenet-uint8.json `image` UINT8 [1, 224, 224, 3]: one image of random RGB pixels, the
                     form sent in the benchmark (the model normalizes it).
mobilenet-fp32.json  `image` FP32 [1, 3, 224, 224], already normalized: the other input
                     form the MobileNetV2 component takes; not used by run.sh.
noop.bin, mobilenet-uint8.bin  the same tensors with the binary data extension: a JSON
                     header, then the raw bytes; the header's length (the
                     Inference-Header-Content-Length a client sends) is in NAME.bin.len.
The pixels come from a fixed seed, so the files are the same on every machine.
"""

import array
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def write(name, body):
    path = os.path.join(HERE, name)
    with open(path, "w") as f:
        json.dump(body, f, separators=(",", ":"))
    print(f"{path}: {os.path.getsize(path)} bytes")


def write_binary(name, tensor_name, datatype, shape, raw):
    header = {"inputs": [{"name": tensor_name, "datatype": datatype, "shape": shape,
                          "parameters": {"binary_data_size": len(raw)}}]}
    header = json.dumps(header, separators=(",", ":")).encode()
    path = os.path.join(HERE, name)
    with open(path, "wb") as f:
        f.write(header + raw)
    with open(path + ".len", "w") as f:
        f.write(str(len(header)))
    print(f"{path}: {os.path.getsize(path)} bytes, {len(header)} of them JSON")


def tensor(name, datatype, shape, data):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


def main():
    noop = [0.5, -1.25, 2.0, 3.75]
    write("noop.json", tensor("x", "FP32", [1, 4], noop))
    write_binary("noop.bin", "x", "FP32", [1, 4], array.array("f", noop).tobytes())

    rng = random.Random(0)
    pixels = [rng.randrange(256) for _ in range(224 * 224 * 3)]  # HWC, row-major
    write("mobilenet-uint8.json", tensor("image", "UINT8", [1, 224, 224, 3], pixels))
    write_binary("mobilenet-uint8.bin", "image", "UINT8", [1, 224, 224, 3], bytes(pixels))

    chw = [
        round((pixels[(y * 224 + x) * 3 + c] / 255.0 - MEAN[c]) / STD[c], 5)
        for c in range(3)
        for y in range(224)
        for x in range(224)
    ]
    write("mobilenet-fp32.json", tensor("image", "FP32", [1, 3, 224, 224], chw))


if __name__ == "__main__":
    main()
