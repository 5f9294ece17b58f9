//! The request's JSON header, read in one streaming pass. `data` arrays can hold millions
//! of numbers, so they are decoded as they are read (data.rs) rather than into a
//! `serde_json::Value` per element; everything else is small and read as `Value`.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::data::{DataSeed, DataSink};
use super::fast;
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

/// Reads the header: the fast way (fast.rs) when it vouches for the request, else the
/// careful way, which also explains what is wrong.
pub(super) fn parse_header(
    json: &[u8],
    has_length_header: bool,
    fast: bool,
) -> Result<Header, OipError> {
    let quick = fast.then(|| parse_fast(json)).flatten();
    match quick {
        Some(header) => Ok(header),
        None => parse_carefully(json, has_length_header),
    }
}

/// The header by the fast path, if it vouches for the request.
pub(super) fn parse_fast(json: &[u8]) -> Option<Header> {
    fast::locate(json).and_then(|located| parse_located(json, located))
}

/// The located `data` values of the fast path, handed out in document order as serde
/// meets their placeholders in the stripped JSON.
struct Slots<'j> {
    json: &'j [u8],
    ranges: std::vec::IntoIter<Range<usize>>,
}

/// The fast path: serde reads the JSON without its `data` values, which fast.rs decodes.
/// `None` on any error, for the careful path to explain.
fn parse_located(json: &[u8], located: fast::Located) -> Option<Header> {
    let mut failure = None;
    let mut slots = Slots {
        json,
        ranges: located.data.into_iter(),
    };
    let mut de = serde_json::Deserializer::from_slice(&located.stripped);
    let header = RequestSeed {
        failure: &mut failure,
        json_len: json.len(),
        slots: Some(&mut slots),
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(header)
}

fn parse_carefully(json: &[u8], has_length_header: bool) -> Result<Header, OipError> {
    let mut failure = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed = RequestSeed {
        failure: &mut failure,
        json_len: json.len(),
        slots: None,
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

struct RequestSeed<'f, 'j> {
    failure: &'f mut Option<OipError>,
    json_len: usize,
    slots: Option<&'f mut Slots<'j>>,
}

impl<'de> DeserializeSeed<'de> for RequestSeed<'_, '_> {
    type Value = Header;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Header, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_, '_> {
    type Value = Header;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with \"inputs\"")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Header, A::Error> {
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
                        slots: self.slots.as_deref_mut(),
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

struct InputsSeed<'f, 'j> {
    failure: &'f mut Option<OipError>,
    json_len: usize,
    slots: Option<&'f mut Slots<'j>>,
}

impl<'de> DeserializeSeed<'de> for InputsSeed<'_, '_> {
    type Value = Vec<Input>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Input>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed<'_, '_> {
    type Value = Vec<Input>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("inputs as an array of {\"name\", \"datatype\", \"shape\", \"data\"} objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Vec<Input>, A::Error> {
        let mut inputs = Vec::new();
        while let Some(input) = seq.next_element_seed(InputSeed {
            index: inputs.len(),
            failure: &mut *self.failure,
            json_len: self.json_len,
            slots: self.slots.as_deref_mut(),
        })? {
            inputs.push(input);
        }
        Ok(inputs)
    }
}

struct InputSeed<'f, 'j> {
    index: usize,
    failure: &'f mut Option<OipError>,
    json_len: usize,
    slots: Option<&'f mut Slots<'j>>,
}

impl<'de> DeserializeSeed<'de> for InputSeed<'_, '_> {
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
    /// The fast path's: the JSON text, at this place in the original request.
    Located(Range<usize>),
}

impl<'de> Visitor<'de> for InputSeed<'_, '_> {
    type Value = Input;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "inputs[{}] as an object with name, datatype, shape and data",
            self.index
        )
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Input, A::Error> {
        let i = self.index;
        let mut fields = InputFields::default();
        while let Some(key) = map.next_key::<String>()? {
            let again = match key.as_str() {
                "name" => fields.name.replace(map.next_value()?).is_some(),
                "datatype" => fields.datatype.replace(map.next_value()?).is_some(),
                "shape" => fields.shape.replace(map.next_value()?).is_some(),
                "parameters" => fields.parameters.replace(map.next_value()?).is_some(),
                "data" if self.slots.is_some() => {
                    map.next_value::<IgnoredAny>()?;
                    let range = self.slots.as_mut().and_then(|slots| slots.ranges.next());
                    let range = range.ok_or_else(|| de::Error::custom("no data located"))?;
                    fields.data.replace(JsonData::Located(range)).is_some()
                }
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
        let json = self.slots.map(|slots| slots.json);
        finish_input(i, fields, json).map_err(|failure| stop(self.failure, failure))
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

/// `json` is the whole request's JSON, in the fast path.
fn finish_input(i: usize, fields: InputFields<'_>, json: Option<&[u8]>) -> Result<Input, OipError> {
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
        (None, Some(JsonData::Located(range))) => {
            let text = json.and_then(|json| json.get(range));
            let data = text.and_then(|text| fast::decode(text, datatype, count));
            // Only an error to give up on: the careful path names it.
            InputData::Json(
                data.ok_or_else(|| OipError::new("not for the fast path"))?
                    .into(),
            )
        }
    };
    Ok(Input {
        name,
        datatype,
        shape,
        data,
    })
}
