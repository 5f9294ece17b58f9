//! Federated training on this node: takes tasks from the control plane by long-poll,
//! runs the component's `train` or `evaluate` in a worker of the task's version with
//! `ctx.data_dir` set to the node's dataset and, where the platform allows, no network
//! ([`crate::isolation`]), and sends back the update as a safetensors blob or the
//! evaluation. The data never leaves the node; only the weights `train` returns do.
//!
//! One worker per federation, kept between rounds (imports and data loading are paid
//! once) and stopped when the federation no longer names this node.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mycel_core::federation::{numeric_metrics, Task, TaskKind, TaskResult};
use mycel_core::tensor::{Datatype, Tensor};
use mycel_core::{BlobHash, VersionId};
use safetensors::Dtype;
use tokio::net::UnixListener;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::isolation::Sandbox;
use crate::replica::{log_tail, prepare_code, spawn_worker, tail, Launch, NodeContext};
use crate::worker::{WorkerConn, WorkerError};

/// How long a training worker may take to import and construct the model.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest answer accepted from a training worker.
const MAX_BODY: u64 = 4 << 30;

/// What the task loop needs.
pub(crate) struct Trainer {
    pub node: Arc<NodeContext>,
    pub name: String,
    pub datasets: BTreeMap<String, PathBuf>,
    pub sandbox: Sandbox,
}

struct Runner {
    tasks: mpsc::UnboundedSender<Task>,
    cancel: CancellationToken,
}

/// Takes tasks until `stop`; every training worker is gone when it returns.
pub(crate) async fn task_loop(trainer: Arc<Trainer>, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut runners: HashMap<u64, Runner> = HashMap::new();
    let mut retry = Duration::from_millis(200);
    loop {
        let answer = tokio::select! {
            _ = stop.cancelled() => break,
            answer = trainer.node.client.watch_tasks(&trainer.name, Duration::from_secs(30)) => answer,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(error = %e, "taking tasks failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        retry = Duration::from_millis(200);
        for task in answer.tasks {
            let runner = runners.entry(task.federation).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let cancel = stop.child_token();
                tracker.spawn(run_federation(
                    Arc::clone(&trainer),
                    task.federation,
                    rx,
                    cancel.clone(),
                ));
                Runner { tasks: tx, cancel }
            });
            let _ = runner.tasks.send(task);
        }
        runners.retain(|id, runner| {
            let keep = answer.federations.contains(id);
            if !keep {
                runner.cancel.cancel();
            }
            keep
        });
    }
    for runner in runners.values() {
        runner.cancel.cancel();
    }
    tracker.close();
    tracker.wait().await;
}

/// A worker started for a federation.
struct TrainingWorker {
    version: VersionId,
    child: Child,
    conn: WorkerConn,
    log: PathBuf,
}

