"""Echo: returns every input tensor unchanged, under the same name."""


class Echo:
    def __init__(self, ctx):
        self.path = ctx.path

    def predict(self, inputs):
        return dict(inputs)
# x
