"""MLServer custom runtime, no-op model: every input is decoded to numpy and comes back
as an output of the same name."""

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Noop(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        outputs = [
            NumpyCodec.encode_output(name=i.name, payload=NumpyCodec.decode_input(i))
            for i in payload.inputs
        ]
        return InferenceResponse(model_name=self.name, outputs=outputs)
