"""The worker process: connect to the agent, load the model, serve one frame at a time."""

from __future__ import annotations

import argparse
import math
import os
import select
import socket
import sys
import traceback
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .context import ContextError, build_context
from .loader import LoadError, describe, load_model, user_traceback
from .protocol import (
    MAX_U64,
    PROTOCOL_VERSION,
    Buffer,
    Frame,
    FramingError,
    ProtocolError,
    encode_frame,
    read_frame,
    send_buffers,
    write_frame,
)

MODEL_METHODS = ("predict", "generate", "get_weights", "train", "evaluate")


class RequestError(Exception):
    """A request that cannot be served; the message goes back to the agent as is."""

    def __init__(self, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.traceback = traceback_text


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mycel_worker",
        description="Serve a mycel component's model class to the agent over a Unix socket.",
    )
    parser.add_argument("--socket", required=True, help="the agent's Unix socket to connect to")
    parser.add_argument("--path", required=True, help="the version directory")
    parser.add_argument("--entrypoint", required=True, help="module:Class inside the version directory")
    parser.add_argument(
        "--weights", action="append", default=[], help="a weight file's path relative to --path (repeatable)"
    )
    parser.add_argument("--config", default=None, help="a JSON object handed to the model as ctx.config")
    parser.add_argument("--data-dir", default=None, help="a node-local data directory (ctx.data_dir)")
    parser.add_argument(
        "--dependency",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a component this one depends on and its version directory, put on sys.path after --path "
        "in the order given (repeatable; ctx.dependencies)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the worker; returns the process exit status."""
    args = parse_args(argv)
    # The agent sends stdout to a log file; line buffering keeps user prints timely
    # there and not lost when the worker is killed.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.socket)
    except OSError as e:
        log(f"cannot connect to the agent at {args.socket}: {e}")
        return 1
    with sock:
        try:
            return run(sock, args)
        except (BrokenPipeError, ConnectionResetError):
            log("the agent closed the connection; exiting")
            return 0
        except KeyboardInterrupt:
            return 130


def run(sock: socket.socket, args: argparse.Namespace) -> int:
    """Loads the model, announces it and serves until told to stop."""
    try:
        ctx = build_context(args.path, args.weights, args.config, args.data_dir, args.dependency)
        model = load_model(ctx.path, args.entrypoint, ctx)
    except (ContextError, LoadError) as e:
        message = e.message if isinstance(e, LoadError) else str(e)
        traceback_text = e.traceback if isinstance(e, LoadError) else ""
        log(f"failed to start {args.entrypoint}: {message}")
        if traceback_text:
            sys.stderr.write(traceback_text)
        write_frame(sock, error_header(0, message, traceback_text))
        return 1
    methods = [name for name in MODEL_METHODS if callable(getattr(model, name, None))]
    write_frame(
        sock,
        {"id": 0, "method": "ready", "pid": os.getpid(), "protocol": PROTOCOL_VERSION, "methods": methods},
    )
    log(f"ready: {args.entrypoint} (pid {os.getpid()})", prefix="mycel worker ")
    return serve(sock, model)


def serve(sock: socket.socket, model: Any) -> int:
    """Answers frames in order until the socket closes or `shutdown` arrives."""
    while True:
        try:
            frame = read_frame(sock)
        except FramingError as e:
            log(f"{e}; exiting")
            return 1
        except ProtocolError as e:
            # The frame was consumed whole, so the stream is still in step.
            write_frame(sock, error_header(0, str(e), ""))
            continue
        if frame is None:
            log("the agent closed the connection; exiting")
            return 0
        if frame.method == "generate":
            stream(sock, model, frame)
            continue
        if frame.method == "cancel":
            # The stream it was for ended before the worker read it: nothing to stop.
            continue
        reply, stop = handle(model, frame)
        send_buffers(sock, reply)
        if stop:
            log("shutdown requested; exiting")
            return 0


def handle(model: Any, frame: Frame) -> Tuple[List[Buffer], bool]:
    """The encoded reply to one request, and whether the worker should exit after it."""
    request_id = frame.id
    if not (isinstance(request_id, int) and not isinstance(request_id, bool) and 0 <= request_id <= MAX_U64):
        return encode_frame(error_header(0, f"request header has no valid u64 'id': {request_id!r}", "")), False
    method = frame.method
    try:
        if method == "ping":
            return encode_frame({"id": request_id, "method": "pong"}), False
        if method == "shutdown":
            return encode_frame({"id": request_id, "method": "bye"}), True
        handler = HANDLERS.get(method) if isinstance(method, str) else None
        if handler is None:
            known = ", ".join([*HANDLERS, "ping", "shutdown"])
            raise RequestError(f"unknown method {method!r}; expected one of {known}")
        fields, tensors = handler(model, frame)
        try:
            return encode_frame({"id": request_id, "method": "result", **fields}, tensors), False
        except ProtocolError as e:
            raise RequestError(f"invalid result from {_qualified(model, method)}: {e}") from None
    except RequestError as e:
        return encode_frame(error_header(request_id, e.message, e.traceback)), False
    except ProtocolError as e:
        return encode_frame(error_header(request_id, str(e), "")), False
    except Exception as e:
        # A bug in this runtime, not in the model: keep serving, but say where it is.
        log(f"internal error serving {method!r}: {describe(e)}")
        message = f"internal error in the mycel worker: {describe(e)}"
        return encode_frame(error_header(request_id, message, traceback.format_exc())), False


def stream(sock: socket.socket, model: Any, frame: Frame) -> None:
    """Answers a `generate` request a step at a time: a `chunk` frame for each dict of
    outputs the model yields (from `generate`, or from `predict` written as a
    generator; a model that returns one dict streams it as one step), then `result`.
    Between steps it looks for the agent's `cancel` (the client went away) and, if it
    came, closes the generator, so the model stops at once."""
    request_id = frame.id
    if not (isinstance(request_id, int) and not isinstance(request_id, bool) and 0 <= request_id <= MAX_U64):
        write_frame(sock, error_header(0, f"request header has no valid u64 'id': {request_id!r}", ""))
        return
    name = "generate" if callable(getattr(model, "generate", None)) else "predict"
    steps: Optional[Iterator[Any]] = None
    count = 0
    try:
        produced = _call(_model_method(model, name), frame.tensors())
        if isinstance(produced, Mapping):
            steps = iter([produced])
        elif hasattr(produced, "__next__"):
            steps = produced
        else:
            raise RequestError(
                f"{_qualified(model, name)} returned {type(produced).__name__}; "
                "expected a dict of name -> array, or to yield such dicts"
            )
        while True:
            try:
                outputs = next(steps)
            except StopIteration:
                break
            except Exception as e:
                raise RequestError(describe(e), user_traceback(e)) from None
            chunk = _tensor_dict(model, name, outputs, "outputs")
            try:
                send_buffers(sock, encode_frame({"id": request_id, "method": "chunk"}, chunk))
            except ProtocolError as e:
                raise RequestError(f"invalid step from {_qualified(model, name)}: {e}") from None
            count += 1
            if _cancelled(sock):
                log(f"stopped generating after {count} steps: the client went away")
                write_frame(sock, {"id": request_id, "method": "result", "steps": count, "cancelled": True})
                return
        write_frame(sock, {"id": request_id, "method": "result", "steps": count})
    except RequestError as e:
        write_frame(sock, error_header(request_id, e.message, e.traceback))
    finally:
        close = getattr(steps, "close", None)
        if callable(close):
            close()


def _cancelled(sock: socket.socket) -> bool:
    """Whether the agent asked to stop the stream under way; it sends nothing else
    while one is."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    frame = read_frame(sock)
    # A closed connection stops it too; the serve loop then sees the end.
    return frame is None or frame.method == "cancel"


def error_header(request_id: int, message: str, traceback_text: str) -> Dict[str, Any]:
    return {"id": request_id, "method": "error", "message": message, "traceback": traceback_text}


# ---- methods ------------------------------------------------------------------------

Fields = Dict[str, Any]
Tensors = Mapping[str, Any]


def predict(model: Any, frame: Frame) -> Tuple[Fields, Tensors]:
    fn = _model_method(model, "predict")
    outputs = _call(fn, frame.tensors())
    return {}, _tensor_dict(model, "predict", outputs, "outputs")


def get_weights(model: Any, frame: Frame) -> Tuple[Fields, Tensors]:
    fn = _model_method(model, "get_weights")
    weights = _call(fn)
    return {}, _tensor_dict(model, "get_weights", weights, "weights")


def train(model: Any, frame: Frame) -> Tuple[Fields, Tensors]:
    fn = _model_method(model, "train")
    result = _call(fn, frame.tensors(), _request_config(frame))
    weights, num_examples, metrics = _triple(model, "train", result, "(weights, num_examples, metrics)")
    fields = {
        "num_examples": _num_examples(model, "train", num_examples),
        "metrics": _metrics(model, "train", metrics),
    }
    return fields, _tensor_dict(model, "train", weights, "weights")


def evaluate(model: Any, frame: Frame) -> Tuple[Fields, Tensors]:
    fn = _model_method(model, "evaluate")
    result = _call(fn, frame.tensors(), _request_config(frame))
    loss, num_examples, metrics = _triple(model, "evaluate", result, "(loss, num_examples, metrics)")
    fields = {
        "loss": _loss(model, loss),
        "num_examples": _num_examples(model, "evaluate", num_examples),
        "metrics": _metrics(model, "evaluate", metrics),
    }
    return fields, {}


HANDLERS: Dict[str, Callable[[Any, Frame], Tuple[Fields, Tensors]]] = {
    "predict": predict,
    "get_weights": get_weights,
    "train": train,
    "evaluate": evaluate,
}


# ---- checking what user code returns ------------------------------------------------


def _qualified(model: Any, method: Any) -> str:
    return f"{type(model).__name__}.{method}"


def _model_method(model: Any, name: str) -> Callable[..., Any]:
    fn = getattr(model, name, None)
    if not callable(fn):
        raise RequestError(f"model class {type(model).__name__} has no method '{name}'")
    return fn


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:
        raise RequestError(describe(e) + _missing_input_hint(e, args), user_traceback(e)) from None


def _missing_input_hint(e: Exception, args: Any) -> str:
    # A model that reads inputs["image"] from a request that named it otherwise: say
    # which inputs the request did have, instead of leaving a bare KeyError.
    inputs = args[0] if args and isinstance(args[0], dict) else None
    if not isinstance(e, KeyError) or inputs is None or len(e.args) != 1:
        return ""
    (key,) = e.args
    if not isinstance(key, str) or key in inputs:
        return ""
    have = ", ".join(repr(name) for name in inputs) or "none"
    return f" (the model reads input {key!r}; the request's inputs are {have})"


def _request_config(frame: Frame) -> Dict[str, Any]:
    config = frame.header.get("config")
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise RequestError(f"header field 'config' must be a JSON object, got {type(config).__name__}")
    return config


def _tensor_dict(model: Any, method: str, value: Any, what: str) -> Tensors:
    if not isinstance(value, Mapping):
        raise RequestError(
            f"{_qualified(model, method)} returned {what} as {type(value).__name__}; "
            "expected a dict of name -> array"
        )
    return value


def _triple(model: Any, method: str, value: Any, expected: str) -> Tuple[Any, Any, Any]:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise RequestError(f"{_qualified(model, method)} returned {type(value).__name__}; expected {expected}")
    return value[0], value[1], value[2]


def _num_examples(model: Any, method: str, value: Any) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 0:
        return int(value)
    raise RequestError(
        f"{_qualified(model, method)} returned num_examples {value!r}; expected a non-negative int"
    )


def _loss(model: Any, value: Any) -> float:
    try:
        loss = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{_qualified(model, 'evaluate')} returned loss {value!r}; expected a number") from None
    if not math.isfinite(loss):
        raise RequestError(f"{_qualified(model, 'evaluate')} returned loss {loss}; expected a finite number")
    return loss


def _metrics(model: Any, method: str, value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RequestError(
            f"{_qualified(model, method)} returned metrics as {type(value).__name__}; expected a dict"
        )
    return {str(key): _json_value(model, method, str(key), item) for key, item in value.items()}


def _json_value(model: Any, method: str, key: str, value: Any) -> Any:
    """Plain JSON for a metric: numpy scalars and arrays become numbers and lists;
    NaN and infinities become null, which strict JSON readers accept."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (np.generic, np.ndarray)):
        return _json_value(model, method, key, value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _json_value(model, method, key, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(model, method, key, v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        # Framework scalars (a torch or tf 0-d tensor) convert through .item().
        try:
            return _json_value(model, method, key, item())
        except Exception:
            pass
    raise RequestError(
        f"{_qualified(model, method)} returned metric {key!r} of type {type(value).__name__}, "
        "which is not JSON (use numbers, strings, bools, lists or dicts)"
    )


def log(message: str, prefix: str = "mycel worker: ") -> None:
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
