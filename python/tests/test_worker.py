"""End-to-end tests: real `python -m mycel_worker` processes on a real Unix socket."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mycel_worker.client import WorkerError, WorkerExited
from mycel_worker.protocol import pack_raw_frame, write_frame

from conftest import ECHO
from test_protocol import FIXED

RAISING = '''
import numpy as np

class Flaky:
    def __init__(self, ctx):
        pass

    def predict(self, inputs):
        if "fail" in inputs:
            helper()
        if "complex" in inputs:
            return {"bad": np.array([1j])}
        if "not_a_dict" in inputs:
            return [1, 2]
        if "wrong_name" in inputs:
            return {"ok": inputs["image"]}
        print("predict called", flush=True)
        return {"ok": np.ones(2, np.float32)}

def helper():
    raise ValueError("bad input")
'''

TRAINER = '''
import numpy as np

class Trainer:
    def __init__(self, ctx):
        self.w = np.zeros(3, np.float32)

    def predict(self, inputs):
        return {"y": inputs["x"] * self.w}

    def get_weights(self):
        return {"w": self.w}

    def train(self, weights, config):
        self.w = weights["w"] + np.float32(config.get("step", 1.0))
        return {"w": self.w}, np.int64(12), {"loss": np.float32(0.25), "acc": [np.float64(0.5)], "nan": float("nan")}

    def evaluate(self, weights, config):
        return np.float64(weights["w"].sum()), 7, {"name": config.get("name")}
'''

CONTEXT = '''
import json
import numpy as np

class Inspect:
    def __init__(self, ctx):
        self.info = {
            "path": str(ctx.path),
            "path_type": type(ctx.path).__name__,
            "weights": ctx.weights,
            "config": ctx.config,
            "data_dir": ctx.data_dir,
        }

    def predict(self, inputs):
        return {"info": json.dumps(self.info)}
'''


@pytest.mark.parametrize("datatype", sorted(FIXED))
def test_every_fixed_datatype_round_trips(echo, datatype):
    value = FIXED[datatype]
    out = echo.client.predict({"x": value})
    assert out["x"].dtype == value.dtype.newbyteorder("<")
    assert out["x"].shape == value.shape
    np.testing.assert_array_equal(out["x"], value)


def test_bytes_zero_d_empty_and_multi_dim(echo):
    inputs = {
        "text": np.array([[b"a", b""], [b"\x00\x01", "é".encode()]], dtype=object),
        "scalar": np.float64(3.25),
        "empty": np.zeros((2, 0, 4), np.float32),
        "empty_bytes": np.zeros((0,), dtype=object),
        "cube": np.arange(24, dtype=np.int16).reshape(2, 3, 4),
    }
    out = echo.client.predict(inputs)
    assert list(out) == list(inputs)
    assert out["text"].tolist() == inputs["text"].tolist()
    assert out["scalar"].shape == () and out["scalar"] == 3.25
    assert out["empty"].shape == (2, 0, 4) and out["empty"].dtype == np.float32
    assert out["empty_bytes"].shape == (0,)
    np.testing.assert_array_equal(out["cube"], inputs["cube"])


def test_ready_frame_and_log_line(component, worker):
    process = worker(component({"model.py": ECHO}), "model:Echo")
    ready = process.client.read_ready()
    assert ready.header == {
        "id": 0,
        "method": "ready",
        "pid": process.proc.pid,
        "protocol": 1,
        "methods": ["predict"],
        "tensors": [],
    }
    process.client.ping()
    assert process.stop() == 0
    log = process.stderr_path.read_text()
    assert f"mycel worker ready: model:Echo (pid {process.proc.pid})" in log


def test_exception_in_predict_is_an_error_reply_and_the_worker_stays_up(component, worker):
    process = worker(component({"model.py": RAISING}), "model:Flaky")
    process.client.read_ready()
    reply = process.client.request("predict", {"fail": np.zeros(1)})
    assert reply.id == 1 and reply.method == "error"
    assert reply.header["message"] == "ValueError: bad input"
    assert "in helper" in reply.header["traceback"]
    assert 'raise ValueError("bad input")' in reply.header["traceback"]
    assert "mycel_worker" not in reply.header["traceback"]
    # An input the model reads but the request does not have: the message says what it has.
    reply = process.client.request("predict", {"wrong_name": np.zeros(1)})
    assert reply.header["message"] == (
        "KeyError: 'image' (the model reads input 'image'; the request's inputs are 'wrong_name')"
    )
    out = process.client.predict({"x": np.zeros(1)})
    np.testing.assert_array_equal(out["ok"], [1, 1])
    assert process.stop() == 0
    # User prints go to the process's stdout, not into the protocol.
    assert "predict called" in process.stdout_path.read_text()


def test_bad_outputs_are_error_replies_naming_the_output(component, worker):
    process = worker(component({"model.py": RAISING}), "model:Flaky")
    process.client.read_ready()
    with pytest.raises(WorkerError, match="invalid result from Flaky.predict: tensor 'bad' has unsupported dtype complex128"):
        process.client.predict({"complex": np.zeros(1)})
    with pytest.raises(WorkerError, match="Flaky.predict returned outputs as list; expected a dict"):
        process.client.predict({"not_a_dict": np.zeros(1)})
    process.client.ping()


def test_failing_init_sends_error_and_exits_1(component, worker):
    path = component({"model.py": "class Broken:\n    def __init__(self, ctx):\n        raise RuntimeError('no gpu')\n"})
    process = worker(path, "model:Broken")
    with pytest.raises(WorkerError) as caught:
        process.client.read_ready()
    assert caught.value.message == "Broken.__init__ failed: RuntimeError: no gpu"
    assert "raise RuntimeError('no gpu')" in caught.value.traceback
    assert process.wait() == 1
    assert "no gpu" in process.stderr_path.read_text()


def test_failing_import_sends_error(component, worker):
    process = worker(component({"model.py": "import not_installed_anywhere\n"}), "model:M")
    with pytest.raises(WorkerError, match="importing module 'model' failed: ModuleNotFoundError: No module named 'not_installed_anywhere'") as caught:
        process.client.read_ready()
    assert "import not_installed_anywhere" in caught.value.traceback
    assert process.wait() == 1


@pytest.mark.parametrize(
    "entrypoint, message",
    [
        ("model:Foo", "module 'model' has no class 'Foo'; it defines Echo: set [component] entrypoint in mycel.toml to 'model:Echo' and push again"),
        ("nomodule:Echo", "no module 'nomodule' in "),
        ("pkg.missing:Echo", "no module 'pkg.missing' in "),
        ("model", "entrypoint 'model' is malformed: expected 'module:Class'"),
        ("model:", "entrypoint 'model:' is malformed"),
        ("mo-del:Echo", "entrypoint 'mo-del:Echo' is malformed"),
        ("model:VALUE", "entrypoint 'model:VALUE' names a int, not a class"),
    ],
)
def test_bad_entrypoint_says_what_is_missing(component, worker, entrypoint, message):
    path = component({"model.py": ECHO + "\nVALUE = 3\n", "pkg/__init__.py": ""})
    process = worker(path, entrypoint)
    with pytest.raises(WorkerError) as caught:
        process.client.read_ready()
    assert message in caught.value.message
    assert process.wait() == 1


def test_shadowed_module_gets_a_hint(component, worker):
    process = worker(component({"json.py": ECHO}), "json:Echo")
    with pytest.raises(WorkerError, match="module 'json' has no class 'Echo' \\(that module was loaded from .*, not from the version directory\\)"):
        process.client.read_ready()


def test_wrong_tensor_length_is_an_error_naming_the_tensor(echo):
    header = {
        "id": 5,
        "method": "predict",
        "tensors": [{"name": "pixels", "datatype": "FP32", "shape": [2, 2], "offset": 0, "length": 12}],
    }
    reply = echo.client.send_raw(header, bytes(12))
    assert reply.id == 5 and reply.method == "error"
    assert reply.header["message"] == "tensor 'pixels' (FP32, shape [2, 2]) needs 16 bytes, got 12"
    echo.client.ping()


def test_malformed_requests_get_error_replies(echo):
    reply = echo.client.send_raw({"method": "ping"})
    assert reply.id == 0 and "no valid u64 'id'" in reply.header["message"]
    reply = echo.client.send_raw({"id": 4, "method": "predict", "tensors": "nope"})
    assert reply.id == 4 and "'tensors' must be a list" in reply.header["message"]
    # A header that is not JSON still leaves the stream in step.
    echo.client.sock.sendall(b"\x03\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00{{{ab")
    reply = echo.client.read()
    assert reply.id == 0 and "not UTF-8 JSON" in reply.header["message"]
    echo.client.ping()


def test_unknown_and_unimplemented_methods(echo):
    reply = echo.client.request("frobnicate")
    assert reply.method == "error" and reply.header["message"].startswith("unknown method 'frobnicate'")
    with pytest.raises(WorkerError, match="model class Echo has no method 'train'"):
        echo.client.train({"w": np.zeros(1)})
    with pytest.raises(WorkerError, match="model class Echo has no method 'get_weights'"):
        echo.client.get_weights()
    echo.client.ping()


def test_train_evaluate_get_weights(component, worker):
    process = worker(component({"model.py": TRAINER}), "model:Trainer")
    ready = process.client.read_ready()
    assert ready.header["methods"] == ["predict", "get_weights", "train", "evaluate"]
    np.testing.assert_array_equal(process.client.get_weights()["w"], [0, 0, 0])

    weights, num_examples, metrics = process.client.train({"w": np.ones(3, np.float32)}, {"step": 2})
    np.testing.assert_array_equal(weights["w"], [3, 3, 3])
    assert weights["w"].dtype == np.float32
    assert num_examples == 12
    assert metrics == {"loss": 0.25, "acc": [0.5], "nan": None}

    loss, num_examples, metrics = process.client.evaluate({"w": np.full(3, 2, np.float32)}, {"name": "eu"})
    assert (loss, num_examples, metrics) == (6.0, 7, {"name": "eu"})
    reply = process.client.request("evaluate", {"w": np.zeros(3, np.float32)})
    assert reply.header["tensors"] == [] and reply.header["metrics"] == {"name": None}

    out = process.client.predict({"x": np.ones(3, np.float32)})
    np.testing.assert_array_equal(out["y"], [3, 3, 3])


def test_inputs_are_writable_views(component, worker):
    source = ECHO.replace("return dict(inputs)", "inputs['x'] += 1\n        return dict(inputs)")
    process = worker(component({"model.py": source}), "model:Echo")
    process.client.read_ready()
    np.testing.assert_array_equal(process.client.predict({"x": np.arange(3)})["x"], [1, 2, 3])


def test_shutdown_replies_bye_and_exits_0(echo):
    reply = echo.client.request("shutdown")
    assert reply.method == "bye" and reply.id == 1
    assert echo.wait() == 0
    assert "shutdown requested" in echo.stderr_path.read_text()


def test_closing_the_socket_makes_the_worker_exit(echo):
    echo.client.ping()
    echo.client.close()
    assert echo.wait() == 0


def test_context_weights_config_and_data_dir(component, worker, tmp_path):
    path = component(
        {
            "model.py": CONTEXT,
            "weights/model.safetensors": b"w",
            "weights/head.bin": b"h",
            "a/shared.pt": b"1",
            "b/shared.pt": b"2",
        }
    )
    process = worker(
        path,
        "model:Inspect",
        weights=["weights/model.safetensors", "weights/head.bin", "a/shared.pt", "b/shared.pt"],
        config={"threads": 2, "labels": ["a"]},
        data_dir=str(tmp_path / "data"),
    )
    process.client.read_ready()
    info = json.loads(process.client.predict({})["info"].item())
    root = str(path.resolve())
    assert info["path"] == root and info["path_type"].endswith("Path")
    assert info["weights"] == {
        "weights/model.safetensors": os.path.join(root, "weights", "model.safetensors"),
        "weights/head.bin": os.path.join(root, "weights", "head.bin"),
        "a/shared.pt": os.path.join(root, "a", "shared.pt"),
        "b/shared.pt": os.path.join(root, "b", "shared.pt"),
        "model": os.path.join(root, "weights", "model.safetensors"),
        "head": os.path.join(root, "weights", "head.bin"),
    }
    assert info["config"] == {"threads": 2, "labels": ["a"]}
    assert info["data_dir"] == str(tmp_path / "data")


def test_context_defaults(component, worker):
    process = worker(component({"model.py": CONTEXT}), "model:Inspect")
    process.client.read_ready()
    info = json.loads(process.client.predict({})["info"].item())
    assert (info["weights"], info["config"], info["data_dir"]) == ({}, {}, None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"extra_args": ["--config", "[1]"]}, "--config must be a JSON object, got list"),
        ({"extra_args": ["--config", "{oops"]}, "--config is not valid JSON"),
        ({"weights": ["../outside.bin"]}, "must be a relative path inside the version directory"),
    ],
)
def test_bad_arguments_are_error_frames(component, worker, kwargs, message):
    process = worker(component({"model.py": ECHO}), "model:Echo", **kwargs)
    with pytest.raises(WorkerError, match=message):
        process.client.read_ready()
    assert process.wait() == 1


def test_worker_without_a_listener_exits_1(tmp_path, component):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mycel_worker", "--socket", str(tmp_path / "none.sock"),
         "--path", str(component({"model.py": ECHO})), "--entrypoint", "model:Echo"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "cannot connect to the agent" in result.stderr


def test_start_worker_reports_an_early_exit(component):
    from mycel_worker.client import start_worker

    with pytest.raises(WorkerExited, match="status 2"):
        start_worker(component({"model.py": ECHO}), "model:Echo", extra_args=["--bogus"], stderr=open(os.devnull, "w"))


def test_pipelined_requests_are_answered_in_order(echo):
    frames = b"".join(
        pack_raw_frame({"id": i, "method": "ping"}) for i in range(10, 15)
    )
    echo.client.sock.sendall(frames)
    assert [echo.client.read().id for _ in range(5)] == [10, 11, 12, 13, 14]


def test_component_files_named_like_stdlib_modules_do_not_break_the_runtime(component, worker):
    path = component({"model.py": ECHO, "struct.py": "raise ImportError('shadowed')\n", "socket.py": ""})
    process = worker(path, "model:Echo")
    process.client.read_ready()
    np.testing.assert_array_equal(process.client.predict({"x": np.arange(2)})["x"], [0, 1])


USES_DEPENDENCY = '''
import numpy as np
from scale import factor
import shared

class Uses:
    def __init__(self, ctx):
        self.dependencies = {name: str(path) for name, path in ctx.dependencies.items()}

    def predict(self, inputs):
        import json
        return {
            "y": inputs["x"] * factor(),
            "shared": np.array([shared.WHO], dtype=object),
            "deps": np.array([json.dumps(self.dependencies)], dtype=object),
        }
'''


def test_dependencies_are_importable_after_the_component_itself(component, worker):
    helper = component({"scale.py": "def factor():\n    return 3\n", "shared.py": "WHO = 'helper'\n"})
    deeper = component({"scale.py": "def factor():\n    return 100\n", "deep.py": ""})
    path = component({"model.py": USES_DEPENDENCY, "shared.py": "WHO = 'component'\n"})
    process = worker(path, "model:Uses", dependencies=[("scale-helper", helper), ("deeper", deeper)])
    process.client.read_ready()
    answer = process.client.predict({"x": np.arange(3, dtype=np.float32)})
    # The nearer dependency wins over the deeper one, the component over both.
    np.testing.assert_array_equal(answer["y"], [0, 3, 6])
    assert answer["shared"][0] == b"component"
    assert json.loads(answer["deps"][0]) == {
        "scale-helper": str(helper.resolve()),
        "deeper": str(deeper.resolve()),
    }


@pytest.mark.parametrize(
    "argument, message",
    [
        ("no-equals", "expected NAME=DIR"),
        ("helper=/no/such/dir", "does not exist"),
    ],
)
def test_bad_dependency_arguments_are_error_frames(component, worker, argument, message):
    process = worker(component({"model.py": ECHO}), "model:Echo", extra_args=["--dependency", argument])
    with pytest.raises(WorkerError, match=message):
        process.client.read_ready()
    assert process.wait() == 1


STREAMER = '''
import time
import numpy as np

class Streamer:
    def __init__(self, ctx):
        self.closed = 0

    def generate(self, inputs):
        n = int(inputs["n"][0])
        fail_at = int(inputs["fail_at"][0]) if "fail_at" in inputs else -1
        try:
            for i in range(n):
                if i == fail_at:
                    raise ValueError(f"step {i} failed")
                if "slow" in inputs:
                    time.sleep(0.01)
                yield {"i": np.array([i], dtype=np.int64)}
        finally:
            self.closed += 1

    def predict(self, inputs):
        return {"closed": np.array([self.closed], dtype=np.int64)}
'''

YIELDING_PREDICT = '''
import numpy as np

class Counter:
    def __init__(self, ctx):
        pass

    def predict(self, inputs):
        for i in range(2):
            yield {"i": np.array([i])}
'''


def _stream(client, tensors):
    """Sends a generate request; the frames answering it, through `result` or `error`."""
    frames = [client.request("generate", tensors)]
    while frames[-1].method == "chunk":
        frames.append(client.read())
    return frames


def test_generate_streams_each_step_then_a_result(component, worker):
    process = worker(component({"model.py": STREAMER}), "model:Streamer")
    assert process.client.read_ready().header["methods"] == ["predict", "generate"]
    frames = _stream(process.client, {"n": np.array([3])})
    assert [f.method for f in frames] == ["chunk", "chunk", "chunk", "result"]
    assert [int(f.tensors()["i"][0]) for f in frames[:3]] == [0, 1, 2]
    assert frames[-1].header["steps"] == 3 and all(f.id == frames[0].id for f in frames)


def test_a_failing_step_ends_its_stream_with_the_error_and_the_worker_stays_up(component, worker):
    process = worker(component({"model.py": STREAMER}), "model:Streamer")
    process.client.read_ready()
    frames = _stream(process.client, {"n": np.array([5]), "fail_at": np.array([2])})
    assert [f.method for f in frames] == ["chunk", "chunk", "error"]
    assert frames[-1].header["message"] == "ValueError: step 2 failed"
    assert "raise ValueError" in frames[-1].header["traceback"]
    # The generator was closed, and the worker serves on.
    np.testing.assert_array_equal(process.client.predict({})["closed"], [1])


def test_cancel_stops_the_generator_between_steps(component, worker):
    process = worker(component({"model.py": STREAMER}), "model:Streamer")
    process.client.read_ready()
    first = process.client.request("generate", {"n": np.array([100000]), "slow": np.zeros(1)})
    assert first.method == "chunk"
    write_frame(process.client.sock, {"id": first.id, "method": "cancel"})
    frame = process.client.read()
    while frame.method == "chunk":
        frame = process.client.read()
    assert frame.method == "result" and frame.header["cancelled"] is True
    assert frame.header["steps"] < 100000
    np.testing.assert_array_equal(process.client.predict({})["closed"], [1])
    process.stop()
    assert "stopped generating after" in process.stderr_path.read_text()


def test_a_cancel_after_its_stream_ended_is_ignored(component, worker):
    process = worker(component({"model.py": STREAMER}), "model:Streamer")
    process.client.read_ready()
    frames = _stream(process.client, {"n": np.array([1])})
    write_frame(process.client.sock, {"id": frames[0].id, "method": "cancel"})
    process.client.ping()


def test_predict_may_stream_and_a_dict_is_one_step(component, worker, echo):
    process = worker(component({"model.py": YIELDING_PREDICT}), "model:Counter")
    process.client.read_ready()
    assert [f.method for f in _stream(process.client, {})] == ["chunk", "chunk", "result"]
    frames = _stream(echo.client, {"x": np.arange(3)})
    assert [f.method for f in frames] == ["chunk", "result"]
    np.testing.assert_array_equal(frames[0].tensors()["x"], np.arange(3))
