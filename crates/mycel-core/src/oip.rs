//! Open Inference Protocol v2 inference requests and responses (the KServe / Triton REST
//! protocol), with the binary tensor data extension: JSON or raw bytes in, tensors out,
//! and back. Every error names the field at fault.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::tensor::{Datatype, Tensor};

/// A request that does not follow the protocol; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OipError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, OipError> {
    Err(OipError(message.into()))
}

/// An output the client asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestedOutput {
    /// Its name.
    pub name: String,
    /// `parameters.binary_data`, if given.
    pub binary: Option<bool>,
}

/// A parsed inference request.
#[derive(Clone, Debug, PartialEq)]
pub struct InferRequest {
    /// The client's request id, echoed back.
    pub id: Option<String>,
    /// Input tensors, checked against their shapes.
    pub inputs: Vec<Tensor>,
    /// Outputs asked for; empty means all.
    pub outputs: Vec<RequestedOutput>,
    /// Top-level `parameters.binary_data_output`.
    pub binary_output: bool,
    /// Top-level `parameters`.
    pub parameters: Map<String, Value>,
}

/// An encoded response body.
#[derive(Clone, Debug)]
pub struct EncodedResponse {
    /// JSON, followed by binary outputs if any.
    pub body: Vec<u8>,
    /// The JSON's length when binary outputs follow it (the
    /// `Inference-Header-Content-Length` header).
    pub json_len: Option<usize>,
}

/// Parses a request body. `json_len` is the `Inference-Header-Content-Length` header:
/// that many leading bytes are JSON and the rest is the binary data of inputs that carry
/// `parameters.binary_data_size`, in input order.
pub fn parse_request(body: Bytes, json_len: Option<usize>) -> Result<InferRequest, OipError> {
    let json_len = json_len.unwrap_or(body.len());
    if json_len > body.len() {
        return err(format!(
            "Inference-Header-Content-Length is {json_len} but the body has only {} bytes",
            body.len()
        ));
    }
    let header: Value = serde_json::from_slice(&body[..json_len])
        .map_err(|e| OipError(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(mut header) = header else {
        return err("request body must be a JSON object with \"inputs\"");
    };
    let id = match header.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return err("id must be a string"),
    };
    let parameters = match header.remove("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return err("parameters must be an object"),
    };
    let binary_output = match parameters.get("binary_data_output") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return err("parameters.binary_data_output must be true or false"),
    };
    let Some(Value::Array(raw_inputs)) = header.remove("inputs") else {
        return err("inputs is missing or not an array; expected [{\"name\", \"datatype\", \"shape\", \"data\"}]");
    };
    let mut binary = body.slice(json_len..);
    let mut inputs: Vec<Tensor> = Vec::with_capacity(raw_inputs.len());
    for (i, raw) in raw_inputs.into_iter().enumerate() {
        let input = parse_input(i, raw, &mut binary)?;
        if inputs.iter().any(|t| t.name == input.name) {
            return err(format!("inputs[{i}].name {:?} appears twice", input.name));
        }
        inputs.push(input);
    }
    if !binary.is_empty() {
        return err(format!(
            "{} bytes of binary data follow the JSON but no input claims them (parameters.binary_data_size)",
            binary.len()
        ));
    }
    let outputs = match header.remove("outputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                    OipError(format!("outputs[{i}].name is missing or not a string"))
                })?;
                let binary = match o.get("parameters").and_then(|p| p.get("binary_data")) {
                    None => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => {
                        return err(format!(
                            "outputs[{i}].parameters.binary_data must be true or false"
                        ))
                    }
                };
                Ok(RequestedOutput {
                    name: name.to_owned(),
                    binary,
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return err("outputs must be an array"),
    };
    Ok(InferRequest {
        id,
        inputs,
        outputs,
        binary_output,
        parameters,
    })
}

