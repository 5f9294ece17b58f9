"""Ray Serve, no-op model: POST /v2/models/noop/infer with an OIP v2 JSON body; every
input is decoded to numpy and comes back as an output of the same name.

    .venv/bin/python ray_noop.py --port 18610
"""

from ray import serve
from starlette.requests import Request

from ray_common import decode, encode, serve_forever


@serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
class Noop:
    async def __call__(self, request: Request):
        body = await request.json()
        inputs = {t["name"]: decode(t) for t in body["inputs"]}
        return {"model_name": "noop", "outputs": [encode(n, a) for n, a in inputs.items()]}


if __name__ == "__main__":
    serve_forever(Noop.bind(), "/v2/models/noop/infer", __doc__)
