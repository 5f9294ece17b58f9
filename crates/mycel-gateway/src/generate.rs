//! Triton's generate extension: `POST /v2/models/{m}[/versions/{v}]/generate` and
//! `/generate_stream` (server-sent events). A request is a flat JSON object whose
//! fields are the model's inputs (plus `id` and `parameters`); each answer is a flat
//! object of the outputs of one step. A model streams by yielding from `generate` (or
//! from `predict`), and each yield reaches the client as it is made.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use mycel_core::frame::Frame;
use mycel_core::oip::{self, InferRequest};
use mycel_core::tensor::Tensor;
use serde_json::{json, Map, Value};

use crate::infer::{self, find, Failure, Gateway};
use crate::metrics::RequestLabels;
use crate::routes::Model;

/// The request as mycel serves it: each field an input of shape `[1]` (a scalar) or
/// `[n]` (a flat list), of the datatype the model declares for it, else of the JSON
/// value's own (text BYTES, integers INT64, other numbers FP64, booleans BOOL).
pub(crate) fn to_request(model: &Model, body: &[u8]) -> Result<InferRequest, String> {
    let fields: Map<String, Value> =
        match serde_json::from_slice(body) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => return Err(
                "a generate request is a JSON object of inputs, e.g. {\"text_input\": \"Hello\"}"
                    .into(),
            ),
            Err(e) => return Err(format!("the request is not JSON: {e}")),
        };
    let declared = model.info.signature.as_ref().map(|s| &s.inputs);
    let mut request = Map::new();
    let mut inputs = Vec::new();
    for (name, value) in fields {
        if name == "id" || name == "parameters" {
            request.insert(name, value);
            continue;
        }
        let data = match value {
            Value::Array(items) => items,
            scalar => vec![scalar],
        };
        if data.iter().any(|v| v.is_array() || v.is_object()) {
            return Err(format!(
                "input {name:?} must be a value or a flat list of values; send nested \
                 tensors to /infer"
            ));
        }
        let datatype = declared
            .and_then(|d| d.iter().find(|t| t.name == name))
            .map(|t| t.datatype.clone())
            .or_else(|| data.first().map(json_datatype))
            .unwrap_or_else(|| "FP64".into());
        inputs
            .push(json!({"name": name, "datatype": datatype, "shape": [data.len()], "data": data}));
    }
    request.insert("inputs".into(), Value::Array(inputs));
    let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    oip::parse_request(Bytes::from(body), None).map_err(|e| e.message)
}

fn json_datatype(value: &Value) -> String {
    match value {
        Value::String(_) => "BYTES",
        Value::Bool(_) => "BOOL",
        Value::Number(n) if n.is_i64() || n.is_u64() => "INT64",
        _ => "FP64",
    }
    .into()
}

/// One step's outputs as a flat object: a one-element tensor as its value, others as a
/// flat list; text as strings.
pub(crate) fn to_answer(model: &str, version: &str, outputs: &[Tensor]) -> Result<Value, String> {
    let all = InferRequest {
        id: None,
        inputs: Vec::new(),
        outputs: Vec::new(),
        binary_output: false,
        parameters: Map::new(),
    };
    let encoded =
        oip::encode_response(model, version, None, outputs, &all).map_err(|e| e.message)?;
    let encoded: Value = serde_json::from_slice(&encoded.body).map_err(|e| e.to_string())?;
    let mut answer = Map::new();
    answer.insert("model_name".into(), model.into());
    answer.insert("model_version".into(), version.into());
    for output in encoded["outputs"].as_array().into_iter().flatten() {
        let (Some(name), Some(data)) = (output["name"].as_str(), output["data"].as_array()) else {
            continue;
        };
        let value = match data.as_slice() {
            [one] => one.clone(),
            many => Value::Array(many.to_vec()),
        };
        answer.insert(name.to_owned(), value);
    }
    Ok(Value::Object(answer))
}

