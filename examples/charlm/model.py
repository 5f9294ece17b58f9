"""A character-level language model small enough to train at start on CPU: it counts
which character follows each run of three in corpus.txt, and writes by sampling from
those counts. `generate` yields its text a character at a time, so mycel streams it
(`/v2/models/charlm/generate_stream`); `predict` answers all at once."""

import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ORDER = 3


class CharLM:
    def __init__(self, ctx):
        text = " ".join((Path(ctx.path) / "corpus.txt").read_text().split())
        # The text read as a loop: every run of three has something after it.
        looped = text + " " + text[:ORDER]
        follows = defaultdict(Counter)
        for i in range(len(looped) - ORDER):
            follows[looped[i : i + ORDER]][looped[i + ORDER]] += 1
        self.text = text
        self.table = {
            context: (list(counts), np.array(list(counts.values()), dtype=np.float64))
            for context, counts in follows.items()
        }

    def generate(self, inputs):
        prompt = _text(inputs.get("text_input"), default="The ")
        count = _count(inputs.get("max_tokens"), default=64)
        # The same prompt writes the same text, streamed or not.
        rng = np.random.default_rng(zlib.crc32(prompt.encode()))
        context = prompt[-ORDER:] if len(prompt) >= ORDER else self.text[:ORDER]
        for _ in range(count):
            # A prompt's own ending may be nowhere in the corpus: start from its top.
            choices, weights = self.table.get(context, self.table[self.text[:ORDER]])
            char = choices[rng.choice(len(choices), p=weights / weights.sum())]
            context = (context + char)[-ORDER:]
            yield {"text_output": np.array([char.encode()], dtype=np.object_)}

    def predict(self, inputs):
        text = "".join(out["text_output"][0].decode() for out in self.generate(inputs))
        return {"text_output": np.array([text.encode()], dtype=np.object_)}


def _text(tensor, default):
    if tensor is None or tensor.size == 0:
        return default
    value = tensor.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def _count(tensor, default):
    if tensor is None or tensor.size == 0:
        return default
    return max(0, min(int(tensor.reshape(-1)[0]), 4096))
