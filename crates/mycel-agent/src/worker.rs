//! The agent's end of the worker protocol: length-prefixed frames over a Unix socket.
//!
//! A frame is `u32 header_len | u64 body_len | header JSON | body`, little-endian. The
//! header names the request id, the method and each tensor's name, datatype, shape and
//! place in the body; tensor bytes travel raw (docs/worker-protocol.md).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest header accepted from a worker.
const MAX_HEADER_BYTES: u32 = 16 << 20;

/// A tensor with its raw little-endian, C-order bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Name.
    pub name: String,
    /// Open Inference Protocol datatype, e.g. `FP32`.
    pub datatype: String,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Raw bytes.
    pub data: Bytes,
}

/// Where a tensor's bytes sit in a frame body.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TensorDescriptor {
    name: String,
    datatype: String,
    shape: Vec<u64>,
    offset: u64,
    length: u64,
}

/// A frame's header: the fixed fields plus whatever else the method carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Header {
    id: u64,
    method: String,
    #[serde(default)]
    tensors: Vec<TensorDescriptor>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// A decoded frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Request id.
    pub id: u64,
    /// `ready`, `result`, `error`, `pong`, ...
    pub method: String,
    /// Its tensors.
    pub tensors: Vec<Tensor>,
    /// Method-specific fields (`message`, `traceback`, `metrics`, ...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Frame {
    /// A string field of the header, or "".
    pub fn text(&self, key: &str) -> &str {
        self.extra
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }
}

/// A broken conversation with a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The socket failed or closed: the worker is gone.
    #[error("worker connection: {0}")]
    Io(#[from] std::io::Error),
    /// The worker sent something that is not a valid frame.
    #[error("worker sent an invalid frame: {0}")]
    Protocol(String),
    /// The user's code raised; the worker is still up.
    #[error("{message}")]
    Model {
        /// `ExcType: message`.
        message: String,
        /// The Python traceback.
        traceback: String,
    },
    /// A frame bigger than this agent accepts.
    #[error("frame of {0} bytes is over the limit of {1} bytes")]
    TooLarge(u64, u64),
}

/// Writes one frame.
pub async fn write_frame(
    stream: &mut (impl AsyncWriteExt + Unpin),
    id: u64,
    method: &str,
    tensors: &[Tensor],
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<(), WorkerError> {
    let mut offset = 0u64;
    let descriptors = tensors
        .iter()
        .map(|t| {
            let descriptor = TensorDescriptor {
                name: t.name.clone(),
                datatype: t.datatype.clone(),
                shape: t.shape.clone(),
                offset,
                length: t.data.len() as u64,
            };
            offset += t.data.len() as u64;
            descriptor
        })
        .collect();
    let header = Header {
        id,
        method: method.to_owned(),
        tensors: descriptors,
        extra,
    };
    let header = serde_json::to_vec(&header).map_err(|e| WorkerError::Protocol(e.to_string()))?;
    let mut prefix = [0u8; 12];
    prefix[..4].copy_from_slice(&(header.len() as u32).to_le_bytes());
    prefix[4..].copy_from_slice(&offset.to_le_bytes());
    stream.write_all(&prefix).await?;
    stream.write_all(&header).await?;
    for tensor in tensors {
        stream.write_all(&tensor.data).await?;
    }
    stream.flush().await?;
    Ok(())
}

/// Reads one frame, refusing bodies over `max_body` bytes.
pub async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    max_body: u64,
) -> Result<Frame, WorkerError> {
    let mut prefix = [0u8; 12];
    stream.read_exact(&mut prefix).await?;
    let header_len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let mut body_len_bytes = [0u8; 8];
    body_len_bytes.copy_from_slice(&prefix[4..]);
    let body_len = u64::from_le_bytes(body_len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(WorkerError::TooLarge(
            header_len.into(),
            MAX_HEADER_BYTES.into(),
        ));
    }
    if body_len > max_body {
        return Err(WorkerError::TooLarge(body_len, max_body));
    }
    let mut header = vec![0u8; header_len as usize];
    stream.read_exact(&mut header).await?;
    let header: Header = serde_json::from_slice(&header)
        .map_err(|e| WorkerError::Protocol(format!("header: {e}")))?;
    let mut body = vec![0u8; body_len as usize];
    stream.read_exact(&mut body).await?;
    let body = Bytes::from(body);
    let tensors = header
        .tensors
        .into_iter()
        .map(|d| {
            let end = d
                .offset
                .checked_add(d.length)
                .filter(|&end| end <= body_len)
                .ok_or_else(|| {
                    WorkerError::Protocol(format!(
                        "tensor {:?} lies outside the {body_len}-byte body",
                        d.name
                    ))
                })?;
            Ok(Tensor {
                data: body.slice(d.offset as usize..end as usize),
                name: d.name,
                datatype: d.datatype,
                shape: d.shape,
            })
        })
        .collect::<Result<_, WorkerError>>()?;
    Ok(Frame {
        id: header.id,
        method: header.method,
        tensors,
        extra: header.extra,
    })
}

