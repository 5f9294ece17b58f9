//! The request's JSON header, read in one streaming pass. `data` arrays can hold millions
//! of numbers, so they are decoded as they are read (data.rs) rather than into a
//! `serde_json::Value` per element; everything else is small and read as `Value`.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::data::{DataSeed, DataSink};
use super::{brief, err, stop, OipError};
use crate::tensor::Datatype;

/// The request's top-level fields; only `inputs` is decoded as it streams by.
#[derive(Default)]
pub(super) struct Header {
    pub(super) id: Option<Value>,
    pub(super) inputs: Option<Vec<Input>>,
    pub(super) outputs: Option<Value>,
    pub(super) parameters: Option<Value>,
}

/// An input as the JSON describes it; binary data is attached later.
pub(super) struct Input {
    pub(super) name: String,
    pub(super) datatype: Datatype,
    pub(super) shape: Vec<u64>,
    pub(super) data: InputData,
}

pub(super) enum InputData {
    /// Decoded from JSON `data`.
    Json(Bytes),
    /// `parameters.binary_data_size`: this many bytes after the JSON.
    Binary(u64),
}

pub(super) fn parse_header(json: &[u8], has_length_header: bool) -> Result<Header, OipError> {
    let mut failure = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed = RequestSeed {
        failure: &mut failure,
        json_len: json.len(),
    }
    .deserialize(&mut de)
    .and_then(|header| de.end().map(|()| header));
    parsed.map_err(|e| {
        failure.unwrap_or_else(|| {
            let hint = if !has_length_header && e.to_string().starts_with("trailing characters") {
                " (binary data after the JSON needs the Inference-Header-Content-Length header)"
            } else {
                ""
            };
            match e.classify() {
                serde_json::error::Category::Data => {
                    OipError::new(format!("request body is not an inference request: {e}"))
                }
                _ => OipError::new(format!("request body is not valid JSON: {e}{hint}")),
            }
        })
    })
}

struct RequestSeed<'f> {
    failure: &'f mut Option<OipError>,
    json_len: usize,
}

impl<'de> DeserializeSeed<'de> for RequestSeed<'_> {
    type Value = Header;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Header, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_> {
    type Value = Header;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with \"inputs\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
        let mut header = Header::default();
        while let Some(key) = map.next_key::<String>()? {
            let again = match key.as_str() {
                "id" => header.id.replace(map.next_value()?).is_some(),
                "outputs" => header.outputs.replace(map.next_value()?).is_some(),
                "parameters" => header.parameters.replace(map.next_value()?).is_some(),
                "inputs" => {
                    let inputs = map.next_value_seed(InputsSeed {
                        failure: &mut *self.failure,
                        json_len: self.json_len,
                    })?;
                    header.inputs.replace(inputs).is_some()
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    false
                }
            };
            if again {
                return Err(stop(
                    self.failure,
                    OipError::new(format!("{key} appears twice in the request")),
                ));
            }
        }
        Ok(header)
    }
}

struct InputsSeed<'f> {
    failure: &'f mut Option<OipError>,
    json_len: usize,
}

impl<'de> DeserializeSeed<'de> for InputsSeed<'_> {
    type Value = Vec<Input>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Input>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed<'_> {
    type Value = Vec<Input>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("inputs as an array of {\"name\", \"datatype\", \"shape\", \"data\"} objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Input>, A::Error> {
        let mut inputs = Vec::new();
        while let Some(input) = seq.next_element_seed(InputSeed {
            index: inputs.len(),
            failure: &mut *self.failure,
            json_len: self.json_len,
        })? {
            inputs.push(input);
        }
        Ok(inputs)
    }
}

struct InputSeed<'f> {
    index: usize,
    failure: &'f mut Option<OipError>,
    json_len: usize,
}

impl<'de> DeserializeSeed<'de> for InputSeed<'_> {
    type Value = Input;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Input, D::Error> {
        d.deserialize_map(self)
    }
}

/// An input's fields as they arrive, in any order.
#[derive(Default)]
struct InputFields<'de> {
    name: Option<Value>,
    datatype: Option<Value>,
    shape: Option<Value>,
    parameters: Option<Value>,
    data: Option<JsonData<'de>>,
}

enum JsonData<'de> {
    /// Decoded as it streamed by, because the datatype came first (as tritonclient
    /// sends it).
    Decoded(DataSink),
    /// The JSON text, to decode once the datatype is known (keys sorted by name put
    /// `data` before `datatype`).
    Deferred(&'de RawValue),
}

