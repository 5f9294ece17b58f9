//! Calls: gather queued requests that can share a worker call, answer them with one,
//! and split the answer.

use super::*;

/// The calls to answer with one worker call: `first` alone, or with every queued or
/// soon-arriving `predict` that can join its batch, up to `max_batch_size` rows.
/// Calls that cannot join wait in `pending`, in order.
pub(super) async fn gather(
    first: Call,
    pending: &mut VecDeque<Call>,
    calls: &mut mpsc::Receiver<Call>,
    serve: ServeOptions,
) -> Vec<Call> {
    let max_rows = u64::from(serve.max_batch_size);
    let key = match batch_key_of(&first) {
        Some((key, rows)) if max_rows > 1 && rows < max_rows => (key, rows),
        _ => return vec![first],
    };
    let (key, mut rows) = key;
    let mut batch = vec![first];
    let fits = |call: &Call, rows: &mut u64| match batch_key_of(call) {
        Some((k, n)) if k == key && *rows + n <= max_rows => {
            *rows += n;
            true
        }
        _ => false,
    };
    let mut skipped = VecDeque::new();
    while let Some(call) = pending.pop_front() {
        if fits(&call, &mut rows) {
            batch.push(call);
        } else {
            skipped.push_back(call);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(serve.batch_wait_ms.into());
    while rows < max_rows {
        let next = match calls.try_recv() {
            Ok(call) => Some(call),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                tokio::time::timeout_at(deadline, calls.recv())
                    .await
                    .ok()
                    .flatten()
            }
        };
        let Some(call) = next else { break };
        if fits(&call, &mut rows) {
            batch.push(call);
        } else {
            skipped.push_back(call);
        }
    }
    *pending = skipped;
    batch
}

pub(super) fn batch_key_of(call: &Call) -> Option<(batch::BatchKey, u64)> {
    if call.method != "predict" || !call.extra.is_empty() {
        return None;
    }
    batch::batch_key(&call.tensors)
}

/// Answers a batch of calls with one worker call. Errs only when the connection to the
/// worker broke, after telling every caller.
pub(super) async fn run_batch(
    conn: &mut WorkerConn,
    mut batch: Vec<Call>,
) -> Result<(), WorkerError> {
    if batch.len() == 1 {
        let call = batch.swap_remove(0);
        let answer = conn.call(&call.method, call.tensors, call.extra).await;
        return match answer {
            Err(e @ (WorkerError::Io(_) | WorkerError::Protocol(_))) => {
                let _ = call.reply.send(Err(copy_error(&e)));
                Err(e)
            }
            answer => {
                let _ = call.reply.send(answer);
                Ok(())
            }
        };
    }
    let rows: Vec<u64> = batch
        .iter()
        .map(|c| {
            c.tensors
                .first()
                .and_then(|t| t.shape.first())
                .copied()
                .unwrap_or(0)
        })
        .collect();
    let inputs: Vec<&[Tensor]> = batch.iter().map(|c| c.tensors.as_slice()).collect();
    let joined = match batch::join(&inputs) {
        Ok(joined) => joined,
        Err(message) => {
            for call in batch {
                let _ = call.reply.send(Err(WorkerError::Protocol(message.clone())));
            }
            return Ok(());
        }
    };
    let answer = conn.call("predict", joined, Default::default()).await;
    let outcome = match answer {
        Ok(frame) => batch::split(frame.tensors, &rows).map_err(|message| WorkerError::Model {
            message,
            traceback: String::new(),
        }),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(parts) => {
            for (call, outputs) in batch.into_iter().zip(parts) {
                let _ = call.reply.send(Ok(Frame::new(0, "result", outputs)));
            }
            Ok(())
        }
        Err(e) => {
            for call in batch {
                let _ = call.reply.send(Err(copy_error(&e)));
            }
            match e {
                WorkerError::Io(_) | WorkerError::Protocol(_) => Err(e),
                _ => Ok(()),
            }
        }
    }
}

/// The same error for another caller of a batch (io errors are not `Clone`).
pub(super) fn copy_error(e: &WorkerError) -> WorkerError {
    match e {
        WorkerError::Io(io) => WorkerError::Io(std::io::Error::new(io.kind(), io.to_string())),
        WorkerError::Protocol(m) => WorkerError::Protocol(m.clone()),
        WorkerError::Model { message, traceback } => WorkerError::Model {
            message: message.clone(),
            traceback: traceback.clone(),
        },
        WorkerError::TooLarge(a, b) => WorkerError::TooLarge(*a, *b),
    }
}
