//! The frame of the worker protocol (docs/worker-protocol.md), as bytes: one encoding
//! shared by the agent (to its workers) and the gateway (to agents), so a request's
//! tensors cross every hop as raw bytes.
//!
//! `u32 header_len | u64 body_len | header JSON | body`, little-endian; the header
//! places each tensor in the body by offset and length.

/// The HTTP header a gateway sends with a frame to an agent: milliseconds left until
/// the request's deadline. The agent never starts a call past it, and kills a worker
/// that holds one long after it.
pub const DEADLINE_HEADER: &str = "x-mycel-deadline-ms";
/// Set (to `1`) by a gateway that has another replica for the request: the agent may
/// then send it back unrun when its worker is held up in a call, rather than keep it
/// waiting.
pub const ELSEWHERE_HEADER: &str = "x-mycel-elsewhere";
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::tensor::{Datatype, Tensor};

/// How a call ran on its replica, in the header of the agent's `result` frame to the
/// gateway (field `timing`): the gateway's statistics (the OIP statistics extension)
/// are built from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Nanoseconds the call waited in the replica's queue.
    pub queue_ns: u64,
    /// Nanoseconds the worker took for the batch the call was in.
    pub compute_ns: u64,
    /// Rows (axis 0 of the first input) of that whole batch.
    pub batch_rows: u64,
    /// Whether the call came first in its batch: one per batch does, so that adding up
    /// `first` over every gateway counts each execution once.
    pub first: bool,
}

impl Timing {
    const FIELD: &'static str = "timing";

    /// Writes it into a frame's header fields.
    pub fn write(&self, extra: &mut serde_json::Map<String, serde_json::Value>) {
        if let Ok(value) = serde_json::to_value(self) {
            extra.insert(Self::FIELD.into(), value);
        }
    }

    /// Reads it from a frame's header fields; `None` when absent or malformed (an agent
    /// from before it was sent).
    pub fn read(extra: &serde_json::Map<String, serde_json::Value>) -> Option<Self> {
        Self::deserialize(extra.get(Self::FIELD)?).ok()
    }
}

/// Bytes before the header: its length (u32) and the body's (u64).
pub const PREFIX_LEN: usize = 12;
/// Largest header accepted.
pub const MAX_HEADER_LEN: u32 = 16 << 20;
/// Tensor offsets are multiples of this, so the reader can view them in place.
const ALIGN: usize = 64;

/// One message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    /// Request id, repeated by the answer.
    pub id: u64,
    /// `predict`, `result`, `error`, `ready`, ...
    pub method: String,
    /// Its tensors.
    pub tensors: Vec<Tensor>,
    /// Method-specific header fields (`message`, `traceback`, `metrics`, ...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Frame {
    /// A frame with no extra fields.
    pub fn new(id: u64, method: &str, tensors: Vec<Tensor>) -> Self {
        Self {
            id,
            method: method.to_owned(),
            tensors,
            extra: Default::default(),
        }
    }

    /// A string field of the header, or "".
    pub fn text(&self, key: &str) -> &str {
        self.extra
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }
}

/// A frame that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid frame: {0}")]
pub struct FrameError(pub String);

