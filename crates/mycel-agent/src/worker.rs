//! The agent's end of the worker protocol: frames (`mycel_core::frame`) over a Unix
//! socket, one request at a time (docs/worker-protocol.md).

use bytes::BytesMut;
pub use mycel_core::frame::Frame;
use mycel_core::frame::{self, PREFIX_LEN};
pub use mycel_core::tensor::Tensor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

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
    /// The worker died while handling this call: the call killed it, or was being
    /// handled alone when it died.
    #[error("the model's worker died while handling this request ({0})")]
    Crashed(String),
    /// The request's deadline passed before it ran: it never started.
    #[error("the request's deadline passed while it waited for the worker; it did not run")]
    Expired,
    /// The request waited behind a call that held the worker up, and was sent back
    /// before it ran, for another replica to take.
    #[error("{0}; the request did not run")]
    Refused(String),
    /// A frame bigger than this agent accepts.
    #[error("frame of {0} bytes is over the limit of {1} bytes")]
    TooLarge(u64, u64),
}

/// Writes one frame.
pub async fn write_frame(
    stream: &mut (impl AsyncWriteExt + Unpin),
    frame: &Frame,
) -> Result<(), WorkerError> {
    let buffers = frame::encode(frame).map_err(|e| WorkerError::Protocol(e.0))?;
    for buffer in &buffers {
        stream.write_all(buffer).await?;
    }
    stream.flush().await?;
    Ok(())
}

/// Reads one frame, refusing bodies over `max_body` bytes.
pub async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    max_body: u64,
) -> Result<Frame, WorkerError> {
    let mut prefix = [0u8; PREFIX_LEN];
    stream.read_exact(&mut prefix).await?;
    let (header_len, body_len) =
        frame::parse_prefix(&prefix).map_err(|e| WorkerError::Protocol(e.0))?;
    if body_len > max_body {
        return Err(WorkerError::TooLarge(body_len, max_body));
    }
    let mut header = vec![0u8; header_len as usize];
    stream.read_exact(&mut header).await?;
    let mut body = BytesMut::zeroed(body_len as usize);
    stream.read_exact(&mut body).await?;
    frame::decode(&header, body.freeze()).map_err(|e| WorkerError::Protocol(e.0))
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
        tensors: Vec<Tensor>,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Frame, WorkerError> {
        let id = self.send(method, tensors, extra).await?;
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

impl WorkerConn {
    /// Sends a request under a fresh id; returns the id its answer carries.
    async fn send(
        &mut self,
        method: &str,
        tensors: Vec<Tensor>,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64, WorkerError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Frame {
            id,
            method: method.to_owned(),
            tensors,
            extra,
        };
        write_frame(&mut self.stream, &request).await?;
        Ok(id)
    }

    /// A call whose answer comes as `chunk` frames, each sent to `chunks` as it
    /// arrives, then a `result` frame, returned. When nobody takes the chunks any more
    /// (the client went away) the worker is told to `cancel`, and what it still sends
    /// is read and dropped, so the connection stays in step.
    pub async fn stream(
        &mut self,
        method: &str,
        tensors: Vec<Tensor>,
        extra: serde_json::Map<String, serde_json::Value>,
        chunks: &tokio::sync::mpsc::Sender<Frame>,
    ) -> Result<Frame, WorkerError> {
        let id = self.send(method, tensors, extra).await?;
        let mut cancelled = false;
        loop {
            let frame = read_frame(&mut self.stream, self.max_body).await?;
            if frame.id != id {
                return Err(WorkerError::Protocol(format!(
                    "answer to request {} while streaming {id}",
                    frame.id
                )));
            }
            match frame.method.as_str() {
                "chunk" => {
                    if !cancelled && chunks.send(frame).await.is_err() {
                        cancelled = true;
                        write_frame(&mut self.stream, &Frame::new(id, "cancel", Vec::new()))
                            .await?;
                    }
                }
                "error" => return Err(model_error(&frame)),
                _ => return Ok(frame),
            }
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
    use bytes::Bytes;
    use mycel_core::tensor::Datatype;

    #[tokio::test]
    async fn frames_round_trip_over_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let mut frame = Frame::new(
            7,
            "predict",
            vec![Tensor {
                name: "x".into(),
                datatype: Datatype::Fp32,
                shape: vec![2],
                data: Bytes::from_static(&[0, 0, 128, 63, 0, 0, 0, 64]),
            }],
        );
        frame
            .extra
            .insert("config".into(), serde_json::json!({"lr": 0.1}));
        write_frame(&mut a, &frame).await.unwrap();
        assert_eq!(read_frame(&mut b, 1 << 20).await.unwrap(), frame);
    }

    #[tokio::test]
    async fn rejects_oversized_frames() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let big = Tensor {
            name: "x".into(),
            datatype: Datatype::Uint8,
            shape: vec![100],
            data: Bytes::from(vec![0u8; 100]),
        };
        write_frame(&mut a, &Frame::new(1, "predict", vec![big]))
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b, 10).await,
            Err(WorkerError::TooLarge(100, 10))
        ));
    }
}
