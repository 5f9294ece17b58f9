//! `mycel predict`: one inference request through the gateway, from files or JSON, with
//! the answer printed readably (or as the gateway's JSON).

use std::path::Path;

use anyhow::{bail, Context};
use bytes::Bytes;
use mycel_core::manifest::TensorSpec;
use mycel_core::tensor::{Datatype, Tensor};
use serde_json::{json, Value};

use crate::cli::PredictArgs;
use crate::connect::data_dir;
use crate::npy;

/// Values shown per output before eliding the rest.
const SHOWN: usize = 8;

pub async fn run(args: PredictArgs) -> anyhow::Result<()> {
    let data = data_dir(&args.data)?;
    let gateway = crate::connect::gateway_url(args.gateway.as_deref(), &data)?;
    let http = crate::connect::http_client(args.ca.as_deref(), &data)?;
    let model_path = match &args.model_version {
        Some(v) => format!("{gateway}/v2/models/{}/versions/{v}", args.model),
        None => format!("{gateway}/v2/models/{}", args.model),
    };
    let metadata = get_json(&http, &model_path).await?;
    let specs: Vec<TensorSpec> =
        serde_json::from_value(metadata["inputs"].clone()).unwrap_or_default();
    let given: Vec<&str> = args.inputs.iter().map(|(name, _)| name.as_str()).collect();
    if let Some(problem) = undeclared_input(&args.model, &specs, &given) {
        bail!("{problem}");
    }

    let mut inputs = Vec::new();
    let mut binary: Vec<Bytes> = Vec::new();
    for (name, value) in &args.inputs {
        let spec = specs.iter().find(|s| &s.name == name);
        match read_input(name, value, spec)? {
            Input::Tensor(tensor) => {
                inputs.push(json!({
                    "name": tensor.name,
                    "datatype": tensor.datatype.as_str(),
                    "shape": tensor.shape,
                    "parameters": {"binary_data_size": tensor.data.len()},
                }));
                binary.push(tensor.data);
            }
            Input::Json(input) => inputs.push(input),
        }
    }
    let request = json!({
        "inputs": inputs,
        "parameters": {"binary_data_output": !args.json},
    });
    let header = serde_json::to_vec(&request)?;
    let mut body = header.clone();
    for part in &binary {
        body.extend_from_slice(part);
    }
    let response = http
        .post(format!("{model_path}/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    let status = response.status();
    let json_len = response
        .headers()
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let bytes = response.bytes().await?;
    if !status.is_success() {
        bail!("{} ({status})", error_message(&bytes));
    }
    if args.json {
        std::io::Write::write_all(&mut std::io::stdout(), &bytes)?;
        println!();
        return Ok(());
    }
    let header_end = json_len.unwrap_or(bytes.len()).min(bytes.len());
    let answer: Value =
        serde_json::from_slice(&bytes[..header_end]).context("the gateway's answer is not JSON")?;
    let mut offset = header_end;
    println!(
        "{} version {}",
        answer["model_name"].as_str().unwrap_or(&args.model),
        answer["model_version"].as_str().unwrap_or("?")
    );
    for output in answer["outputs"].as_array().into_iter().flatten() {
        let name = output["name"].as_str().unwrap_or("?");
        let datatype = output["datatype"].as_str().unwrap_or("?");
        let shape: Vec<u64> = serde_json::from_value(output["shape"].clone()).unwrap_or_default();
        let size = output["parameters"]["binary_data_size"].as_u64();
        let shown = match (size, datatype.parse::<Datatype>()) {
            (Some(size), Ok(datatype)) => {
                let end = offset.saturating_add(size as usize).min(bytes.len());
                let tensor = Tensor {
                    name: name.to_owned(),
                    datatype,
                    shape: shape.clone(),
                    data: bytes.slice(offset..end),
                };
                offset = end;
                describe(&tensor)
            }
            _ => output["data"].to_string(),
        };
        println!("  {name} {datatype} {shape:?}: {shown}");
    }
    Ok(())
}

/// What is wrong when `given` names an input the model's signature does not declare
/// (a model without a signature takes any name).
fn undeclared_input(model: &str, specs: &[TensorSpec], given: &[&str]) -> Option<String> {
    let unknown = given
        .iter()
        .find(|name| !specs.is_empty() && !specs.iter().any(|s| s.name == **name))?;
    let takes: Vec<String> = specs
        .iter()
        .map(|s| format!("{} ({} {:?})", s.name, s.datatype, s.shape))
        .collect();
    Some(format!(
        "model {model:?} has no input {unknown:?}; it takes {}: `--input {}=...`",
        takes.join(", "),
        specs[0].name
    ))
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {url}"))?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if !status.is_success() {
        bail!("{} ({status})", error_message(&bytes));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

enum Input {
    /// Raw bytes, sent with the binary-data extension.
    Tensor(Tensor),
    /// An OIP JSON input, data included.
    Json(Value),
}

/// `name=file.npy`, `name=image.jpg|png`, `name=@file.json` or `name=JSON`.
fn read_input(name: &str, value: &str, spec: Option<&TensorSpec>) -> anyhow::Result<Input> {
    let lower = value.to_ascii_lowercase();
    if lower.ends_with(".npy") {
        let bytes = std::fs::read(value).with_context(|| format!("reading {value}"))?;
        let tensor = npy::parse(name, &bytes).map_err(|e| anyhow::anyhow!("{value}: {e}"))?;
        return Ok(Input::Tensor(tensor));
    }
    if [".jpg", ".jpeg", ".png"]
        .iter()
        .any(|ext| lower.ends_with(ext))
    {
        return Ok(Input::Tensor(image_input(name, Path::new(value), spec)?));
    }
    let text = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => value.to_owned(),
    };
    let data: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "--input {name}: expected FILE.npy, an image (.jpg, .png), @FILE.json or a JSON array"
        )
    })?;
    let shape = json_shape(&data);
    let datatype = match spec {
        Some(spec) => spec.datatype.clone(),
        None => infer_datatype(&data).as_str().to_owned(),
    };
    Ok(Input::Json(json!({
        "name": name, "datatype": datatype, "shape": shape, "data": data,
    })))
}

