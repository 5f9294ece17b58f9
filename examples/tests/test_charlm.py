"""The charlm example through a real worker process, as an agent calls it: it streams
its text a character at a time, the same text for the same prompt, and `predict`
answers that text at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mycel_worker.client import start_worker

EXAMPLE = Path(__file__).resolve().parent.parent / "charlm"


def test_streams_the_text_predict_answers_at_once():
    with start_worker(EXAMPLE, "model:CharLM") as worker:
        worker.client.read_ready()
        inputs = {"text_input": np.array([b"The web "], dtype=object), "max_tokens": np.array([50])}
        frames = [worker.client.request("generate", inputs)]
        while frames[-1].method == "chunk":
            frames.append(worker.client.read())
        assert frames[-1].method == "result" and frames[-1].header["steps"] == 50
        streamed = "".join(f.tensors()["text_output"][0].decode() for f in frames[:-1])
        assert len(streamed) == 50 and set(streamed) <= set(EXAMPLE.joinpath("corpus.txt").read_text())
        whole = worker.client.predict(inputs)["text_output"][0].decode()
        assert whole == streamed
        # Another prompt writes another text.
        other = worker.client.predict({"text_input": np.array([b"Trees "], dtype=object)})
        assert other["text_output"][0].decode() != whole
