//! Supervision: prepare a replica, start its worker, serve until it dies, restart it
//! with backoff.

use super::*;

/// How a replica is told to end.
pub(super) struct Signals {
    /// At once, killing a call in progress (the node is shutting down).
    pub(super) stop: CancellationToken,
    /// After answering what it holds (it is no longer assigned).
    pub(super) drain: CancellationToken,
}

impl Signals {
    /// Either signal; before a replica serves, draining is stopping.
    async fn ended(&self) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = self.drain.cancelled() => {}
        }
    }

    fn is_ended(&self) -> bool {
        self.stop.is_cancelled() || self.drain.is_cancelled()
    }
}

pub(super) async fn run(
    node: Arc<NodeContext>,
    assignment: Assignment,
    mut calls: mpsc::Receiver<Call>,
    signals: Signals,
) {
    let replica = assignment.replica.clone();
    let prepared = tokio::select! {
        _ = signals.ended() => return,
        prepared = prepare(&node, &assignment) => prepared,
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(reason) => {
            tracing::warn!(%replica, %reason, "replica failed");
            node.set(&replica, ReplicaState::Failed { reason }, None, 0);
            // Answer callers until stopped, so nobody waits on a replica that cannot start.
            drain_failed(&mut calls, &signals).await;
            return;
        }
    };

    let mut restarts = 0u32;
    let mut backoff = BACKOFF_START;
    // Calls of a batch the worker died in, to run alone once it is back.
    let mut again: VecDeque<Call> = VecDeque::new();
    loop {
        node.set(&replica, ReplicaState::Starting, None, restarts);
        let started = tokio::time::Instant::now();
        let mut answered = false;
        let outcome = serve_once(
            &node,
            &replica,
            &prepared,
            (&mut calls, &mut again),
            &signals,
            (restarts, &mut answered),
        )
        .await;
        if signals.is_ended() {
            node.set_flow(&replica, None);
            return;
        }
        let reason = match outcome {
            Ok(()) => {
                node.set_flow(&replica, None);
                return;
            }
            Err(reason) => reason,
        };
        tracing::warn!(%replica, %reason, "worker stopped; restarting");
        let (delay, next) = restart_delay(backoff, started.elapsed(), answered);
        // A worker that was serving comes back at once: its queue keeps taking calls
        // meanwhile, which its next worker answers. One that backs off turns away what
        // waits in its queue now: nothing ran, so the gateway may try elsewhere.
        node.set_flow(&replica, delay.is_zero().then_some(Flow::ComingBack));
        if !delay.is_zero() {
            // (The calls of the batch it died in stay: they run here or nowhere.)
            let why = format!("replica {replica} is restarting its worker");
            while let Ok(call) = calls.try_recv() {
                let _ = call.reply.send(Err(WorkerError::Refused(why.clone())));
            }
        }
        node.set(&replica, ReplicaState::Failed { reason }, None, restarts);
        tokio::select! {
            _ = signals.ended() => { node.set_flow(&replica, None); return }
            _ = tokio::time::sleep(delay) => {}
        }
        backoff = next;
        restarts += 1;
    }
}

pub(super) async fn drain_failed(calls: &mut mpsc::Receiver<Call>, signals: &Signals) {
    loop {
        tokio::select! {
            _ = signals.ended() => return,
            call = calls.recv() => match call {
                Some(call) => {
                    let error = std::io::Error::other("replica failed to start");
                    let _ = call.reply.send(Err(WorkerError::Io(error)));
                }
                None => return,
            }
        }
    }
}

