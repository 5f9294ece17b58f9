//! Open Inference Protocol v2 inference requests and responses (the KServe / Triton REST
//! protocol) with the binary tensor data extension: request bodies in, tensors out, and
//! tensors back to response bodies. Every error names the field at fault.
//!
//! `parse_request` streams the JSON header (header.rs), decoding `data` arrays straight
//! into tensor bytes (data.rs); `encode_response` (response.rs) writes JSON by hand.

mod data;
mod fast;
mod header;
mod response;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use serde::de;
use serde_json::{Map, Value};

use crate::tensor::Tensor;
use header::{parse_header, InputData};
pub use response::{chosen_outputs, encode_response};

/// A request the protocol does not allow, or outputs that cannot be encoded as asked;
/// the message names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OipError {
    /// What was wrong, naming the field, e.g. `inputs[1].data[4] is 300; ...`.
    pub message: String,
}

impl OipError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

fn err<T>(message: impl Into<String>) -> Result<T, OipError> {
    Err(OipError::new(message))
}

/// Keeps `failure` for the caller and returns an error that stops the JSON parser: the
/// caller reports the kept error, which names the field, rather than serde's, which
/// names a line and column.
fn stop<E: de::Error>(slot: &mut Option<OipError>, failure: OipError) -> E {
    let error = E::custom(&failure.message);
    *slot = Some(failure);
    error
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
    /// Top-level `parameters.binary_data_output`: outputs default to binary.
    pub binary_output: bool,
    /// Top-level `parameters`, as sent.
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
/// `parameters.binary_data_size`, in input order. Without it the whole body is JSON.
pub fn parse_request(body: Bytes, json_len: Option<usize>) -> Result<InferRequest, OipError> {
    parse_request_with(body, json_len, true)
}

/// [`parse_request`], with the fast path (fast.rs) allowed or not: the tests compare the two.
fn parse_request_with(
    body: Bytes,
    json_len: Option<usize>,
    fast: bool,
) -> Result<InferRequest, OipError> {
    let json = match json_len {
        None => &body[..],
        Some(n) => body.get(..n).ok_or_else(|| {
            OipError::new(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            ))
        })?,
    };
    let header = parse_header(json, json_len.is_some(), fast)?;
    let id = match header.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => return err(format!("id must be a string, got {}", brief(&other))),
    };
    let parameters = match header.parameters {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(other) => {
            return err(format!(
                "parameters must be an object, got {}",
                brief(&other)
            ))
        }
    };
    let binary_output = match parameters.get("binary_data_output") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return err(format!(
                "parameters.binary_data_output must be true or false, got {}",
                brief(other)
            ))
        }
    };
    let Some(inputs) = header.inputs else {
        return err(
            "inputs is missing; expected \"inputs\": [{\"name\", \"datatype\", \"shape\", \"data\"}]",
        );
    };
    let mut names = HashMap::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        if let Some(j) = names.insert(input.name.as_str(), i) {
            return err(format!(
                "inputs[{i}].name {:?} is already the name of inputs[{j}]; input names must be unique",
                input.name
            ));
        }
    }
    let outputs = parse_outputs(header.outputs)?;

    let binary = body.slice(json.len()..);
    let claimed = inputs
        .iter()
        .filter_map(|input| match input.data {
            InputData::Binary(n) => Some(n),
            InputData::Json(_) => None,
        })
        .try_fold(0u64, u64::checked_add);
    if claimed != Some(binary.len() as u64) {
        let claimed = claimed.map_or("more than 2^64".into(), |n| n.to_string());
        return err(match json_len {
            None if binary.is_empty() => format!(
                "the inputs' parameters.binary_data_size add up to {claimed} bytes, but the \
                 request has no Inference-Header-Content-Length header, so no binary data \
                 follows the JSON"
            ),
            _ => format!(
                "the inputs' parameters.binary_data_size add up to {claimed} bytes, but {} \
                 bytes follow the {}-byte JSON (Inference-Header-Content-Length)",
                binary.len(),
                json.len()
            ),
        });
    }
    let mut at = 0usize;
    let mut tensors = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let data = match input.data {
            InputData::Json(data) => data,
            InputData::Binary(n) => {
                // Each size is at most their sum, which equals binary.len().
                let end = at + n as usize;
                let data = binary.slice(at..end);
                at = end;
                data
            }
        };
        let tensor = Tensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            data,
        };
        tensor
            .check()
            .map_err(|e| OipError::new(format!("inputs[{i}]: {e}")))?;
        tensors.push(tensor);
    }
    Ok(InferRequest {
        id,
        inputs: tensors,
        outputs,
        binary_output,
        parameters,
    })
}

/// A short rendering of a JSON value for error messages.
fn brief(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

fn parse_outputs(outputs: Option<Value>) -> Result<Vec<RequestedOutput>, OipError> {
    let items = match outputs {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return err(format!(
                "outputs must be an array of {{\"name\": ...}} objects, got {}",
                brief(&other)
            ))
        }
    };
    let mut requested: Vec<RequestedOutput> = Vec::with_capacity(items.len());
    let mut names = HashSet::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            return err(format!(
                "outputs[{i}] must be an object with a name, got {}",
                brief(item)
            ));
        };
        let name = match item.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None => return err(format!("outputs[{i}].name is missing")),
            Some(other) => {
                return err(format!(
                    "outputs[{i}].name must be a non-empty string, got {}",
                    brief(other)
                ))
            }
        };
        if !names.insert(name.clone()) {
            return err(format!("outputs[{i}].name {name:?} is requested twice"));
        }
        let parameters = match item.get("parameters") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(p),
            Some(other) => {
                return err(format!(
                    "outputs[{i}].parameters must be an object, got {}",
                    brief(other)
                ))
            }
        };
        let binary = match parameters.and_then(|p| p.get("binary_data")) {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return err(format!(
                    "outputs[{i}].parameters.binary_data must be true or false, got {}",
                    brief(other)
                ))
            }
        };
        // Asking for these and silently getting something else would be worse than
        // being told no.
        for unsupported in ["classification", "shared_memory_region"] {
            if parameters.is_some_and(|p| p.contains_key(unsupported)) {
                return err(format!(
                    "outputs[{i}].parameters.{unsupported} is not supported"
                ));
            }
        }
        requested.push(RequestedOutput { name, binary });
    }
    Ok(requested)
}
