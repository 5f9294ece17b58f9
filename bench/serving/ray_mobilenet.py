"""Ray Serve, MobileNetV2: POST /v2/models/mobilenet-v2/infer with an OIP v2 JSON body
holding `image` (UINT8 [N, 224, 224, 3] or FP32 [N, 3, 224, 224]). Requests are batched
by @serve.batch (at most 8, waiting at most 5 ms) and run through the very class mycel
serves, examples/mobilenet-v2/model.py (random weights, seed 0).

    OMP_NUM_THREADS=1 .venv/bin/python ray_mobilenet.py --port 18610
"""

import os
import sys
from types import SimpleNamespace

import numpy as np
from ray import serve
from starlette.requests import Request

from ray_common import decode, encode, serve_forever

COMPONENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "mobilenet-v2")
THREADS = int(os.environ.get("OMP_NUM_THREADS", "1"))


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=256,  # Serve's default (5) would cap a batch at 5 requests
    ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(THREADS)}}},
)
class MobileNetV2:
    def __init__(self, component, threads):
        import torch

        torch.set_num_threads(threads)
        sys.path.insert(0, component)
        from model import MobileNetV2 as Model

        self.model = Model(SimpleNamespace(path=component, weights={}))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def infer(self, images):
        sizes = [len(i) for i in images]
        out = self.model.predict({"image": np.concatenate(images)})
        bounds = np.cumsum(sizes)[:-1]
        per = {k: np.split(v, bounds) for k, v in out.items()}
        return [{k: per[k][i] for k in out} for i in range(len(images))]

    async def __call__(self, request: Request):
        body = await request.json()
        image = next(decode(t) for t in body["inputs"] if t["name"] == "image")
        out = await self.infer(image)
        return {"model_name": "mobilenet-v2", "outputs": [encode(n, a) for n, a in out.items()]}


if __name__ == "__main__":
    serve_forever(MobileNetV2.bind(os.path.abspath(COMPONENT), THREADS), "/v2/models/mobilenet-v2/infer", __doc__)
