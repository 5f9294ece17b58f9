"""No-op model for the serving benchmark: every input tensor comes back under its name."""


class Noop:
    def __init__(self, ctx):
        pass

    def predict(self, inputs):
        return dict(inputs)
