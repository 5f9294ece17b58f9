//! Response bodies: JSON written by hand (numbers by `itoa` and `ryu`, no `Value` per
//! element), followed by the outputs sent as binary.

use super::{err, EncodedResponse, InferRequest, OipError};
use crate::tensor::{Datatype, Tensor};

/// The outputs a request asked for (all of them if it named none), in the order it
/// named them, each with whether it goes as binary.
pub fn chosen_outputs<'a>(
    outputs: &'a [Tensor],
    request: &InferRequest,
) -> Result<Vec<(&'a Tensor, bool)>, OipError> {
    if request.outputs.is_empty() {
        return Ok(outputs.iter().map(|t| (t, request.binary_output)).collect());
    }
    request
        .outputs
        .iter()
        .map(|wanted| {
            let tensor = outputs
                .iter()
                .find(|t| t.name == wanted.name)
                .ok_or_else(|| {
                    let names: Vec<&str> = outputs.iter().map(|t| t.name.as_str()).collect();
                    OipError::new(format!(
                        "the model has no output {:?}; it returned {}",
                        wanted.name,
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    ))
                })?;
            Ok((tensor, wanted.binary.unwrap_or(request.binary_output)))
        })
        .collect()
}

/// Encodes the outputs a request asked for (see [`chosen_outputs`]). Binary outputs
/// follow the JSON, in the same order.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[Tensor],
    request: &InferRequest,
) -> Result<EncodedResponse, OipError> {
    let chosen = chosen_outputs(outputs, request)?;
    let mut json_size = 256;
    for (tensor, binary) in &chosen {
        // A response whose sizes disagree with its shapes would be misread silently.
        tensor
            .check()
            .map_err(|e| OipError::new(format!("output {:?} is malformed: {e}", tensor.name)))?;
        json_size += 128 + tensor.name.len();
        if !binary {
            json_size += json_size_estimate(tensor);
        }
    }
    let mut json = Vec::with_capacity(json_size);
    json.extend_from_slice(b"{\"model_name\":");
    write_json_string(&mut json, model_name);
    json.extend_from_slice(b",\"model_version\":");
    write_json_string(&mut json, model_version);
    if let Some(id) = id {
        json.extend_from_slice(b",\"id\":");
        write_json_string(&mut json, id);
    }
    json.extend_from_slice(b",\"outputs\":[");
    for (n, (tensor, binary)) in chosen.iter().enumerate() {
        if n > 0 {
            json.push(b',');
        }
        json.extend_from_slice(b"{\"name\":");
        write_json_string(&mut json, &tensor.name);
        json.extend_from_slice(b",\"datatype\":\"");
        json.extend_from_slice(tensor.datatype.as_str().as_bytes());
        json.extend_from_slice(b"\",\"shape\":[");
        let mut itoa = itoa::Buffer::new();
        for (k, d) in tensor.shape.iter().enumerate() {
            if k > 0 {
                json.push(b',');
            }
            json.extend_from_slice(itoa.format(*d).as_bytes());
        }
        json.push(b']');
        if *binary {
            json.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            json.extend_from_slice(itoa.format(tensor.data.len()).as_bytes());
            json.push(b'}');
        } else {
            json.extend_from_slice(b",\"data\":[");
            write_json_data(&mut json, tensor)?;
            json.push(b']');
        }
        json.push(b'}');
    }
    json.extend_from_slice(b"]}");
    let binary: Vec<&Tensor> = chosen.iter().filter(|c| c.1).map(|c| c.0).collect();
    if binary.is_empty() {
        return Ok(EncodedResponse {
            body: json,
            json_len: None,
        });
    }
    let json_len = json.len();
    let mut body = json;
    body.reserve_exact(binary.iter().map(|t| t.data.len()).sum());
    for tensor in binary {
        body.extend_from_slice(&tensor.data);
    }
    Ok(EncodedResponse {
        body,
        json_len: Some(json_len),
    })
}