/// A connected worker; one request at a time.
#[derive(Debug)]
pub struct WorkerConn {
    stream: UnixStream,
    next_id: u64,
    max_body: u64,
}

impl WorkerConn {
    /// Wraps an accepted connection.
    pub fn new(stream: UnixStream, max_body: u64) -> Self {
        Self {
            stream,
            next_id: 1,
            max_body,
        }
    }

    /// Reads the worker's first frame: `ready`, or `error` with the traceback of a
    /// failed import or `__init__`.
    pub async fn handshake(&mut self) -> Result<Frame, WorkerError> {
        let frame = read_frame(&mut self.stream, self.max_body).await?;
        match frame.method.as_str() {
            "ready" => Ok(frame),
            "error" => Err(model_error(&frame)),
            other => Err(WorkerError::Protocol(format!(
                "expected a ready frame, got {other:?}"
            ))),
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn call(
        &mut self,
        method: &str,
        tensors: &[Tensor],
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Frame, WorkerError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, id, method, tensors, extra).await?;
        let frame = read_frame(&mut self.stream, self.max_body).await?;
        if frame.id != id {
            return Err(WorkerError::Protocol(format!(
                "answer to request {} while waiting for {id}",
                frame.id
            )));
        }
        match frame.method.as_str() {
            "error" => Err(model_error(&frame)),
            _ => Ok(frame),
        }
    }
}

fn model_error(frame: &Frame) -> WorkerError {
    WorkerError::Model {
        message: frame.text("message").to_owned(),
        traceback: frame.text("traceback").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let tensors = vec![
            Tensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![2],
                data: Bytes::from_static(&[0, 0, 128, 63, 0, 0, 0, 64]),
            },
            Tensor {
                name: "empty".into(),
                datatype: "INT8".into(),
                shape: vec![0, 3],
                data: Bytes::new(),
            },
        ];
        let mut extra = serde_json::Map::new();
        extra.insert("config".into(), serde_json::json!({"lr": 0.1}));
        write_frame(&mut a, 7, "predict", &tensors, extra)
            .await
            .unwrap();
        let frame = read_frame(&mut b, 1 << 20).await.unwrap();
        assert_eq!(frame.id, 7);
        assert_eq!(frame.method, "predict");
        assert_eq!(frame.tensors, tensors);
        assert_eq!(frame.extra["config"]["lr"], 0.1);
    }

    #[tokio::test]
    async fn rejects_oversized_and_out_of_bounds_frames() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let big = Tensor {
            name: "x".into(),
            datatype: "UINT8".into(),
            shape: vec![100],
            data: Bytes::from(vec![0u8; 100]),
        };
        write_frame(&mut a, 1, "predict", &[big], Default::default())
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b, 10).await,
            Err(WorkerError::TooLarge(100, 10))
        ));

        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let header = br#"{"id":1,"method":"result","tensors":[{"name":"y","datatype":"UINT8","shape":[4],"offset":2,"length":4}]}"#;
        a.write_all(&(header.len() as u32).to_le_bytes())
            .await
            .unwrap();
        a.write_all(&4u64.to_le_bytes()).await.unwrap();
        a.write_all(header).await.unwrap();
        a.write_all(&[1, 2, 3, 4]).await.unwrap();
        let err = read_frame(&mut b, 1 << 20).await.unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }
}
