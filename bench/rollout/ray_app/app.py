"""The rollout benchmark's model for Ray Serve: answers with its code version."""

from ray import serve
from starlette.requests import Request

VERSION = 1


@serve.deployment
class Echo:
    async def __call__(self, request: Request):
        await request.body()
        return {"version": VERSION}


app = Echo.bind()