/// Roughly how many bytes a tensor's JSON `data` takes, to size the buffer once.
fn json_size_estimate(tensor: &Tensor) -> usize {
    let per_element = match tensor.datatype {
        Datatype::Bool => 6,
        Datatype::Int8 | Datatype::Uint8 => 4,
        Datatype::Int16 | Datatype::Uint16 => 6,
        Datatype::Int32 | Datatype::Uint32 | Datatype::Fp16 => 11,
        Datatype::Fp32 => 14,
        Datatype::Int64 | Datatype::Uint64 | Datatype::Fp64 => 21,
        Datatype::Bytes => return tensor.data.len() + tensor.data.len() / 2,
    };
    let count = tensor.data.len() / tensor.datatype.element_size().unwrap_or(1);
    count.saturating_mul(per_element)
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping, without building a Value; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A tensor's elements as the inside of a flat JSON list.
fn write_json_data(out: &mut Vec<u8>, tensor: &Tensor) -> Result<(), OipError> {
    let data = &tensor.data[..];
    macro_rules! each {
        ($n:expr, $write:expr) => {
            for (k, c) in data.chunks_exact($n).enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                let mut b = [0u8; $n];
                b.copy_from_slice(c);
                $write(out, b);
            }
        };
    }
    macro_rules! ints {
        ($t:ty, $n:expr) => {{
            let mut buffer = itoa::Buffer::new();
            each!($n, |out: &mut Vec<u8>, b| out.extend_from_slice(
                buffer.format(<$t>::from_le_bytes(b)).as_bytes()
            ))
        }};
    }
    // JSON has no NaN or infinity: those are written as null, which numpy reads back
    // as NaN (binary outputs carry them exactly).
    macro_rules! floats {
        ($convert:expr, $n:expr) => {{
            let mut buffer = ryu::Buffer::new();
            each!($n, |out: &mut Vec<u8>, b| {
                let x = $convert(b);
                if x.is_finite() {
                    out.extend_from_slice(buffer.format_finite(x).as_bytes());
                } else {
                    out.extend_from_slice(b"null");
                }
            })
        }};
    }
    match tensor.datatype {
        Datatype::Bool => each!(1, |out: &mut Vec<u8>, b: [u8; 1]| out
            .extend_from_slice(if b[0] != 0 { b"true" } else { b"false" })),
        Datatype::Int8 => ints!(i8, 1),
        Datatype::Int16 => ints!(i16, 2),
        Datatype::Int32 => ints!(i32, 4),
        Datatype::Int64 => ints!(i64, 8),
        Datatype::Uint8 => ints!(u8, 1),
        Datatype::Uint16 => ints!(u16, 2),
        Datatype::Uint32 => ints!(u32, 4),
        Datatype::Uint64 => ints!(u64, 8),
        // JSON has one number type; FP16 is written as the f32 it widens to exactly.
        Datatype::Fp16 => floats!(|b| half::f16::from_le_bytes(b).to_f32(), 2),
        Datatype::Fp32 => floats!(f32::from_le_bytes, 4),
        Datatype::Fp64 => floats!(f64::from_le_bytes, 8),
        Datatype::Bytes => {
            let mut rest = data;
            let mut first = true;
            while let Some((&[a, b, c, d], tail)) = rest.split_first_chunk::<4>() {
                let len = u32::from_le_bytes([a, b, c, d]) as usize;
                let (Some(item), Some(after)) = (tail.get(..len), tail.get(len..)) else {
                    return err(format!(
                        "output {:?} has a truncated BYTES element",
                        tensor.name
                    ));
                };
                let text = std::str::from_utf8(item).map_err(|_| {
                    OipError::new(format!(
                        "output {:?} holds bytes that are not UTF-8 text, which JSON cannot \
                         carry; request it as binary (\"parameters\": {{\"binary_data\": true}})",
                        tensor.name
                    ))
                })?;
                if !first {
                    out.push(b',');
                }
                first = false;
                write_json_string(out, text);
                rest = after;
            }
        }
    }
    Ok(())
}
