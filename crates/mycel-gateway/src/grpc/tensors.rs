//! gRPC inference messages to and from mycel's requests and tensors. Raw contents are
//! handed on without a copy; typed contents (for clients that send no raw bytes) are
//! laid out as the raw bytes would be. Every error names the field at fault.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use mycel_core::oip::{InferRequest, OipError, RequestedOutput};
use mycel_core::tensor::{Datatype, Tensor};
use serde_json::{Map, Value};

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};

fn fail<T>(message: String) -> Result<T, OipError> {
    Err(OipError::new(message))
}

/// The request as mycel serves it: inputs checked against their shapes, parameters as
/// REST would carry them (so `timeout` means the same on both).
pub fn to_request(request: ModelInferRequest) -> Result<InferRequest, OipError> {
    let ModelInferRequest {
        id,
        parameters,
        inputs,
        outputs,
        raw_input_contents,
        ..
    } = request;
    let raw = !raw_input_contents.is_empty();
    if raw && raw_input_contents.len() != inputs.len() {
        return fail(format!(
            "raw_input_contents has {} entries for {} inputs; expected one per input, in order",
            raw_input_contents.len(),
            inputs.len()
        ));
    }
    let mut names = HashMap::with_capacity(inputs.len());
    let mut raw_contents = raw_input_contents.into_iter();
    let mut tensors = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        if let Some(j) = names.insert(input.name.clone(), i) {
            return fail(format!(
                "inputs[{i}].name {:?} is already the name of inputs[{j}]; input names must be unique",
                input.name
            ));
        }
        let datatype: Datatype = input
            .datatype
            .parse()
            .map_err(|e| OipError::new(format!("inputs[{i}].datatype: {e}")))?;
        let shape = input
            .shape
            .iter()
            .map(|&d| u64::try_from(d))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| {
                OipError::new(format!(
                    "inputs[{i}].shape {:?} has a negative dimension; a request's shape is exact",
                    input.shape
                ))
            })?;
        let data = match (raw_contents.next(), input.contents) {
            (Some(_), Some(_)) => {
                return fail(format!(
                    "inputs[{i}] has contents while the request has raw_input_contents; \
                     send every input one way"
                ))
            }
            (Some(bytes), None) => bytes,
            (None, contents) => typed(i, datatype, contents.unwrap_or_default())?,
        };
        let tensor = Tensor {
            name: input.name,
            datatype,
            shape,
            data,
        };
        tensor
            .check()
            .map_err(|e| OipError::new(format!("inputs[{i}]: {e}")))?;
        tensors.push(tensor);
    }
    let mut wanted = HashSet::with_capacity(outputs.len());
    let mut requested = Vec::with_capacity(outputs.len());
    for (i, output) in outputs.into_iter().enumerate() {
        if output.name.is_empty() {
            return fail(format!("outputs[{i}].name is empty"));
        }
        if !wanted.insert(output.name.clone()) {
            return fail(format!(
                "outputs[{i}].name {:?} is requested twice",
                output.name
            ));
        }
        requested.push(RequestedOutput {
            name: output.name,
            binary: None,
        });
    }
    Ok(InferRequest {
        id: (!id.is_empty()).then_some(id),
        inputs: tensors,
        outputs: requested,
        binary_output: true,
        parameters: parameters
            .into_iter()
            .filter_map(|(k, v)| Some((k, json(v)?)))
            .collect::<Map<String, Value>>(),
    })
}

fn json(parameter: InferParameter) -> Option<Value> {
    Some(match parameter.parameter_choice? {
        ParameterChoice::BoolParam(b) => Value::from(b),
        ParameterChoice::Int64Param(n) => Value::from(n),
        ParameterChoice::StringParam(s) => Value::from(s),
        ParameterChoice::DoubleParam(x) => Value::from(x),
        ParameterChoice::Uint64Param(n) => Value::from(n),
    })
}