impl TrainingWorker {
    async fn stop(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.conn.call("shutdown", Vec::new(), Default::default()),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

async fn run_federation(
    trainer: Arc<Trainer>,
    federation: u64,
    mut tasks: mpsc::UnboundedReceiver<Task>,
    cancel: CancellationToken,
) {
    let mut worker: Option<TrainingWorker> = None;
    loop {
        let task = tokio::select! {
            _ = cancel.cancelled() => break,
            task = tasks.recv() => match task { Some(t) => t, None => break },
        };
        tracing::info!(federation, round = task.round, kind = %task.kind, "task started");
        let result = tokio::select! {
            // Dropping the call kills the worker (kill_on_drop): the federation ended.
            _ = cancel.cancelled() => break,
            result = run_task(&trainer, &mut worker, &task) => result,
        };
        let result = result.unwrap_or_else(|reason| {
            tracing::warn!(federation, round = task.round, kind = %task.kind, %reason, "task failed");
            TaskResult::Failed { reason }
        });
        if let Err(e) = trainer.node.client.task_result(&task.id, &result).await {
            tracing::warn!(federation, task = %task.id, error = %e, "reporting a task result failed");
        }
    }
    if let Some(worker) = worker {
        worker.stop().await;
    }
    tracing::info!(federation, "training worker stopped");
}

async fn run_task(
    trainer: &Trainer,
    slot: &mut Option<TrainingWorker>,
    task: &Task,
) -> Result<TaskResult, String> {
    let node = &trainer.node;
    let data_dir = trainer.datasets.get(&task.dataset).ok_or_else(|| {
        format!(
            "node {} has no dataset {:?}; its datasets are {:?}",
            trainer.name,
            task.dataset,
            trainer.datasets.keys().collect::<Vec<_>>()
        )
    })?;
    if slot.as_ref().is_some_and(|w| w.version != task.version) {
        if let Some(old) = slot.take() {
            old.stop().await;
        }
    }
    if slot.is_none() {
        *slot = Some(start_worker(trainer, task, data_dir).await?);
    }
    let Some(worker) = slot.as_mut() else {
        return Err("no training worker".into());
    };

    if !node
        .cache
        .has(&task.weights)
        .await
        .map_err(|e| e.to_string())?
    {
        let body = node
            .client
            .blob_stream(task.weights)
            .await
            .map_err(|e| format!("fetching the global weights: {e}"))?;
        let fetched = node
            .cache
            .write(task.weights, task.weights_size, body)
            .await
            .map_err(|e| format!("fetching the global weights: {e}"))?;
        node.metrics.fetched("blob", fetched);
    }
    let path = node.cache.path(&task.weights);
    let tensors = tokio::task::spawn_blocking(move || read_safetensors(&path))
        .await
        .map_err(|e| e.to_string())??;

    let mut extra = serde_json::Map::new();
    extra.insert("config".into(), task.config.clone().into());
    let method = task.kind.to_string();
    let started = Instant::now();
    let answer = worker.conn.call(&method, tensors, extra).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let frame = match answer {
        Ok(frame) => frame,
        Err(WorkerError::Model { message, traceback }) => {
            return Err(format!(
                "{method} raised: {message}\n{}",
                tail(&traceback, 12)
            ))
        }
        Err(e) => {
            // The worker is gone or out of step; the next task starts a new one.
            let tail = slot.take().map(|w| log_tail(&w.log)).unwrap_or_default();
            return Err(format!(
                "the training worker broke during {method}: {e}\n{tail}"
            ));
        }
    };
    let examples = frame
        .extra
        .get("num_examples")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let metrics = frame
        .extra
        .get("metrics")
        .and_then(|v| v.as_object())
        .map(numeric_metrics)
        .unwrap_or_default();
    match task.kind {
        TaskKind::Train => {
            let bytes = tokio::task::spawn_blocking(move || write_safetensors(&frame.tensors))
                .await
                .map_err(|e| e.to_string())??;
            let update = BlobHash::of(&bytes);
            node.client
                .put_blob(update, Bytes::from(bytes))
                .await
                .map_err(|e| format!("uploading the update: {e}"))?;
            Ok(TaskResult::Trained {
                update,
                examples,
                metrics,
                train_ms: elapsed_ms,
            })
        }
        TaskKind::Evaluate => Ok(TaskResult::Evaluated {
            loss: frame
                .extra
                .get("loss")
                .and_then(|v| v.as_f64())
                .ok_or("evaluate returned no loss")?,
            examples,
            metrics,
        }),
    }
}

/// Starts the federation's worker: the task's version, its environment, the node's
/// dataset as `ctx.data_dir`, inside the sandbox.
async fn start_worker(
    trainer: &Trainer,
    task: &Task,
    data_dir: &std::path::Path,
) -> Result<TrainingWorker, String> {
    let node = &trainer.node;
    let prepared = prepare_code(node, &task.component, task.version, task.seq, |_, _| {}).await?;
    let socket = node.run_dir.join(format!("fed-{}.sock", task.federation));
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    let log = node
        .logs_dir
        .join(format!("federation-{}.log", task.federation));
    let launch = Launch {
        log: log.clone(),
        data_dir: Some(data_dir),
        sandbox: &trainer.sandbox.prefix,
        // Federated training takes no GPU from the node's pool: it sees what the
        // agent sees.
        cuda_visible: None,
        // Training needs its dataset, which the serving sandbox does not show; it is
        // kept off the network by `sandbox`.
        jail: None,
    };
    let mut child = spawn_worker(&prepared, &socket, &launch)?;
    let accepted = tokio::select! {
        status = child.wait() => Err(format!("the training worker exited ({}) before connecting\n{}", status.map(|s| s.to_string()).unwrap_or_default(), log_tail(&log))),
        accepted = tokio::time::timeout(START_TIMEOUT, listener.accept()) => match accepted {
            Ok(Ok((stream, _))) => Ok(stream),
            Ok(Err(e)) => Err(format!("accepting the training worker's connection: {e}")),
            Err(_) => Err(format!("the training worker did not connect within {}s", START_TIMEOUT.as_secs())),
        },
    };
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    let stream = match accepted {
        Ok(stream) => stream,
        Err(reason) => {
            let _ = child.kill().await;
            return Err(reason);
        }
    };
    let mut conn = WorkerConn::new(stream, MAX_BODY);
    match tokio::time::timeout(START_TIMEOUT, conn.handshake()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            let _ = child.kill().await;
            return Err(format!("model failed to load: {e}\n{}", log_tail(&log)));
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(format!(
                "model did not load within {}s",
                START_TIMEOUT.as_secs()
            ));
        }
    }
    tracing::info!(federation = task.federation, component = %task.component, seq = task.seq, isolation = %trainer.sandbox.isolation, "training worker ready");
    Ok(TrainingWorker {
        version: task.version,
        child,
        conn,
        log,
    })
}

/// The tensors of a safetensors file, for the worker.
fn read_safetensors(path: &std::path::Path) -> Result<Vec<Tensor>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("the global weights are not a safetensors file: {e}"))?;
    file.iter()
        .map(|(name, view)| {
            let datatype = datatype_of(view.dtype()).ok_or_else(|| {
                format!(
                    "tensor {name} is {:?}, which the worker protocol cannot carry",
                    view.dtype()
                )
            })?;
            Ok(Tensor {
                name: name.to_owned(),
                datatype,
                shape: view.shape().iter().map(|&d| d as u64).collect(),
                data: Bytes::copy_from_slice(view.data()),
            })
        })
        .collect()
}