/// Starts one worker process and serves calls until it dies (Err) or the replica is
/// stopped or drained (Ok).
pub(super) async fn serve_once(
    node: &NodeContext,
    replica: &str,
    prepared: &Prepared,
    (calls, again): (&mut mpsc::Receiver<Call>, &mut VecDeque<Call>),
    signals: &Signals,
    (restarts, answered): (u32, &mut bool),
) -> Result<(), String> {
    let stop = &signals.stop;
    let socket = node.run_dir.join(format!("{replica}.sock"));
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    let cuda_visible = node.gpus.take(replica, prepared.gpus)?;
    // Whichever way this worker ends, its GPUs go back.
    let _gpus = Held(&node.gpus, replica);
    let jail = if node.sandbox.is_off() {
        None
    } else {
        let devices = cuda_visible
            .as_deref()
            .map(crate::sandbox::gpu_devices)
            .unwrap_or_default();
        let code = std::iter::once(prepared.version_dir.as_path())
            .chain(prepared.dependencies.iter().map(|(_, dir)| dir.as_path()))
            .collect();
        let worker = crate::sandbox::JailSpec {
            code,
            python: &prepared.python,
            socket: &socket,
            devices: &devices,
            network: prepared.manifest.sandbox.network,
            resources: &prepared.manifest.resources,
        };
        Some(
            node.sandbox
                .jail(replica, &worker)
                .map_err(|e| format!("confining the worker: {e}"))?,
        )
    };
    let launch = Launch {
        log: node.log_path(replica),
        cuda_visible,
        jail: jail.as_ref(),
        ..Launch::default()
    };
    // Why a worker ended: its status and log, and what its sandbox saw (the OOM
    // killer, at its memory limit).
    let ended = |status| {
        let reason = exit_reason(node, replica, status);
        match jail
            .as_ref()
            .and_then(|j| j.explain(&prepared.manifest.resources))
        {
            Some(why) => format!("{why}; {reason}"),
            None => reason,
        }
    };
    let mut child = start_worker(node, prepared, &socket, &launch).await?;
    let mut pid = child.id();

    let accepted = tokio::select! {
        _ = signals.ended() => { stop_worker(&mut child, None).await; return Ok(()); }
        status = child.wait() => Err(ended(status)),
        accepted = tokio::time::timeout(START_TIMEOUT, listener.accept()) => match accepted {
            Ok(Ok((stream, _))) => Ok(stream),
            Ok(Err(e)) => Err(format!("accepting the worker's connection: {e}")),
            Err(_) => Err(format!("worker did not connect within {}s", START_TIMEOUT.as_secs())),
        },
    };
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    let stream = match accepted {
        Ok(stream) => {
            // The worker itself, not what it runs in (bubblewrap, a template's fork):
            // the kernel names the process at the socket's other end.
            if let Some(peer) = stream.peer_cred().ok().and_then(|c| c.pid()) {
                pid = u32::try_from(peer).ok().or(pid);
            }
            stream
        }
        Err(reason) => {
            stop_worker(&mut child, None).await;
            return Err(reason);
        }
    };
    let mut conn = WorkerConn::new(stream, MAX_BODY);
    let handshake = tokio::select! {
        _ = signals.ended() => { stop_worker(&mut child, Some(&mut conn)).await; return Ok(()); }
        handshake = tokio::time::timeout(START_TIMEOUT, conn.handshake()) => handshake,
    };
    match handshake {
        Ok(Ok(_)) => {}
        Ok(Err(WorkerError::Model { message, traceback })) => {
            stop_worker(&mut child, None).await;
            return Err(format!("model failed to load: {message}\n{traceback}"));
        }
        Ok(Err(e)) => {
            let status = child.wait().await;
            return Err(format!("{e}; {}", ended(status)));
        }
        Err(_) => {
            stop_worker(&mut child, None).await;
            return Err(format!(
                "model did not load within {}s",
                START_TIMEOUT.as_secs()
            ));
        }
    }
    node.set(replica, ReplicaState::Ready, pid, restarts);
    node.set_flow(replica, None);
    tracing::info!(%replica, pid, "replica ready");

    // What the last worker left unanswered goes first.
    let mut pending: VecDeque<Call> = std::mem::take(again);
    // How long this worker's calls usually take (a moving average).
    let mut usual: Option<Duration> = None;
    let mut draining = false;
    loop {
        let first = match pending.pop_front() {
            Some(call) => call,
            None => tokio::select! {
                _ = stop.cancelled() => {
                    stop_worker(&mut child, Some(&mut conn)).await;
                    return Ok(());
                }
                // No longer assigned: refuse new calls (the gateway sends them to another
                // replica), answer the queued ones, then stop when the queue runs dry.
                _ = signals.drain.cancelled(), if !draining => {
                    draining = true;
                    node.set(replica, ReplicaState::Draining, pid, restarts);
                    calls.close();
                    continue;
                }
                status = child.wait() => return Err(ended(status)),
                _ = tokio::time::sleep(HEALTH_INTERVAL) => {
                    let pong = tokio::time::timeout(
                        HEALTH_TIMEOUT,
                        conn.call("ping", Vec::new(), Default::default()),
                    )
                    .await;
                    match pong {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => {
                            let _ = child.kill().await;
                            let status = child.wait().await;
                            return Err(format!("failed its health check: {e}; {}", ended(status)));
                        }
                        Err(_) => {
                            let _ = child.kill().await;
                            let _ = child.wait().await;
                            return Err(format!(
                                "failed its health check: no answer to a ping within {}s; killed",
                                HEALTH_TIMEOUT.as_secs()
                            ));
                        }
                    }
                }
                call = calls.recv() => match call {
                    Some(call) => call,
                    None => {
                        stop_worker(&mut child, Some(&mut conn)).await;
                        return Ok(());
                    }
                },
            },
        };
        if first.abandoned() {
            give_up(first);
            continue;
        }
        let batch = gather(first, &mut pending, calls, prepared.serve).await;
        // A worker still in the call this long after every caller's deadline is stuck.
        let overdue = batch
            .iter()
            .map(|c| c.deadline)
            .collect::<Option<Vec<_>>>()
            .and_then(|deadlines| deadlines.into_iter().max())
            .map(|latest| latest + OVERDUE_GRACE);
        if batch[0].method == "predict" {
            let rows = batch
                .iter()
                .map(|c| {
                    c.tensors
                        .first()
                        .and_then(|t| t.shape.first())
                        .copied()
                        .unwrap_or(1)
                })
                .sum();
            node.metrics.batch(&prepared.labels, rows);
            for call in &batch {
                node.metrics
                    .queued(&prepared.labels, call.arrived.elapsed().as_secs_f64());
            }
        }
        let computing = std::time::Instant::now();
        let predict = batch[0].method == "predict";
        let held_up_at = tokio::time::Instant::now() + held_up_after(usual);
        let mut held_up = false;
        let run = run_batch(&mut conn, batch);
        tokio::pin!(run);
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                // A model stuck in a call must not hold up stopping: the callers of the
                // dropped batch get 503 and the gateway retries them elsewhere.
                _ = stop.cancelled() => {
                    let _ = child.kill().await;
                    let _ = child.wait().await;
                    return Ok(());
                }
                _ = sleep_until(overdue) => {
                    let _ = child.kill().await;
                    let _ = child.wait().await;
                    return Err(format!(
                        "a call ran {}s past its deadline; the worker was killed",
                        OVERDUE_GRACE.as_secs_f64()
                    ));
                }
                // Frozen, or stuck: what waits behind this call goes elsewhere now,
                // not when the deadline is gone.
                _ = tokio::time::sleep_until(held_up_at), if !held_up => {
                    held_up = true;
                    node.set_flow(replica, Some(Flow::HeldUp));
                    send_elsewhere(&mut pending, calls, replica);
                }
            }
        };
        if held_up {
            node.set_flow(replica, None);
        }
        let took = computing.elapsed();
        if predict {
            node.metrics.computed(&prepared.labels, took.as_secs_f64());
        }
        if outcome.is_ok() {
            *answered = true;
            usual = Some(usual.map_or(took, |u| (u * 7 + took) / 8));
        }
        if let Err(Broke {
            error: e,
            again: left,
            culprit,
        }) = outcome
        {
            // The worker broke mid-call; its exit status says why.
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            let status = match status {
                Ok(status) => status,
                Err(_) => {
                    let _ = child.kill().await;
                    child.wait().await
                }
            };
            let signal = status
                .as_ref()
                .ok()
                .and_then(std::os::unix::process::ExitStatusExt::signal);
            let reason = ended(status);
            if let Some(call) = culprit {
                match verdict(signal, call.requeued) {
                    Verdict::RunAgain => again.push_back(Call {
                        alone: true,
                        requeued: true,
                        ..call
                    }),
                    Verdict::Fails => {
                        let why = reason.lines().next().unwrap_or_default().to_owned();
                        let _ = call.reply.send(Err(WorkerError::Crashed(why)));
                    }
                }
            }
            again.extend(left);
            again.extend(pending.drain(..));
            return Err(format!("{e}; {reason}"));
        }
    }
}

