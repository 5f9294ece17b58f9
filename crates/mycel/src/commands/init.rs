//! `mycel init NAME`: scaffold a component that pushes and serves as it is.

use anyhow::{bail, Context};

use crate::cli::InitArgs;

const MODEL_PY: &str = r#""""A small numpy classifier: a fixed random linear layer and a softmax.

Replace it with your own model. The worker calls __init__ once with a context
(ctx.path, ctx.weights, ctx.config) and predict for every request.
"""

import numpy as np


class Model:
    def __init__(self, ctx):
        rng = np.random.default_rng(0)
        self.weights = rng.standard_normal((4, 3)).astype(np.float32)

    def predict(self, inputs):
        x = np.asarray(inputs["input"], dtype=np.float32).reshape(-1, 4)
        logits = x @ self.weights
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {"probabilities": exp / exp.sum(axis=1, keepdims=True)}
"#;

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    mycel_core::manifest::validate_name(&args.name).map_err(anyhow::Error::msg)?;
    let dir = args.dir.unwrap_or_else(|| args.name.clone().into());
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already exists and is not empty; expected a new or empty directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let manifest = format!(
        r#"[component]
name = "{name}"
entrypoint = "model:Model"
description = "A numpy classifier scaffolded by mycel init"

[python]
version = ">=3.9"
requirements = ["numpy"]

[[signature.inputs]]
name = "input"
datatype = "FP32"
shape = [-1, 4]

[[signature.outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 3]
"#,
        name = args.name
    );
    for (file, content) in [
        ("mycel.toml", manifest.as_str()),
        ("model.py", MODEL_PY),
        (".gitignore", "__pycache__/\n"),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("created component {} in {}", args.name, dir.display());
    println!("push it with: mycel push {}", dir.display());
    Ok(())
}