/// Typed contents as a tensor's raw bytes. The protocol widens types narrower than 32
/// bits; an element that does not fit its datatype is an error, not a wrap.
fn typed(i: usize, datatype: Datatype, c: InferTensorContents) -> Result<Bytes, OipError> {
    fn narrow<W: Copy + std::fmt::Display, N: TryFrom<W>>(
        i: usize,
        datatype: Datatype,
        field: &str,
        values: &[W],
        put: impl Fn(&mut BytesMut, N),
        size: usize,
    ) -> Result<Bytes, OipError> {
        let mut out = BytesMut::with_capacity(values.len() * size);
        for (k, &v) in values.iter().enumerate() {
            let n = N::try_from(v).map_err(|_| {
                OipError::new(format!(
                    "inputs[{i}].contents.{field}[{k}] is {v}, out of range for {datatype}"
                ))
            })?;
            put(&mut out, n);
        }
        Ok(out.freeze())
    }
    let (field, bytes) = match datatype {
        Datatype::Bool => (
            "bool_contents",
            c.bool_contents.iter().map(|&b| u8::from(b)).collect(),
        ),
        Datatype::Int8 => (
            "int_contents",
            narrow(
                i,
                datatype,
                "int_contents",
                &c.int_contents,
                |o, n: i8| o.put_i8(n),
                1,
            )?,
        ),
        Datatype::Int16 => (
            "int_contents",
            narrow(
                i,
                datatype,
                "int_contents",
                &c.int_contents,
                BufMut::put_i16_le,
                2,
            )?,
        ),
        Datatype::Int32 => ("int_contents", le(&c.int_contents, BufMut::put_i32_le, 4)),
        Datatype::Int64 => (
            "int64_contents",
            le(&c.int64_contents, BufMut::put_i64_le, 8),
        ),
        Datatype::Uint8 => (
            "uint_contents",
            narrow(
                i,
                datatype,
                "uint_contents",
                &c.uint_contents,
                |o, n: u8| o.put_u8(n),
                1,
            )?,
        ),
        Datatype::Uint16 => (
            "uint_contents",
            narrow(
                i,
                datatype,
                "uint_contents",
                &c.uint_contents,
                BufMut::put_u16_le,
                2,
            )?,
        ),
        Datatype::Uint32 => ("uint_contents", le(&c.uint_contents, BufMut::put_u32_le, 4)),
        Datatype::Uint64 => (
            "uint64_contents",
            le(&c.uint64_contents, BufMut::put_u64_le, 8),
        ),
        Datatype::Fp32 => ("fp32_contents", le(&c.fp32_contents, BufMut::put_f32_le, 4)),
        Datatype::Fp64 => ("fp64_contents", le(&c.fp64_contents, BufMut::put_f64_le, 8)),
        Datatype::Bytes => {
            let size = c.bytes_contents.iter().map(|b| 4 + b.len()).sum();
            let mut out = BytesMut::with_capacity(size);
            for element in &c.bytes_contents {
                let Ok(len) = u32::try_from(element.len()) else {
                    return fail(format!(
                        "inputs[{i}].contents.bytes_contents has an element over 4 GiB"
                    ));
                };
                out.put_u32_le(len);
                out.put_slice(element);
            }
            ("bytes_contents", out.freeze())
        }
        Datatype::Fp16 => {
            if c == InferTensorContents::default() {
                return Ok(Bytes::new());
            }
            return fail(format!(
                "inputs[{i}] is FP16, which has no typed contents; send it in raw_input_contents"
            ));
        }
    };
    if bytes.is_empty() && c != InferTensorContents::default() {
        return fail(format!(
            "inputs[{i}] is {datatype}, whose elements go in contents.{field}; \
             the request filled another field"
        ));
    }
    Ok(bytes)
}

fn le<T: Copy>(values: &[T], put: impl Fn(&mut BytesMut, T), size: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(values.len() * size);
    for &v in values {
        put(&mut out, v);
    }
    out.freeze()
}