/// A replica's hold on its GPUs, given back when dropped.
struct Held<'a>(&'a crate::gpu::Gpus, &'a str);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Tells the caller of an abandoned call, if it still listens, that it did not run.
pub(super) fn give_up(call: Call) {
    let _ = call.reply.send(Err(WorkerError::Expired));
}

/// How long a worker may be in one call before the calls waiting behind it are sent
/// to another replica: many times what its calls usually take, never less than a
/// second, and until it has answered once, a generous while (a model's first call may
/// be slow for its own reasons).
pub(super) fn held_up_after(usual: Option<Duration>) -> Duration {
    match usual {
        Some(usual) => (usual * HELD_UP_FACTOR).max(HELD_UP_FLOOR),
        None => HELD_UP_FIRST,
    }
}

/// Answers every call waiting for this replica's worker whose gateway has another
/// replica for it, but those that must run here (run again after their worker died,
/// or a stream), as refused: nothing ran, so the gateway tries the other.
fn send_elsewhere(pending: &mut VecDeque<Call>, calls: &mut mpsc::Receiver<Call>, replica: &str) {
    let waiting: Vec<Call> = pending
        .drain(..)
        .chain(std::iter::from_fn(|| calls.try_recv().ok()))
        .collect();
    for call in waiting {
        if call.requeued || !call.elsewhere {
            pending.push_back(call);
        } else {
            let why = format!("replica {replica}'s worker is held up in a call");
            let _ = call.reply.send(Err(WorkerError::Refused(why)));
        }
    }
}