impl<'de> Visitor<'de> for InputSeed<'_> {
    type Value = Input;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "inputs[{}] as an object with name, datatype, shape and data",
            self.index
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Input, A::Error> {
        let i = self.index;
        let mut fields = InputFields::default();
        while let Some(key) = map.next_key::<String>()? {
            let again = match key.as_str() {
                "name" => fields.name.replace(map.next_value()?).is_some(),
                "datatype" => fields.datatype.replace(map.next_value()?).is_some(),
                "shape" => fields.shape.replace(map.next_value()?).is_some(),
                "parameters" => fields.parameters.replace(map.next_value()?).is_some(),
                "data" => {
                    let known = fields
                        .datatype
                        .as_ref()
                        .and_then(Value::as_str)
                        .and_then(|d| d.parse::<Datatype>().ok());
                    let data = match known {
                        Some(datatype) => {
                            let hint = fields.shape.as_ref().map_or(0, |shape| {
                                shape_product(shape).min(self.json_len as u64 / 2 + 1)
                            });
                            let mut sink = DataSink::new(i, datatype, hint as usize);
                            if let Err(e) = map.next_value_seed(DataSeed(&mut sink)) {
                                if let Some(failure) = sink.failure.take() {
                                    *self.failure = Some(failure);
                                }
                                return Err(e);
                            }
                            JsonData::Decoded(sink)
                        }
                        None => JsonData::Deferred(map.next_value::<&RawValue>()?),
                    };
                    fields.data.replace(data).is_some()
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    false
                }
            };
            if again {
                return Err(stop(
                    self.failure,
                    OipError::new(format!("inputs[{i}].{key} appears twice")),
                ));
            }
        }
        finish_input(i, fields).map_err(|failure| stop(self.failure, failure))
    }
}

/// The product of a JSON shape's dimensions if it is a valid shape, else 0; only a
/// size hint.
fn shape_product(shape: &Value) -> u64 {
    let Some(dims) = shape.as_array() else {
        return 0;
    };
    dims.iter()
        .try_fold(1u64, |n, d| n.checked_mul(d.as_u64()?))
        .unwrap_or(0)
}

fn finish_input(i: usize, fields: InputFields<'_>) -> Result<Input, OipError> {
    let name = match fields.name {
        Some(Value::String(s)) if !s.is_empty() => s,
        None => return err(format!("inputs[{i}].name is missing")),
        Some(other) => {
            return err(format!(
                "inputs[{i}].name must be a non-empty string, got {}",
                brief(&other)
            ))
        }
    };
    let datatype: Datatype = match &fields.datatype {
        Some(Value::String(d)) => d
            .parse()
            .map_err(|e| OipError::new(format!("inputs[{i}].datatype: {e}")))?,
        None => {
            return err(format!(
                "inputs[{i}].datatype is missing; expected e.g. \"FP32\""
            ))
        }
        Some(other) => {
            return err(format!(
                "inputs[{i}].datatype must be a string such as \"FP32\", got {}",
                brief(other)
            ))
        }
    };
    let shape: Vec<u64> = match &fields.shape {
        Some(Value::Array(dims)) => dims
            .iter()
            .enumerate()
            .map(|(k, d)| {
                d.as_u64().ok_or_else(|| {
                    OipError::new(format!(
                        "inputs[{i}].shape[{k}] is {}; expected a non-negative integer",
                        brief(d)
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        None => {
            return err(format!(
                "inputs[{i}].shape is missing; expected an array such as [1, 3]"
            ))
        }
        Some(other) => {
            return err(format!(
                "inputs[{i}].shape must be an array such as [1, 3], got {}",
                brief(other)
            ))
        }
    };
    let count = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            OipError::new(format!(
                "inputs[{i}].shape {shape:?} holds more elements than fit in 64 bits"
            ))
        })?;
    let parameters = match &fields.parameters {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p),
        Some(other) => {
            return err(format!(
                "inputs[{i}].parameters must be an object, got {}",
                brief(other)
            ))
        }
    };
    if parameters.is_some_and(|p| p.contains_key("shared_memory_region")) {
        return err(format!(
            "inputs[{i}].parameters.shared_memory_region: shared memory is not supported; \
             send the data in the request body"
        ));
    }
    let binary_size = match parameters.and_then(|p| p.get("binary_data_size")) {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            OipError::new(format!(
                "inputs[{i}].parameters.binary_data_size is {}; expected a byte count",
                brief(v)
            ))
        })?),
    };
    let data = match (binary_size, fields.data) {
        (Some(_), Some(_)) => {
            return err(format!(
                "inputs[{i}] has both data and parameters.binary_data_size; give one"
            ))
        }
        (None, None) => {
            return err(format!(
                "inputs[{i}].data is missing; give data, or parameters.binary_data_size \
                 with the bytes after the JSON"
            ))
        }
        (Some(size), None) => InputData::Binary(size),
        (None, Some(JsonData::Decoded(sink))) => InputData::Json(sink.finish(&shape, count)?),
        (None, Some(JsonData::Deferred(raw))) => {
            let text = raw.get();
            let hint = count.min(text.len() as u64 / 2 + 1);
            let mut sink = DataSink::new(i, datatype, hint as usize);
            let mut de = serde_json::Deserializer::from_str(text);
            if let Err(e) = DataSeed(&mut sink).deserialize(&mut de) {
                return Err(sink
                    .failure
                    .take()
                    .unwrap_or_else(|| OipError::new(format!("inputs[{i}].data: {e}"))));
            }
            InputData::Json(sink.finish(&shape, count)?)
        }
    };
    Ok(Input {
        name,
        datatype,
        shape,
        data,
    })
}