/// A safetensors file of the tensors `train` returned.
fn write_safetensors(tensors: &[Tensor]) -> Result<Vec<u8>, String> {
    let mut views = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        let dtype = dtype_of(tensor.datatype).ok_or_else(|| {
            format!(
                "train returned tensor {} as {}, which a weights file cannot hold",
                tensor.name,
                tensor.datatype.as_str()
            )
        })?;
        let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
        let view = safetensors::tensor::TensorView::new(dtype, shape, &tensor.data)
            .map_err(|e| format!("train returned tensor {}: {e}", tensor.name))?;
        views.push((tensor.name.clone(), view));
    }
    safetensors::serialize(views, None).map_err(|e| format!("writing the update: {e}"))
}

fn datatype_of(dtype: Dtype) -> Option<Datatype> {
    Some(match dtype {
        Dtype::BOOL => Datatype::Bool,
        Dtype::I8 => Datatype::Int8,
        Dtype::I16 => Datatype::Int16,
        Dtype::I32 => Datatype::Int32,
        Dtype::I64 => Datatype::Int64,
        Dtype::U8 => Datatype::Uint8,
        Dtype::U16 => Datatype::Uint16,
        Dtype::U32 => Datatype::Uint32,
        Dtype::U64 => Datatype::Uint64,
        Dtype::F16 => Datatype::Fp16,
        Dtype::F32 => Datatype::Fp32,
        Dtype::F64 => Datatype::Fp64,
        _ => return None,
    })
}

fn dtype_of(datatype: Datatype) -> Option<Dtype> {
    Some(match datatype {
        Datatype::Bool => Dtype::BOOL,
        Datatype::Int8 => Dtype::I8,
        Datatype::Int16 => Dtype::I16,
        Datatype::Int32 => Dtype::I32,
        Datatype::Int64 => Dtype::I64,
        Datatype::Uint8 => Dtype::U8,
        Datatype::Uint16 => Dtype::U16,
        Datatype::Uint32 => Dtype::U32,
        Datatype::Uint64 => Dtype::U64,
        Datatype::Fp16 => Dtype::F16,
        Datatype::Fp32 => Dtype::F32,
        Datatype::Fp64 => Dtype::F64,
        Datatype::Bytes => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_through_safetensors() {
        let tensors = vec![
            Tensor {
                name: "fc.weight".into(),
                datatype: Datatype::Fp32,
                shape: vec![2, 2],
                data: Bytes::from([1f32, 2.0, 3.0, 4.0].map(f32::to_le_bytes).concat()),
            },
            Tensor {
                name: "steps".into(),
                datatype: Datatype::Int64,
                shape: vec![],
                data: Bytes::from(7i64.to_le_bytes().to_vec()),
            },
        ];
        let bytes = write_safetensors(&tensors).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let mut back = read_safetensors(&path).unwrap();
        back.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, tensors);
    }

    #[test]
    fn unsupported_tensors_are_named() {
        let strings = Tensor {
            name: "vocab".into(),
            datatype: Datatype::Bytes,
            shape: vec![1],
            data: Bytes::from_static(&[1, 0, 0, 0, b'a']),
        };
        let error = write_safetensors(&[strings]).unwrap_err();
        assert!(
            error.contains("vocab") && error.contains("BYTES"),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, b"not safetensors").unwrap();
        assert!(read_safetensors(&path)
            .unwrap_err()
            .contains("not a safetensors file"));
    }
}