/// How long to wait before restarting a worker that ran for `served`, with `backoff`
/// the wait that was next: none for a worker that had `answered` calls for a while (a
/// request or something outside ended it, not its own start: a poison request or a
/// leak must not take a serving replica away for longer each time; one that dies
/// right after each answer backs off like a crash loop), back to the first wait after
/// a healthy run, and the one after doubled, up to a cap. Returns (this wait, the
/// next).
pub(super) fn restart_delay(
    backoff: Duration,
    served: Duration,
    answered: bool,
) -> (Duration, Duration) {
    if answered && served >= SERVED_A_WHILE {
        return (Duration::ZERO, BACKOFF_START);
    }
    let delay = if served > HEALTHY_AFTER {
        BACKOFF_START
    } else {
        backoff
    };
    (delay, (delay * 2).min(BACKOFF_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loops_back_off_and_a_healthy_run_starts_over() {
        let quick = Duration::from_millis(10);
        let mut backoff = BACKOFF_START;
        let mut waits = Vec::new();
        for _ in 0..9 {
            let (delay, next) = restart_delay(backoff, quick, false);
            waits.push(delay.as_millis());
            backoff = next;
        }
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        let (delay, next) = restart_delay(backoff, HEALTHY_AFTER + quick, false);
        assert_eq!((delay, next), (BACKOFF_START, BACKOFF_START * 2));
    }

    #[test]
    fn a_worker_is_held_up_after_many_usual_calls_and_never_under_a_second() {
        assert_eq!(held_up_after(None), HELD_UP_FIRST);
        assert_eq!(held_up_after(Some(Duration::from_millis(2))), HELD_UP_FLOOR);
        assert_eq!(
            held_up_after(Some(Duration::from_secs(3))),
            Duration::from_secs(3) * HELD_UP_FACTOR
        );
    }

    #[test]
    fn a_worker_that_was_answering_comes_back_at_once_every_time() {
        let mut backoff = BACKOFF_MAX;
        for _ in 0..5 {
            let (delay, next) = restart_delay(backoff, SERVED_A_WHILE, true);
            assert_eq!(delay, Duration::ZERO);
            backoff = next;
        }
        // Dying right after its answers is a crash loop all the same.
        let (delay, next) = restart_delay(backoff, Duration::from_millis(10), true);
        assert_eq!((delay, next), (BACKOFF_START, BACKOFF_START * 2));
        // And should it then fail to start, the crash-loop backoff starts over.
        assert_eq!(
            restart_delay(backoff, Duration::ZERO, false).0,
            BACKOFF_START
        );
    }
}