/// The answer: the outputs the request asked for (all if it named none), as raw
/// contents, as Triton answers.
pub fn to_response(
    model_name: &str,
    model_version: &str,
    request: &InferRequest,
    outputs: &[Tensor],
) -> Result<ModelInferResponse, OipError> {
    let chosen = mycel_core::oip::chosen_outputs(outputs, request)?;
    let mut response = ModelInferResponse {
        model_name: model_name.to_owned(),
        model_version: model_version.to_owned(),
        id: request.id.clone().unwrap_or_default(),
        ..ModelInferResponse::default()
    };
    for (tensor, _) in chosen {
        // A response whose sizes disagree with its shapes would be misread silently.
        tensor
            .check()
            .map_err(|e| OipError::new(format!("output {:?} is malformed: {e}", tensor.name)))?;
        let shape = tensor
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| {
                OipError::new(format!(
                    "output {:?} has shape {:?}, past what the protocol's int64 dimensions hold",
                    tensor.name, tensor.shape
                ))
            })?;
        response.outputs.push(InferOutputTensor {
            name: tensor.name.clone(),
            datatype: tensor.datatype.as_str().to_owned(),
            shape,
            ..InferOutputTensor::default()
        });
        response.raw_output_contents.push(tensor.data.clone());
    }
    Ok(response)
}