fn parse_input(i: usize, raw: Value, binary: &mut Bytes) -> Result<Tensor, OipError> {
    let Value::Object(mut raw) = raw else {
        return err(format!("inputs[{i}] must be an object"));
    };
    let name = match raw.remove("name") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => {
            return err(format!(
                "inputs[{i}].name is missing or not a non-empty string"
            ))
        }
    };
    let datatype: Datatype = match raw.get("datatype").and_then(Value::as_str) {
        Some(d) => d
            .parse()
            .map_err(|e| OipError(format!("inputs[{i}].datatype: {e}")))?,
        None => {
            return err(format!(
                "inputs[{i}].datatype is missing; expected e.g. \"FP32\""
            ))
        }
    };
    let shape: Vec<u64> = match raw.get("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()
            .ok_or_else(|| OipError(format!("inputs[{i}].shape must be non-negative integers")))?,
        _ => {
            return err(format!(
                "inputs[{i}].shape is missing; expected an array such as [1, 3]"
            ))
        }
    };
    let binary_size = match raw
        .get("parameters")
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            OipError(format!(
                "inputs[{i}].parameters.binary_data_size must be a byte count"
            ))
        })?),
    };
    let data = match (binary_size, raw.remove("data")) {
        (Some(_), Some(_)) => {
            return err(format!(
                "inputs[{i}] has both data and parameters.binary_data_size; give one"
            ))
        }
        (None, None) => return err(format!("inputs[{i}].data is missing")),
        (Some(size), None) => {
            if size > binary.len() as u64 {
                return err(format!(
                    "inputs[{i}].parameters.binary_data_size is {size} but only {} binary bytes remain",
                    binary.len()
                ));
            }
            binary.split_to(size as usize)
        }
        (None, Some(data)) => json_data(i, datatype, data)?,
    };
    let tensor = Tensor {
        name,
        datatype,
        shape,
        data,
    };
    tensor
        .check()
        .map_err(|e| OipError(format!("inputs[{i}]: {e}")))?;
    Ok(tensor)
}

/// JSON `data`, nested or flat, as raw little-endian bytes.
fn json_data(i: usize, datatype: Datatype, data: Value) -> Result<Bytes, OipError> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let mut out = Vec::with_capacity(flat.len() * datatype.element_size().unwrap_or(8));
    for (j, v) in flat.iter().enumerate() {
        let bad = |expected: &str| {
            OipError(format!(
                "inputs[{i}].data[{j}] is {v}; expected {expected} for {datatype}"
            ))
        };
        macro_rules! int {
            ($t:ty) => {{
                let n = v
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| v.as_u64().map(i128::from))
                    .ok_or_else(|| bad("an integer"))?;
                let n = <$t>::try_from(n)
                    .map_err(|_| bad(&format!("an integer from {} to {}", <$t>::MIN, <$t>::MAX)))?;
                out.extend_from_slice(&n.to_le_bytes());
            }};
        }
        match datatype {
            Datatype::Bool => out.push(u8::from(v.as_bool().ok_or_else(|| bad("true or false"))?)),
            Datatype::Int8 => int!(i8),
            Datatype::Int16 => int!(i16),
            Datatype::Int32 => int!(i32),
            Datatype::Int64 => int!(i64),
            Datatype::Uint8 => int!(u8),
            Datatype::Uint16 => int!(u16),
            Datatype::Uint32 => int!(u32),
            Datatype::Uint64 => int!(u64),
            Datatype::Fp16 => {
                let x = v.as_f64().ok_or_else(|| bad("a number"))?;
                out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes());
            }
            Datatype::Fp32 => {
                let x = v.as_f64().ok_or_else(|| bad("a number"))?;
                out.extend_from_slice(&(x as f32).to_le_bytes());
            }
            Datatype::Fp64 => {
                let x = v.as_f64().ok_or_else(|| bad("a number"))?;
                out.extend_from_slice(&x.to_le_bytes());
            }
            Datatype::Bytes => {
                let s = v.as_str().ok_or_else(|| bad("a string"))?;
                let len = u32::try_from(s.len()).map_err(|_| bad("a string under 4 GiB"))?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    Ok(out.into())
}