#[derive(Serialize, Deserialize)]
struct Descriptor {
    name: String,
    datatype: Datatype,
    shape: Vec<u64>,
    offset: u64,
    length: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    id: u64,
    method: String,
    #[serde(default)]
    tensors: Vec<Descriptor>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// The frame as buffers to write in order: prefix and header, then for each tensor its
/// padding and its bytes (shared, not copied).
pub fn encode(frame: &Frame) -> Result<Vec<Bytes>, FrameError> {
    let mut offset = 0usize;
    let mut descriptors = Vec::with_capacity(frame.tensors.len());
    let mut pieces = Vec::with_capacity(frame.tensors.len() * 2 + 1);
    for tensor in &frame.tensors {
        let padding = offset.next_multiple_of(ALIGN) - offset;
        if padding > 0 {
            pieces.push(Bytes::from(vec![0u8; padding]));
            offset += padding;
        }
        descriptors.push(Descriptor {
            name: tensor.name.clone(),
            datatype: tensor.datatype,
            shape: tensor.shape.clone(),
            offset: offset as u64,
            length: tensor.data.len() as u64,
        });
        pieces.push(tensor.data.clone());
        offset += tensor.data.len();
    }
    let header = Header {
        id: frame.id,
        method: frame.method.clone(),
        tensors: descriptors,
        extra: frame.extra.clone(),
    };
    let json = serde_json::to_vec(&header).map_err(|e| FrameError(e.to_string()))?;
    let header_len = u32::try_from(json.len())
        .ok()
        .filter(|&n| n <= MAX_HEADER_LEN)
        .ok_or_else(|| FrameError(format!("header of {} bytes is too large", json.len())))?;
    let mut head = BytesMut::with_capacity(PREFIX_LEN + json.len());
    head.put_u32_le(header_len);
    head.put_u64_le(offset as u64);
    head.put_slice(&json);
    let mut buffers = Vec::with_capacity(pieces.len() + 1);
    buffers.push(head.freeze());
    buffers.extend(pieces);
    Ok(buffers)
}

/// The frame as one contiguous buffer.
pub fn encode_to_vec(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let buffers = encode(frame)?;
    let mut out = Vec::with_capacity(buffers.iter().map(Bytes::len).sum());
    for buffer in &buffers {
        out.extend_from_slice(buffer);
    }
    Ok(out)
}

/// Header and body lengths from a frame's first [`PREFIX_LEN`] bytes.
pub fn parse_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<(u32, u64), FrameError> {
    let mut header_len = [0u8; 4];
    header_len.copy_from_slice(&prefix[..4]);
    let mut body_len = [0u8; 8];
    body_len.copy_from_slice(&prefix[4..]);
    let header_len = u32::from_le_bytes(header_len);
    if header_len > MAX_HEADER_LEN {
        return Err(FrameError(format!(
            "header of {header_len} bytes is over the limit of {MAX_HEADER_LEN}"
        )));
    }
    Ok((header_len, u64::from_le_bytes(body_len)))
}

/// A frame from its header JSON and body; every tensor is checked against its bytes.
pub fn decode(header: &[u8], body: Bytes) -> Result<Frame, FrameError> {
    let header: Header = serde_json::from_slice(header)
        .map_err(|e| FrameError(format!("header is not valid: {e}")))?;
    let mut tensors = Vec::with_capacity(header.tensors.len());
    for d in header.tensors {
        let end = d
            .offset
            .checked_add(d.length)
            .filter(|&end| end <= body.len() as u64)
            .ok_or_else(|| {
                FrameError(format!(
                    "tensor {:?} at {}+{} lies outside the {}-byte body",
                    d.name,
                    d.offset,
                    d.length,
                    body.len()
                ))
            })?;
        let tensor = Tensor {
            name: d.name,
            datatype: d.datatype,
            shape: d.shape,
            data: body.slice(d.offset as usize..end as usize),
        };
        tensor.check().map_err(|e| FrameError(e.to_string()))?;
        tensors.push(tensor);
    }
    Ok(Frame {
        id: header.id,
        method: header.method,
        tensors,
        extra: header.extra,
    })
}

/// A whole frame from one buffer that holds exactly it.
pub fn decode_from(bytes: Bytes) -> Result<Frame, FrameError> {
    let prefix: &[u8; PREFIX_LEN] = bytes
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| FrameError(format!("{} bytes is shorter than a frame", bytes.len())))?;
    let (header_len, body_len) = parse_prefix(prefix)?;
    // Both lengths come off the wire: a body length near u64::MAX must not wrap into a
    // sum that matches the buffer.
    let expected = (PREFIX_LEN as u64 + u64::from(header_len)).checked_add(body_len);
    if expected != Some(bytes.len() as u64) {
        return Err(FrameError(format!(
            "frame says {} + {header_len} + {body_len} bytes, got {}",
            PREFIX_LEN,
            bytes.len()
        )));
    }
    let body_start = PREFIX_LEN + header_len as usize;
    decode(&bytes[PREFIX_LEN..body_start], bytes.slice(body_start..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, datatype: Datatype, shape: &[u64], data: &[u8]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn round_trip_aligns_tensors_and_keeps_extra_fields() {
        let mut frame = Frame::new(
            7,
            "result",
            vec![
                tensor("a", Datatype::Uint8, &[3], &[1, 2, 3]),
                tensor("b", Datatype::Fp32, &[1], &1.5f32.to_le_bytes()),
                tensor("empty", Datatype::Int64, &[0, 4], &[]),
            ],
        );
        frame.extra.insert("loss".into(), serde_json::json!(0.25));
        let bytes = Bytes::from(encode_to_vec(&frame).unwrap());
        let back = decode_from(bytes.clone()).unwrap();
        assert_eq!(back, frame);
        assert_eq!(back.extra["loss"], 0.25);
        // The second tensor starts at an aligned offset of the body.
        let header_len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        let body = &bytes[PREFIX_LEN + header_len..];
        assert_eq!(&body[64..68], &1.5f32.to_le_bytes());
    }

    #[test]
    fn rejects_tensors_outside_the_body_and_wrong_sizes() {
        let header = br#"{"id":1,"method":"predict","tensors":[{"name":"x","datatype":"FP32","shape":[2],"offset":4,"length":8}]}"#;
        let err = decode(header, Bytes::from_static(&[0; 8])).unwrap_err();
        assert!(err.0.contains("outside the 8-byte body"), "{err}");

        let header = br#"{"id":1,"method":"predict","tensors":[{"name":"x","datatype":"FP32","shape":[3],"offset":0,"length":8}]}"#;
        let err = decode(header, Bytes::from_static(&[0; 8])).unwrap_err();
        assert!(err.0.contains("\"x\""), "{err}");

        let header = br#"{"id":1,"method":"predict","tensors":[{"name":"x","datatype":"FLOAT","shape":[2],"offset":0,"length":8}]}"#;
        assert!(decode(header, Bytes::from_static(&[0; 8])).is_err());
    }

    #[test]
    fn rejects_truncated_and_oversized_frames() {
        let bytes = encode_to_vec(&Frame::new(1, "ping", vec![])).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_from(Bytes::copy_from_slice(&bytes[..cut])).is_err());
        }
        let mut huge = [0u8; PREFIX_LEN];
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_prefix(&huge).is_err());
    }

    #[test]
    fn a_body_length_that_would_overflow_is_refused() {
        let mut bytes = encode_to_vec(&Frame::new(1, "ping", vec![])).unwrap();
        bytes[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = decode_from(Bytes::from(bytes)).unwrap_err();
        assert!(err.0.contains(&u64::MAX.to_string()), "{err}");
    }
}
