"""MLServer custom runtime, MobileNetV2: runs the very class mycel serves,
examples/mobilenet-v2/model.py (random weights, seed 0), on `image` (UINT8
[N, 224, 224, 3] or FP32 [N, 3, 224, 224]). Adaptive batching (model-settings.json) hands
predict() up to 8 requests concatenated along the first dimension."""

import os
import sys
from types import SimpleNamespace

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

COMPONENT = os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "examples", "mobilenet-v2")
)


class MobileNetV2(MLModel):
    async def load(self) -> bool:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        sys.path.insert(0, COMPONENT)
        from model import MobileNetV2 as Model

        self.model = Model(SimpleNamespace(path=COMPONENT, weights={}))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        image = next(NumpyCodec.decode_input(i) for i in payload.inputs if i.name == "image")
        out = self.model.predict({"image": image})
        outputs = []
        for name, array in out.items():
            output = NumpyCodec.encode_output(name=name, payload=array)
            output.shape = list(array.shape)  # `class` stays [N]; the codec would make it [N, 1]
            outputs.append(output)
        return InferenceResponse(model_name=self.name, outputs=outputs)