fn flatten(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.into_iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// Encodes the outputs a request asked for (all of them if it named none).
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[Tensor],
    request: &InferRequest,
) -> Result<EncodedResponse, OipError> {
    let chosen: Vec<(&Tensor, bool)> = if request.outputs.is_empty() {
        outputs.iter().map(|t| (t, request.binary_output)).collect()
    } else {
        request
            .outputs
            .iter()
            .map(|wanted| {
                let tensor = outputs
                    .iter()
                    .find(|t| t.name == wanted.name)
                    .ok_or_else(|| {
                        let names: Vec<&str> = outputs.iter().map(|t| t.name.as_str()).collect();
                        OipError(format!(
                            "the model has no output {:?}; it returned {}",
                            wanted.name,
                            names.join(", ")
                        ))
                    })?;
                Ok((tensor, wanted.binary.unwrap_or(request.binary_output)))
            })
            .collect::<Result<_, OipError>>()?
    };
    let mut json = Vec::with_capacity(256);
    json.extend_from_slice(b"{\"model_name\":");
    write_json_string(&mut json, model_name);
    json.extend_from_slice(b",\"model_version\":");
    write_json_string(&mut json, model_version);
    if let Some(id) = id {
        json.extend_from_slice(b",\"id\":");
        write_json_string(&mut json, id);
    }
    json.extend_from_slice(b",\"outputs\":[");
    let mut any_binary = false;
    for (n, (tensor, binary)) in chosen.iter().enumerate() {
        if n > 0 {
            json.push(b',');
        }
        json.extend_from_slice(b"{\"name\":");
        write_json_string(&mut json, &tensor.name);
        json.extend_from_slice(b",\"datatype\":\"");
        json.extend_from_slice(tensor.datatype.as_str().as_bytes());
        json.extend_from_slice(b"\",\"shape\":[");
        for (k, d) in tensor.shape.iter().enumerate() {
            if k > 0 {
                json.push(b',');
            }
            json.extend_from_slice(itoa::Buffer::new().format(*d).as_bytes());
        }
        json.push(b']');
        if *binary {
            any_binary = true;
            json.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            json.extend_from_slice(itoa::Buffer::new().format(tensor.data.len()).as_bytes());
            json.push(b'}');
        } else {
            json.extend_from_slice(b",\"data\":[");
            write_json_data(&mut json, tensor)?;
            json.push(b']');
        }
        json.push(b'}');
    }
    json.extend_from_slice(b"]}");
    if !any_binary {
        return Ok(EncodedResponse {
            body: json,
            json_len: None,
        });
    }
    let json_len = json.len();
    let mut body = json;
    for (tensor, binary) in &chosen {
        if *binary {
            body.extend_from_slice(&tensor.data);
        }
    }
    Ok(EncodedResponse {
        body,
        json_len: Some(json_len),
    })
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping, without building a Value.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A tensor's elements as a flat JSON list body (without brackets).
fn write_json_data(out: &mut Vec<u8>, tensor: &Tensor) -> Result<(), OipError> {
    let data = &tensor.data[..];
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
    };
    macro_rules! ints {
        ($t:ty, $n:expr) => {
            for c in data.chunks_exact($n) {
                let mut b = [0u8; $n];
                b.copy_from_slice(c);
                sep(out);
                out.extend_from_slice(
                    itoa::Buffer::new()
                        .format(<$t>::from_le_bytes(b))
                        .as_bytes(),
                );
            }
        };
    }
    macro_rules! floats {
        ($t:ty, $n:expr) => {
            for c in data.chunks_exact($n) {
                let mut b = [0u8; $n];
                b.copy_from_slice(c);
                let x = <$t>::from_le_bytes(b);
                sep(out);
                write_float(out, x, x.is_finite());
            }
        };
    }
    match tensor.datatype {
        Datatype::Bool => {
            for &b in data {
                sep(out);
                out.extend_from_slice(if b != 0 { b"true" } else { b"false" });
            }
        }
        Datatype::Int8 => ints!(i8, 1),
        Datatype::Int16 => ints!(i16, 2),
        Datatype::Int32 => ints!(i32, 4),
        Datatype::Int64 => ints!(i64, 8),
        Datatype::Uint8 => ints!(u8, 1),
        Datatype::Uint16 => ints!(u16, 2),
        Datatype::Uint32 => ints!(u32, 4),
        Datatype::Uint64 => ints!(u64, 8),
        Datatype::Fp16 => {
            for c in data.chunks_exact(2) {
                let x = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                sep(out);
                write_float(out, x, x.is_finite());
            }
        }
        Datatype::Fp32 => floats!(f32, 4),
        Datatype::Fp64 => floats!(f64, 8),
        Datatype::Bytes => {
            let mut rest = data;
            while rest.len() >= 4 {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let item = rest.get(4..4 + len).ok_or_else(|| {
                    OipError(format!(
                        "output {:?} has a truncated BYTES element",
                        tensor.name
                    ))
                })?;
                let text = std::str::from_utf8(item).map_err(|_| {
                    OipError(format!(
                        "output {:?} holds bytes that are not UTF-8 text; request it as binary (parameters.binary_data)",
                        tensor.name
                    ))
                })?;
                sep(out);
                write_json_string(out, text);
                rest = &rest[4 + len..];
            }
        }
    }
    Ok(())
}