/// Every step's answer as one: text outputs joined, others listed step by step.
pub(crate) fn join(steps: Vec<Value>) -> Value {
    if steps.len() == 1 {
        return steps.into_iter().next().unwrap_or_default();
    }
    let mut joined = Map::new();
    let mut keys: Vec<String> = Vec::new();
    for step in &steps {
        for key in step.as_object().into_iter().flat_map(|o| o.keys()) {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
    }
    for key in keys {
        let values: Vec<&Value> = steps.iter().filter_map(|s| s.get(&key)).collect();
        let value = if key == "model_name" || key == "model_version" {
            values.last().map(|v| (*v).clone()).unwrap_or_default()
        } else if values.iter().all(|v| v.is_string()) {
            Value::String(values.iter().filter_map(|v| v.as_str()).collect())
        } else {
            Value::Array(values.into_iter().cloned().collect())
        };
        joined.insert(key, value);
    }
    Value::Object(joined)
}

/// The failure an agent reported in its stream.
fn streamed_failure(frame: &Frame) -> Failure {
    let code = frame
        .extra
        .get("code")
        .and_then(|c| serde_json::from_value::<mycel_core::ErrorCode>(c.clone()).ok());
    let status = code.map_or(StatusCode::INTERNAL_SERVER_ERROR, |c| {
        StatusCode::from_u16(c.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    });
    Failure(status, frame.text("message").to_owned())
}

/// The next step of `stream` as an answer; `None` at its end.
async fn step(stream: &mut infer::Stream, model: &str) -> Option<Result<Value, Failure>> {
    let frame = match stream.next().await? {
        Ok(frame) => frame,
        Err(failure) => return Some(Err(failure)),
    };
    match frame.method.as_str() {
        "chunk" => Some(
            to_answer(model, &stream.seq.to_string(), &frame.tensors)
                .map_err(|e| Failure(StatusCode::BAD_GATEWAY, e)),
        ),
        "error" => Some(Err(streamed_failure(&frame))),
        _ => None,
    }
}

/// Finds the model and starts the request streaming from one of its replicas.
async fn open(
    gw: &Gateway,
    name: &str,
    version: Option<&str>,
    body: &[u8],
) -> Result<(infer::Stream, String), Failure> {
    let started = std::time::Instant::now();
    let mut labels = RequestLabels::default();
    let opened: Result<(infer::Stream, String), Failure> = async {
        let (model, seq) = find(gw, name, version)?;
        labels.model.clone_from(&model.info.name);
        labels.version = seq.unwrap_or(model.info.seq).to_string();
        let request = to_request(&model, body).map_err(|e| Failure(StatusCode::BAD_REQUEST, e))?;
        let stream = infer::open_stream(gw, &model, seq, &request, &mut labels).await?;
        Ok((stream, model.info.name.clone()))
    }
    .await;
    labels.code = opened.as_ref().map_or_else(|f| f.0.as_u16(), |_| 200);
    gw.metrics.observe(&labels, started.elapsed().as_secs_f64());
    opened
}

pub(crate) async fn generate(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    whole(&gw, &name, None, &body).await
}

pub(crate) async fn generate_at(
    State(gw): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    whole(&gw, &name, Some(&version), &body).await
}

pub(crate) async fn generate_stream(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    events(&gw, &name, None, &body).await
}

pub(crate) async fn generate_stream_at(
    State(gw): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    events(&gw, &name, Some(&version), &body).await
}

/// `/generate`: every step, joined into one answer.
async fn whole(gw: &Gateway, name: &str, version: Option<&str>, body: &[u8]) -> Response {
    let (mut stream, model) = match open(gw, name, version, body).await {
        Ok(opened) => opened,
        Err(failure) => return failure.into_response(),
    };
    let mut steps = Vec::new();
    while let Some(answer) = step(&mut stream, &model).await {
        match answer {
            Ok(answer) => steps.push(answer),
            Err(failure) => return failure.into_response(),
        }
    }
    axum::Json(join(steps)).into_response()
}

/// `/generate_stream`: each step as a server-sent event as soon as the model yields
/// it; a failure on the way is an event `{"error": ...}` that ends the stream. A client
/// that goes away drops the stream, and with it the generation.
async fn events(gw: &Gateway, name: &str, version: Option<&str>, body: &[u8]) -> Response {
    let (stream, model) = match open(gw, name, version, body).await {
        Ok(opened) => opened,
        Err(failure) => return failure.into_response(),
    };
    let events = futures::stream::unfold(Some((stream, model)), |state| async move {
        let (mut stream, model) = state?;
        let (event, more) = match step(&mut stream, &model).await? {
            Ok(answer) => (answer, true),
            Err(Failure(_, message)) => (json!({ "error": message }), false),
        };
        let bytes = Bytes::from(format!("data: {event}\n\n"));
        Some((
            Ok::<_, std::convert::Infallible>(bytes),
            more.then_some((stream, model)),
        ))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use mycel_core::api::RouteModel;
    use mycel_core::tensor::Datatype;

    fn model() -> Model {
        let info: RouteModel = serde_json::from_value(json!({
            "name": "lm", "component": "lm", "seq": 2,
            "version": "0".repeat(64),
            "signature": {"inputs": [{"name": "max_tokens", "datatype": "INT32", "shape": [1]}],
                          "outputs": []},
            "replicas": []
        }))
        .unwrap();
        Model {
            info,
            replicas: Vec::new(),
        }
    }

    #[test]
    fn fields_become_inputs_of_the_declared_or_their_own_type() {
        let body = br#"{"text_input": "Hi", "max_tokens": 5, "ids": [1, 2], "parameters": {"timeout": 9}}"#;
        let request = to_request(&model(), body).unwrap();
        let input = |n: &str| request.inputs.iter().find(|t| t.name == n).unwrap();
        assert_eq!(input("text_input").datatype, Datatype::Bytes);
        assert_eq!(&input("text_input").data[..], b"\x02\0\0\0Hi");
        assert_eq!(input("max_tokens").datatype, Datatype::Int32);
        assert_eq!(input("ids").shape, vec![2]);
        assert_eq!(request.parameters["timeout"], 9);
    }

    #[test]
    fn bad_requests_say_what_is_expected() {
        let e = to_request(&model(), b"[1]").unwrap_err();
        assert!(e.contains("JSON object of inputs"), "{e}");
        let e = to_request(&model(), br#"{"x": [[1]]}"#).unwrap_err();
        assert!(e.contains("flat list"), "{e}");
        let e = to_request(&model(), br#"{"max_tokens": "five"}"#).unwrap_err();
        assert!(e.contains("max_tokens") || e.contains("inputs[0]"), "{e}");
    }

    #[test]
    fn steps_join_text_and_list_the_rest() {
        let a = json!({"model_name": "lm", "model_version": "2", "text_output": "He", "n": 1});
        let b = json!({"model_name": "lm", "model_version": "2", "text_output": "llo", "n": 2});
        assert_eq!(
            join(vec![a.clone(), b]),
            json!({"model_name": "lm", "model_version": "2", "text_output": "Hello", "n": [1, 2]})
        );
        assert_eq!(join(vec![a.clone()]), a);
    }

    #[test]
    fn one_element_outputs_read_as_values() {
        let text = Tensor {
            name: "text_output".into(),
            datatype: Datatype::Bytes,
            shape: vec![1],
            data: Bytes::from_static(b"\x01\0\0\0a"),
        };
        let answer = to_answer("lm", "2", &[text]).unwrap();
        assert_eq!(
            answer,
            json!({"model_name": "lm", "model_version": "2", "text_output": "a"})
        );
    }
}
