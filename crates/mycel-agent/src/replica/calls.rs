//! Calls: gather queued requests that can share a worker call, answer them with one,
//! and split the answer.

use std::time::{Duration, Instant};

use mycel_core::frame::Timing;

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
    if first.alone {
        return vec![first];
    }
    let key = match batch_key_of(&first) {
        Some((key, rows)) if max_rows > 1 && rows < max_rows => (key, rows),
        _ => return vec![first],
    };
    let (key, mut rows) = key;
    let mut batch = vec![first];
    let fits = |call: &Call, rows: &mut u64| match batch_key_of(call) {
        Some((k, n)) if !call.alone && k == key && *rows + n <= max_rows => {
            *rows += n;
            true
        }
        _ => false,
    };
    let mut skipped = VecDeque::new();
    while let Some(call) = pending.pop_front() {
        if call.abandoned() {
            super::supervise::give_up(call);
        } else if fits(&call, &mut rows) {
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
        if call.abandoned() {
            super::supervise::give_up(call);
        } else if fits(&call, &mut rows) {
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

/// The worker died during a call: the calls to run again, each alone, once it is back,
/// and the one it was handling alone, whose fate depends on how it died.
pub(super) struct Broke {
    pub(super) error: WorkerError,
    pub(super) again: Vec<Call>,
    pub(super) culprit: Option<Call>,
}

/// What becomes of the call a worker was handling alone when it died.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Killed from outside (SIGKILL, SIGTERM: an operator, the OOM killer, a
    /// supervisor): the call is likely innocent, and runs once more, on this replica
    /// after its restart, never on another.
    RunAgain,
    /// The worker ended itself (an exit, a crash in native code): the call killed it and
    /// fails, and is not run again anywhere.
    Fails,
}

/// The verdict for the call a worker was handling alone when it died by `signal` (None:
/// it exited), `requeued` if it was already run again once.
pub(super) fn verdict(signal: Option<i32>, requeued: bool) -> Verdict {
    const SIGKILL: i32 = 9;
    const SIGTERM: i32 = 15;
    match signal {
        Some(SIGKILL | SIGTERM) if !requeued => Verdict::RunAgain,
        _ => Verdict::Fails,
    }
}

/// Answers a batch of calls with one worker call. One request must not fail the others:
/// when the model raises for a batch, each call is run again alone; when the worker
/// dies during a batch, its calls come back to be run alone once it restarts. A call
/// that was alone when the worker died is answered `Crashed`, and not run again.
pub(super) async fn run_batch(conn: &mut WorkerConn, mut batch: Vec<Call>) -> Result<(), Broke> {
    if batch.len() == 1 {
        return run_alone(conn, batch.swap_remove(0)).await;
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
    let started = Instant::now();
    let answer = conn.call("predict", joined, Default::default()).await;
    let computed = started.elapsed();
    let batch_rows = rows.iter().sum();
    let outcome = match answer {
        Ok(frame) => batch::split(frame.tensors, &rows).map_err(|message| WorkerError::Model {
            message,
            traceback: String::new(),
        }),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(parts) => {
            for (n, (call, outputs)) in batch.into_iter().zip(parts).enumerate() {
                let mut answer = Frame::new(0, "result", outputs);
                timing(&call, started, computed, batch_rows, n == 0).write(&mut answer.extra);
                let _ = call.reply.send(Ok(answer));
            }
            Ok(())
        }
        Err(error @ (WorkerError::Io(_) | WorkerError::Protocol(_))) => Err(Broke {
            error,
            again: batch
                .into_iter()
                .map(|c| Call { alone: true, ..c })
                .collect(),
            culprit: None,
        }),
        Err(_) => {
            // The model raised for the batch: find out for whom.
            let mut rest = batch.into_iter();
            while let Some(call) = rest.next() {
                run_alone(conn, call).await.map_err(|broke| Broke {
                    again: rest.by_ref().map(|c| Call { alone: true, ..c }).collect(),
                    ..broke
                })?;
            }
            Ok(())
        }
    }
}

/// How `call` ran: queued from its arrival until `started`, then in a worker call of
/// `computed` for a batch of `batch_rows` rows.
fn timing(
    call: &Call,
    started: Instant,
    computed: Duration,
    batch_rows: u64,
    first: bool,
) -> Timing {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Timing {
        queue_ns: ns(started.saturating_duration_since(call.arrived)),
        compute_ns: ns(computed),
        batch_rows,
        first,
    }
}

/// Answers one call with a worker call of its own; if the worker dies meanwhile, the
/// call comes back unanswered, as the culprit.
async fn run_alone(conn: &mut WorkerConn, call: Call) -> Result<(), Broke> {
    // The inputs go to the worker; the call keeps them in case it must run again.
    let started = Instant::now();
    let mut answer = match &call.chunks {
        Some(chunks) => {
            conn.stream(
                &call.method,
                call.tensors.clone(),
                call.extra.clone(),
                chunks,
            )
            .await
        }
        None => {
            conn.call(&call.method, call.tensors.clone(), call.extra.clone())
                .await
        }
    };
    if let Some(frame) = answer.as_mut().ok().filter(|_| call.method == "predict") {
        let rows = call
            .tensors
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(1);
        timing(&call, started, started.elapsed(), rows, true).write(&mut frame.extra);
    }
    match answer {
        Err(error @ (WorkerError::Io(_) | WorkerError::Protocol(_))) => Err(Broke {
            error,
            again: Vec::new(),
            culprit: Some(call),
        }),
        answer => {
            let _ = call.reply.send(answer);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use mycel_core::tensor::Datatype;

    fn call(alone: bool) -> Call {
        let (reply, waiting) = oneshot::channel();
        // Someone waits for the answer, or the call counts as abandoned.
        std::mem::forget(waiting);
        Call {
            method: "predict".into(),
            tensors: vec![Tensor {
                name: "x".into(),
                datatype: Datatype::Fp32,
                shape: vec![1, 2],
                data: bytes::Bytes::from(vec![0u8; 8]),
            }],
            extra: Default::default(),
            reply,
            alone,
            deadline: None,
            requeued: false,
            elsewhere: false,
            arrived: std::time::Instant::now(),
            chunks: None,
        }
    }

    #[tokio::test]
    async fn a_call_from_a_failed_batch_is_never_batched_again() {
        let serve = ServeOptions {
            max_batch_size: 8,
            batch_wait_ms: 0,
            timeout_ms: None,
            max_queue: None,
        };
        let (_tx, mut rx) = mpsc::channel(8);
        // Alone first: a batch of one, the others wait.
        let mut pending: VecDeque<Call> = [call(false), call(false)].into();
        let batch = gather(call(true), &mut pending, &mut rx, serve).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(pending.len(), 2);
        // Batchable first: the alone call in the queue is left out of its batch.
        let mut pending: VecDeque<Call> = [call(true), call(false)].into();
        let batch = gather(call(false), &mut pending, &mut rx, serve).await;
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|c| !c.alone));
        assert_eq!(pending.len(), 1);
        assert!(pending[0].alone);
    }

    #[tokio::test]
    async fn calls_nobody_waits_for_are_not_run() {
        let serve = ServeOptions {
            max_batch_size: 8,
            batch_wait_ms: 0,
            timeout_ms: None,
            max_queue: None,
        };
        let (_tx, mut rx) = mpsc::channel(8);
        let (reply, gone) = oneshot::channel();
        drop(gone);
        let left = Call {
            reply,
            ..call(false)
        };
        let late = Call {
            deadline: Some(tokio::time::Instant::now()),
            ..call(false)
        };
        assert!(left.abandoned() && late.abandoned());
        let mut pending: VecDeque<Call> = [left, late, call(false)].into();
        let batch = gather(call(false), &mut pending, &mut rx, serve).await;
        assert_eq!(batch.len(), 2);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_call_runs_again_only_when_something_outside_killed_its_worker_and_only_once() {
        assert_eq!(verdict(Some(9), false), Verdict::RunAgain);
        assert_eq!(verdict(Some(15), false), Verdict::RunAgain);
        assert_eq!(verdict(Some(9), true), Verdict::Fails);
        // os._exit, a segfault, an abort: the call did it.
        assert_eq!(verdict(None, false), Verdict::Fails);
        assert_eq!(verdict(Some(11), false), Verdict::Fails);
        assert_eq!(verdict(Some(6), false), Verdict::Fails);
    }
}
