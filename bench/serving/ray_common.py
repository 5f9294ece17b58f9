"""What the two Ray Serve servers share: OIP v2 JSON tensors <-> numpy, and the process
that starts a one-node Ray cluster, runs one application on 127.0.0.1:PORT and stops on
SIGTERM/SIGINT."""

import argparse
import os
import signal
import threading

import numpy as np

DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
DATATYPES = {np.dtype(v): k for k, v in DTYPES.items()}


def decode(tensor):
    """One OIP v2 JSON input (flat or nested `data`) as a numpy array."""
    return np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]]).reshape(tensor["shape"])


def encode(name, array):
    """A numpy array as an OIP v2 JSON output."""
    return {
        "name": name,
        "datatype": DATATYPES[array.dtype],
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }


def serve_forever(app, route_prefix, description):
    """Starts Ray and Serve, runs `app` at route_prefix, blocks until a signal."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=18610)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import ray
    from ray import serve

    # Replica processes import this module and the server's own file by name.
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        object_store_memory=512 * 1024 * 1024,
        log_to_driver=False,
    )
    # After ray.init, which installs its own SIGTERM handler.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(app, name="bench", route_prefix=route_prefix)
        print(f"serving http://127.0.0.1:{args.port}{route_prefix}", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