/// The shortest text that reads back to `x`. JSON has no NaN or infinity: those are
/// written as null (binary outputs carry them exactly).
fn write_float<F: ryu::Float>(out: &mut Vec<u8>, x: F, finite: bool) {
    if finite {
        out.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: Value) -> Result<InferRequest, OipError> {
        parse_request(Bytes::from(json.to_string()), None)
    }

    fn round_trip(input: Value) -> Value {
        let request = parse(json!({"inputs": [input]})).unwrap();
        let encoded = encode_response("m", "1", None, &request.inputs, &request).unwrap();
        assert!(encoded.json_len.is_none());
        serde_json::from_slice::<Value>(&encoded.body).unwrap()["outputs"][0].clone()
    }

    use serde_json::json;

    #[test]
    fn every_datatype_round_trips_through_json() {
        let cases = [
            json!({"name": "b", "datatype": "BOOL", "shape": [2], "data": [true, false]}),
            json!({"name": "a", "datatype": "INT8", "shape": [2], "data": [-128, 127]}),
            json!({"name": "a", "datatype": "INT16", "shape": [1], "data": [-32768]}),
            json!({"name": "a", "datatype": "INT32", "shape": [1], "data": [2147483647]}),
            json!({"name": "a", "datatype": "INT64", "shape": [1], "data": [-9223372036854775808i64]}),
            json!({"name": "a", "datatype": "UINT8", "shape": [2], "data": [0, 255]}),
            json!({"name": "a", "datatype": "UINT16", "shape": [1], "data": [65535]}),
            json!({"name": "a", "datatype": "UINT32", "shape": [1], "data": [4294967295u64]}),
            json!({"name": "a", "datatype": "UINT64", "shape": [1], "data": [18446744073709551615u64]}),
            json!({"name": "a", "datatype": "FP16", "shape": [2], "data": [1.5, -0.25]}),
            json!({"name": "a", "datatype": "FP32", "shape": [2], "data": [0.1, -3.0]}),
            json!({"name": "a", "datatype": "FP64", "shape": [1], "data": [1e-300]}),
            json!({"name": "a", "datatype": "BYTES", "shape": [2], "data": ["héllo \"q\"", ""]}),
        ];
        for case in cases {
            let out = round_trip(case.clone());
            assert_eq!(out["datatype"], case["datatype"]);
            assert_eq!(out["shape"], case["shape"]);
            assert_eq!(out["data"], case["data"], "{case}");
        }
        // FP32 answers are the shortest text that reads back to the same f32.
        assert_eq!(
            round_trip(json!({"name": "a", "datatype": "FP32", "shape": [1], "data": [0.1]}))
                ["data"][0]
                .to_string(),
            "0.1"
        );
    }

    #[test]
    fn nested_data_is_flattened_and_counted() {
        let out = round_trip(
            json!({"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}),
        );
        assert_eq!(out["data"], json!([1, 2, 3, 4]));
        let err = parse(json!({"inputs": [{"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3]]}]}))
            .unwrap_err();
        assert!(
            err.0.contains("inputs[0]") && err.0.contains("needs 16 bytes, got 12"),
            "{err}"
        );
    }

    #[test]
    fn binary_extension_in_and_out() {
        let header = json!({
            "id": "7",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
                {"name": "y", "datatype": "UINT8", "shape": [3], "data": [1, 2, 3]},
                {"name": "z", "datatype": "INT16", "shape": [1], "parameters": {"binary_data_size": 2}},
            ],
            "outputs": [{"name": "x", "parameters": {"binary_data": true}}, {"name": "y"}],
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend(1.0f32.to_le_bytes());
        body.extend(2.0f32.to_le_bytes());
        body.extend(5i16.to_le_bytes());
        let request = parse_request(Bytes::from(body), Some(header.len())).unwrap();
        assert_eq!(request.id.as_deref(), Some("7"));
        assert_eq!(request.inputs[2].data.as_ref(), &5i16.to_le_bytes());
        let encoded =
            encode_response("m", "1", request.id.as_deref(), &request.inputs, &request).unwrap();
        let json_len = encoded.json_len.unwrap();
        let answer: Value = serde_json::from_slice(&encoded.body[..json_len]).unwrap();
        assert_eq!(answer["id"], "7");
        assert_eq!(answer["outputs"].as_array().unwrap().len(), 2);
        assert_eq!(answer["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(answer["outputs"][0].get("data").is_none());
        assert_eq!(answer["outputs"][1]["data"], json!([1, 2, 3]));
        assert_eq!(
            &encoded.body[json_len..],
            &[1.0f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat()[..]
        );

        // Binary for every output unless one says otherwise.
        let mut all = request.clone();
        all.outputs.clear();
        all.binary_output = true;
        let encoded = encode_response("m", "1", None, &request.inputs, &all).unwrap();
        assert_eq!(encoded.body.len() - encoded.json_len.unwrap(), 8 + 3 + 2);
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (json!({}), "inputs is missing"),
            (
                json!({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}),
                "inputs[0].name",
            ),
            (
                json!({"inputs": [{"name": "a", "shape": [1], "data": [1]}]}),
                "inputs[0].datatype is missing",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "FLOAT", "shape": [1], "data": [1]}]}),
                "expected one of",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "FP32", "data": [1]}]}),
                "inputs[0].shape",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": [1]}]}),
                "non-negative",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}),
                "inputs[0].data is missing",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "UINT8", "shape": [1], "data": [300]}]}),
                "inputs[0].data[0] is 300",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1.5]}]}),
                "an integer",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "BOOL", "shape": [1], "data": [1]}]}),
                "true or false",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "BYTES", "shape": [1], "data": [1]}]}),
                "a string",
            ),
            (
                json!({"inputs": [
                {"name": "a", "datatype": "INT8", "shape": [1], "data": [1]},
                {"name": "a", "datatype": "INT8", "shape": [1], "data": [1]}]}),
                "appears twice",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1],
                "parameters": {"binary_data_size": 1}}]}),
                "both data and",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "INT8", "shape": [1],
                "parameters": {"binary_data_size": 1}}]}),
                "only 0 binary bytes remain",
            ),
            (
                json!({"inputs": [{"name": "a", "datatype": "FP32", "shape": [4294967296u64, 4294967296u64], "data": []}]}),
                "inputs[0]",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(body.clone()).unwrap_err();
            assert!(err.0.contains(expected), "{body}: {err}");
        }
        assert!(parse_request(Bytes::from_static(b"{\"inputs\": ["), None)
            .unwrap_err()
            .0
            .contains("not valid JSON"));
        assert!(parse_request(Bytes::from_static(b"{}"), Some(10)).is_err());
        let extra =
            parse_request(Bytes::from_static(b"{\"inputs\": []}xyz"), Some(14)).unwrap_err();
        assert!(extra.0.contains("no input claims them"), "{extra}");
    }

    #[test]
    fn truncated_bodies_never_panic() {
        let header = json!({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]}).to_string();
        let mut body = header.clone().into_bytes();
        body.extend(5u32.to_le_bytes());
        body.extend(b"hello");
        for cut in 0..body.len() {
            let _ = parse_request(
                Bytes::copy_from_slice(&body[..cut]),
                Some(header.len().min(cut)),
            );
            let _ = parse_request(Bytes::copy_from_slice(&body[..cut]), None);
        }
        assert!(parse_request(Bytes::from(body), Some(header.len())).is_ok());
    }

    #[test]
    fn unknown_requested_outputs_and_non_text_bytes_are_errors() {
        let request = parse(json!({"inputs": [], "outputs": [{"name": "nope"}]})).unwrap();
        let t = Tensor {
            name: "s".into(),
            datatype: Datatype::Bytes,
            shape: vec![1],
            data: Bytes::from_static(&[2, 0, 0, 0, 0xff, 0xfe]),
        };
        let err = encode_response("m", "1", None, std::slice::from_ref(&t), &request).unwrap_err();
        assert!(err.0.contains("no output \"nope\""), "{err}");
        let all = parse(json!({"inputs": []})).unwrap();
        let err = encode_response("m", "1", None, std::slice::from_ref(&t), &all).unwrap_err();
        assert!(err.0.contains("binary"), "{err}");
    }
}