/// An image as the model declares it: UINT8 pixels `[N, H, W, 3]` (or FP32 `[N, 3, H,
/// W]` scaled to 0..1), resized to the declared H and W; without a declaration, UINT8
/// `[1, h, w, 3]` at the image's own size.
fn image_input(name: &str, path: &Path, spec: Option<&TensorSpec>) -> anyhow::Result<Tensor> {
    let image = image::open(path)
        .with_context(|| format!("reading image {}", path.display()))?
        .to_rgb8();
    let dims = |shape: &[i64]| -> Vec<u32> {
        shape
            .iter()
            .map(|&d| u32::try_from(d).unwrap_or(0))
            .collect()
    };
    let (layout, height, width) = match spec.map(|s| (s.datatype.as_str(), dims(&s.shape))) {
        Some(("FP32", d)) if d.len() == 4 && d[1] == 3 && d[2] > 0 && d[3] > 0 => {
            ("chw", d[2], d[3])
        }
        Some((_, d)) if d.len() == 4 && d[3] == 3 && d[1] > 0 && d[2] > 0 => ("hwc", d[1], d[2]),
        _ => ("hwc", image.height(), image.width()),
    };
    let image = if (image.width(), image.height()) == (width, height) {
        image
    } else {
        image::imageops::resize(&image, width, height, image::imageops::FilterType::Triangle)
    };
    let (h, w) = (u64::from(height), u64::from(width));
    Ok(if layout == "chw" {
        let pixels = image.as_raw();
        let plane = (height * width) as usize;
        let mut data = Vec::with_capacity(plane * 3 * 4);
        for channel in 0..3 {
            for i in 0..plane {
                let v = f32::from(pixels[i * 3 + channel]) / 255.0;
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        Tensor {
            name: name.to_owned(),
            datatype: Datatype::Fp32,
            shape: vec![1, 3, h, w],
            data: data.into(),
        }
    } else {
        Tensor {
            name: name.to_owned(),
            datatype: Datatype::Uint8,
            shape: vec![1, h, w, 3],
            data: image.into_raw().into(),
        }
    })
}

/// The shape of nested JSON arrays, from their first elements.
fn json_shape(value: &Value) -> Vec<usize> {
    let mut shape = Vec::new();
    let mut at = value;
    while let Value::Array(items) = at {
        shape.push(items.len());
        match items.first() {
            Some(first) => at = first,
            None => break,
        }
    }
    if shape.is_empty() {
        shape.push(1);
    }
    shape
}

fn infer_datatype(value: &Value) -> Datatype {
    match value {
        Value::Array(items) => items.first().map_or(Datatype::Fp32, infer_datatype),
        Value::Bool(_) => Datatype::Bool,
        Value::String(_) => Datatype::Bytes,
        Value::Number(n) if n.is_i64() || n.is_u64() => Datatype::Int64,
        _ => Datatype::Fp32,
    }
}

/// A short, readable rendering: the first values, and for rows of many scores the
/// best five per row.
fn describe(tensor: &Tensor) -> String {
    let values = decode(tensor);
    let count = values.len();
    let row = tensor.shape.last().copied().unwrap_or(1) as usize;
    let numeric: Option<Vec<f64>> = values.iter().map(|v| v.as_f64()).collect();
    if let (Some(numbers), true) = (numeric, row > SHOWN && tensor.shape.len() == 2) {
        let rows: Vec<String> = numbers
            .chunks(row.max(1))
            .map(|scores| {
                let mut best: Vec<(usize, f64)> = scores.iter().copied().enumerate().collect();
                best.sort_by(|a, b| b.1.total_cmp(&a.1));
                let top: Vec<String> = best
                    .iter()
                    .take(5)
                    .map(|(i, s)| format!("{i}: {s:.4}"))
                    .collect();
                format!("top {}", top.join(", "))
            })
            .collect();
        return rows.join(" | ");
    }
    let shown: Vec<String> = values.iter().take(SHOWN).map(Value::to_string).collect();
    if count > SHOWN {
        format!("[{}, … {} more]", shown.join(", "), count - SHOWN)
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// Every element as JSON, from raw little-endian bytes.
fn decode(tensor: &Tensor) -> Vec<Value> {
    let data = &tensor.data[..];
    macro_rules! each {
        ($t:ty, $n:expr) => {
            data.chunks_exact($n)
                .map(|c| {
                    let mut b = [0u8; $n];
                    b.copy_from_slice(c);
                    json!(<$t>::from_le_bytes(b))
                })
                .collect()
        };
    }
    match tensor.datatype {
        Datatype::Bool => data.iter().map(|&b| json!(b != 0)).collect(),
        Datatype::Int8 => each!(i8, 1),
        Datatype::Int16 => each!(i16, 2),
        Datatype::Int32 => each!(i32, 4),
        Datatype::Int64 => each!(i64, 8),
        Datatype::Uint8 => each!(u8, 1),
        Datatype::Uint16 => each!(u16, 2),
        Datatype::Uint32 => each!(u32, 4),
        Datatype::Uint64 => each!(u64, 8),
        Datatype::Fp16 => data
            .chunks_exact(2)
            .map(|c| json!(half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        Datatype::Fp32 => each!(f32, 4),
        Datatype::Fp64 => each!(f64, 8),
        Datatype::Bytes => {
            let mut out = Vec::new();
            let mut rest = data;
            while rest.len() >= 4 {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(item) = rest.get(4..4 + len) else {
                    break;
                };
                out.push(json!(String::from_utf8_lossy(item)));
                rest = &rest[4 + len..];
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_the_signature_lacks_is_named_with_what_the_model_takes() {
        let specs = [TensorSpec {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![-1, 4],
        }];
        assert_eq!(
            undeclared_input("hello", &specs, &["inp"]).as_deref(),
            Some("model \"hello\" has no input \"inp\"; it takes input (FP32 [-1, 4]): `--input input=...`")
        );
        assert_eq!(undeclared_input("hello", &specs, &["input"]), None);
        // No signature: any name goes.
        assert_eq!(undeclared_input("echo", &[], &["anything"]), None);
    }

    #[test]
    fn json_inputs_get_shape_and_datatype() {
        let input = |text: &str| match read_input("x", text, None).unwrap() {
            Input::Json(v) => v,
            Input::Tensor(_) => panic!("expected JSON"),
        };
        let v = input("[[1, 2, 3], [4, 5, 6]]");
        assert_eq!(
            (v["shape"].clone(), v["datatype"].clone()),
            (json!([2, 3]), json!("INT64"))
        );
        assert_eq!(input("[0.5]")["datatype"], "FP32");
        assert_eq!(input("[\"hi\"]")["datatype"], "BYTES");
        let spec = TensorSpec {
            name: "x".into(),
            datatype: "FP64".into(),
            shape: vec![-1],
        };
        match read_input("x", "[1, 2]", Some(&spec)).unwrap() {
            Input::Json(v) => assert_eq!(v["datatype"], "FP64"),
            Input::Tensor(_) => panic!("expected JSON"),
        }
        let err = read_input("x", "not json", None).err().unwrap();
        assert!(format!("{err:#}").contains("expected FILE.npy"));
    }

    #[test]
    fn describe_shows_top_scores_and_elides() {
        let scores: Vec<u8> = (0..20)
            .flat_map(|i| (i as f32 / 100.0).to_le_bytes())
            .collect();
        let t = Tensor {
            name: "p".into(),
            datatype: Datatype::Fp32,
            shape: vec![1, 20],
            data: scores.into(),
        };
        assert!(
            describe(&t).starts_with("top 19: 0.1900, 18: 0.1800"),
            "{}",
            describe(&t)
        );
        let t = Tensor {
            name: "c".into(),
            datatype: Datatype::Int64,
            shape: vec![10],
            data: (0..10i64)
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        };
        assert_eq!(describe(&t), "[0, 1, 2, 3, 4, 5, 6, 7, … 2 more]");
    }
}