/// The deadline a gRPC client set (`grpc-timeout`: at most 8 digits and a unit, H M S
/// m u n); `None` when it set none. A value that is not one is an error, as gRPC says.
pub fn grpc_timeout(value: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let bad =
        || format!("grpc-timeout {value:?} is not 1 to 8 digits and a unit (H, M, S, m, u, n)");
    let Some(unit) = value.chars().last() else {
        return Err(bad());
    };
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return Err(bad()),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use super::*;

    fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..InferInputTensor::default()
        }
    }

    #[test]
    fn raw_inputs_pass_through_without_a_copy() {
        let raw = Bytes::from(
            [1.0f32, 2.0, 3.0, 4.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        let strings = Bytes::from_static(b"\x02\0\0\0hi\0\0\0\0");
        let request = ModelInferRequest {
            id: "r1".into(),
            inputs: vec![input("x", "FP32", &[2, 2]), input("s", "BYTES", &[2])],
            raw_input_contents: vec![raw.clone(), strings],
            outputs: vec![InferRequestedOutputTensor {
                name: "x".into(),
                ..Default::default()
            }],
            ..ModelInferRequest::default()
        };
        let parsed = to_request(request).unwrap();
        assert_eq!(parsed.id.as_deref(), Some("r1"));
        assert_eq!(parsed.inputs[0].shape, vec![2, 2]);
        assert_eq!(parsed.inputs[0].data.as_ptr(), raw.as_ptr());
        assert_eq!(parsed.inputs[1].datatype, Datatype::Bytes);
        assert_eq!(parsed.outputs[0].name, "x");
    }

    #[test]
    fn typed_contents_become_the_raw_layout() {
        let mut a = input("a", "INT16", &[3]);
        a.contents = Some(InferTensorContents {
            int_contents: vec![-1, 2, 300],
            ..Default::default()
        });
        let mut b = input("b", "BYTES", &[1]);
        b.contents = Some(InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"abc")],
            ..Default::default()
        });
        let mut c = input("c", "BOOL", &[2]);
        c.contents = Some(InferTensorContents {
            bool_contents: vec![true, false],
            ..Default::default()
        });
        let request = ModelInferRequest {
            inputs: vec![a, b, c],
            ..ModelInferRequest::default()
        };
        let parsed = to_request(request).unwrap();
        assert_eq!(&parsed.inputs[0].data[..], &[0xff, 0xff, 2, 0, 0x2c, 1]);
        assert_eq!(&parsed.inputs[1].data[..], b"\x03\0\0\0abc");
        assert_eq!(&parsed.inputs[2].data[..], &[1, 0]);
    }

    #[test]
    fn bad_requests_name_the_field_at_fault() {
        let cases: Vec<(ModelInferRequest, &str)> = vec![
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[1])],
                    raw_input_contents: vec![Bytes::new(), Bytes::new()],
                    ..Default::default()
                },
                "2 entries for 1 inputs",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP33", &[1])],
                    raw_input_contents: vec![Bytes::from_static(&[0; 4])],
                    ..Default::default()
                },
                "inputs[0].datatype: unknown datatype \"FP33\"",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[-1])],
                    raw_input_contents: vec![Bytes::from_static(&[0; 4])],
                    ..Default::default()
                },
                "negative dimension",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[2])],
                    raw_input_contents: vec![Bytes::from_static(&[0; 4])],
                    ..Default::default()
                },
                "needs 8 bytes, got 4",
            ),
            (
                ModelInferRequest {
                    inputs: vec![{
                        let mut x = input("x", "UINT8", &[1]);
                        x.contents = Some(InferTensorContents {
                            uint_contents: vec![256],
                            ..Default::default()
                        });
                        x
                    }],
                    ..Default::default()
                },
                "contents.uint_contents[0] is 256, out of range for UINT8",
            ),
            (
                ModelInferRequest {
                    inputs: vec![{
                        let mut x = input("x", "FP32", &[1]);
                        x.contents = Some(InferTensorContents {
                            fp64_contents: vec![1.0],
                            ..Default::default()
                        });
                        x
                    }],
                    ..Default::default()
                },
                "go in contents.fp32_contents",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[0]), input("x", "FP32", &[0])],
                    ..Default::default()
                },
                "already the name of inputs[0]",
            ),
        ];
        for (request, expected) in cases {
            let e = to_request(request).unwrap_err().message;
            assert!(e.contains(expected), "{e:?} lacks {expected:?}");
        }
    }

    #[test]
    fn parameters_read_as_rest_carries_them() {
        let mut parameters = HashMap::new();
        parameters.insert(
            "timeout".to_owned(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(5000)),
            },
        );
        let request = ModelInferRequest {
            parameters,
            ..Default::default()
        };
        let parsed = to_request(request).unwrap();
        assert_eq!(parsed.parameters["timeout"], Value::from(5000));
    }

    #[test]
    fn responses_carry_the_asked_outputs_raw_in_order() {
        let x = Tensor {
            name: "x".into(),
            datatype: Datatype::Int32,
            shape: vec![2],
            data: Bytes::from_static(&[1, 0, 0, 0, 2, 0, 0, 0]),
        };
        let y = Tensor {
            name: "y".into(),
            ..x.clone()
        };
        let bad = Tensor {
            name: "bad".into(),
            shape: vec![1],
            ..x.clone()
        };
        let mut request = to_request(ModelInferRequest::default()).unwrap();
        let all = to_response("m", "3", &request, &[x.clone(), y.clone()]).unwrap();
        assert_eq!(all.outputs.len(), 2);
        assert_eq!(all.model_version, "3");
        request.outputs = vec![RequestedOutput {
            name: "x".into(),
            binary: None,
        }];
        let one = to_response("m", "3", &request, &[x.clone(), y.clone()]).unwrap();
        assert_eq!(one.outputs[0].shape, vec![2]);
        assert_eq!(one.raw_output_contents[0], x.data);
        assert_eq!(one.outputs.len(), 1);
        // Bytes that disagree with the shape: refused, not sent.
        request.outputs[0].name = "bad".into();
        let e = to_response("m", "3", &request, &[x, y, bad]).unwrap_err();
        assert!(e.message.contains("malformed"), "{e}");
    }

    #[test]
    fn grpc_timeouts_parse_as_the_spec_says() {
        assert_eq!(grpc_timeout(None).unwrap(), None);
        assert_eq!(
            grpc_timeout(Some("250m")).unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(Some("2S")).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            grpc_timeout(Some("1H")).unwrap(),
            Some(Duration::from_secs(3600))
        );
        for bad in ["", "S", "123456789S", "5s", "-1S", "1.5S"] {
            assert!(grpc_timeout(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
