//! Rollouts: every change of what a deployment serves is recorded as a [`Rollout`], the
//! reconciler walks the replicas over (new ones first, old ones drained as new ones get
//! ready), and this module ends each rollout: complete when every copy is new and
//! ready, rolled back to the last version that rolled out completely when a new replica
//! fails or the deadline passes.

use std::collections::HashMap;
use std::time::Duration;

use mycel_core::api::{ReplicaView, RolloutStatus};
use mycel_core::fleet::{
    Assignment, Deployment, InPlace, ReplicaId, ReplicaState, ReplicaStatus, Rollout, RolloutKind,
    RolloutOutcome,
};
use mycel_core::reconcile::{progress, rolled_out, up_to_date};
use tokio_util::sync::CancellationToken;

use super::{lock, ready_set, wait_past, Fleet};
use crate::registry::blocking;
use crate::store::StoreError;

/// Who an automatic rollback is recorded as started by.
const AUTOMATIC: &str = "mycel";

impl Fleet {
    /// Makes `deployment` the desired state. If it serves something new (version, serve
    /// options or resources), that is a rollout of `kind`, recorded under `by`; a change
    /// of copies or rollout settings alone is not.
    pub(crate) async fn start_rollout(
        &self,
        mut deployment: Deployment,
        kind: RolloutKind,
        by: &str,
    ) -> Result<(Deployment, Option<Rollout>), StoreError> {
        let _guard = self.reconciling.lock().await;
        let name = deployment.name.clone();
        let (existing, history) = blocking(&self.store, move |s| {
            let existing = s.deployments()?.into_iter().find(|d| d.name == name);
            Ok((existing, s.rollouts(&name)?))
        })
        .await?;
        deployment.generation = existing.as_ref().map_or(1, |e| e.generation + 1);
        let unchanged = existing
            .as_ref()
            .is_some_and(|e| e.served() == deployment.served());
        let started = if unchanged {
            let stored = deployment.clone();
            blocking(&self.store, move |s| s.put_deployment(&stored)).await?;
            None
        } else {
            let now = self.now_ms();
            let mut writes = Vec::new();
            if let Some(latest) = history.last().filter(|r| !r.outcome.is_final()) {
                let mut superseded = latest.clone();
                superseded.outcome = RolloutOutcome::Superseded;
                superseded.ended_ms = Some(now);
                writes.push(superseded);
            }
            let rollout = Rollout {
                deployment: deployment.name.clone(),
                number: history.last().map_or(1, |r| r.number + 1),
                kind,
                from_seq: existing.as_ref().map(|e| e.seq),
                to: deployment.served(),
                by: by.to_owned(),
                started_ms: now,
                ended_ms: None,
                outcome: RolloutOutcome::Progressing,
                in_place: Vec::new(),
            };
            writes.push(rollout.clone());
            let stored = deployment.clone();
            blocking(&self.store, move |s| s.put_rollouts(Some(&stored), &writes)).await?;
            tracing::info!(
                deployment = %deployment.name,
                rollout = rollout.number,
                %kind,
                from = ?rollout.from_seq,
                to = rollout.to.seq,
                %by,
                "rollout started"
            );
            Some(rollout)
        };
        self.reconcile_locked().await?;
        self.routes.send_modify(|g| *g += 1);
        Ok((deployment, started))
    }

    /// Ends the rollouts whose outcome is now known. Returns true if a deployment was
    /// changed (rolled back), so the caller plans again.
    pub(super) async fn advance_rollouts(
        &self,
        deployments: &[Deployment],
        assignments: &[Assignment],
        statuses: &HashMap<ReplicaId, ReplicaStatus>,
        in_place: &[InPlace],
    ) -> Result<bool, StoreError> {
        let names: Vec<String> = deployments.iter().map(|d| d.name.clone()).collect();
        let histories = blocking(&self.store, move |s| {
            names.iter().map(|n| s.rollouts(n)).collect()
        })
        .await?;
        let ready = ready_set(statuses);
        let now = self.now_ms();
        let mut redeployed = false;
        for (deployment, history) in deployments.iter().zip::<Vec<Vec<Rollout>>>(histories) {
            let Some(latest) = history.last() else {
                continue;
            };
            if latest.outcome.is_final() || latest.to != deployment.served() {
                continue;
            }
            let mut latest = latest.clone();
            let noted = note_in_place(&mut latest, in_place);
            let mut ended = latest.clone();
            ended.ended_ms = Some(now);
            if rolled_out(&progress(deployment, assignments, &ready)) {
                ended.outcome = RolloutOutcome::Complete;
                tracing::info!(deployment = %deployment.name, rollout = ended.number, version = ended.to.seq, "rollout complete");
                blocking(&self.store, move |s| s.put_rollouts(None, &[ended])).await?;
                self.routes.send_modify(|g| *g += 1);
                continue;
            }
            let Some(reason) = failure(deployment, assignments, statuses)
                .or_else(|| overdue(deployment, &latest, now))
            else {
                if noted {
                    blocking(&self.store, move |s| s.put_rollouts(None, &[latest])).await?;
                    self.routes.send_modify(|g| *g += 1);
                }
                continue;
            };
            // Back to the newest version that rolled out completely; a rollback that
            // fails itself is not rolled back again.
            let target = (latest.kind == RolloutKind::Deploy)
                .then(|| {
                    history.iter().rev().find(|r| {
                        r.outcome == RolloutOutcome::Complete && r.to.version != deployment.version
                    })
                })
                .flatten();
            let Some(target) = target else {
                tracing::warn!(deployment = %deployment.name, rollout = ended.number, %reason, "rollout failed; nothing to roll back to");
                ended.outcome = RolloutOutcome::Failed { reason };
                blocking(&self.store, move |s| s.put_rollouts(None, &[ended])).await?;
                self.routes.send_modify(|g| *g += 1);
                continue;
            };
            tracing::warn!(
                deployment = %deployment.name,
                rollout = ended.number,
                back_to = target.to.seq,
                %reason,
                "rollout failed; rolling back"
            );
            ended.outcome = RolloutOutcome::RolledBack { reason };
            let mut restored = deployment.clone();
            restored.serve(target.to.clone());
            restored.generation += 1;
            let rollback = Rollout {
                deployment: deployment.name.clone(),
                number: ended.number + 1,
                kind: RolloutKind::AutoRollback,
                from_seq: Some(deployment.seq),
                to: target.to.clone(),
                by: AUTOMATIC.to_owned(),
                started_ms: now,
                ended_ms: None,
                outcome: RolloutOutcome::Progressing,
                in_place: Vec::new(),
            };
            blocking(&self.store, move |s| {
                s.put_rollouts(Some(&restored), &[ended, rollback])
            })
            .await?;
            self.routes.send_modify(|g| *g += 1);
            redeployed = true;
        }
        Ok(redeployed)
    }

    /// A deployment's rollouts, oldest first.
    pub(crate) async fn history(&self, deployment: &str) -> Result<Vec<Rollout>, StoreError> {
        let name = deployment.to_owned();
        blocking(&self.store, move |s| s.rollouts(&name)).await
    }

    /// Where a deployment's latest rollout stands, waiting up to `wait` for a change
    /// after generation `after`. `None` if there is no such deployment.
    pub(crate) async fn rollout_status(
        &self,
        deployment: &str,
        after: u64,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<RolloutStatus>, StoreError> {
        let generation = wait_past(&self.routes, after, wait, stop).await;
        let name = deployment.to_owned();
        let (found, assignments, history) = blocking(&self.store, move |s| {
            let found = s.deployments()?.into_iter().find(|d| d.name == name);
            Ok((found, s.assignments()?, s.rollouts(&name)?))
        })
        .await?;
        let Some(deployment) = found else {
            return Ok(None);
        };
        let statuses = lock(&self.statuses).clone();
        let locations = progress(&deployment, &assignments, &ready_set(&statuses));
        let waiting = assignments
            .iter()
            .filter(|a| a.deployment == deployment.name && up_to_date(a, &deployment))
            .map(|a| ReplicaView {
                assignment: a.clone(),
                status: statuses.get(&a.replica).cloned(),
            })
            .filter(|r| {
                r.status
                    .as_ref()
                    .is_none_or(|s| s.state != ReplicaState::Ready)
            })
            .collect();
        let unplaced = lock(&self.unplaced)
            .iter()
            .filter(|u| u.deployment == deployment.name)
            .cloned()
            .collect();
        Ok(Some(RolloutStatus {
            generation,
            rollout: history.into_iter().last(),
            deployment,
            locations,
            unplaced,
            waiting,
        }))
    }
}

/// Records in `rollout` the locations of `in_place` that are its deployment's and new
/// to it; true if there were any.
fn note_in_place(rollout: &mut Rollout, in_place: &[InPlace]) -> bool {
    let mut noted = false;
    for note in in_place
        .iter()
        .filter(|n| n.deployment == rollout.deployment)
    {
        if !rollout.in_place.iter().any(|n| n.location == note.location) {
            tracing::info!(
                deployment = %note.deployment,
                location = %note.location,
                max_unavailable = note.max_unavailable,
                reason = %note.reason,
                "no room beside the old replicas; replacing them in place"
            );
            rollout.in_place.push(note.clone());
            noted = true;
        }
    }
    noted
}

/// The first new replica that failed, and why.
fn failure(
    deployment: &Deployment,
    assignments: &[Assignment],
    statuses: &HashMap<ReplicaId, ReplicaStatus>,
) -> Option<String> {
    assignments
        .iter()
        .filter(|a| a.deployment == deployment.name && up_to_date(a, deployment))
        .find_map(|a| match &statuses.get(&a.replica)?.state {
            ReplicaState::Failed { reason } => {
                Some(format!("replica {} failed: {reason}", a.replica))
            }
            _ => None,
        })
}

/// Why a rollout has run out of time, if it has.
fn overdue(deployment: &Deployment, rollout: &Rollout, now: u64) -> Option<String> {
    let deadline_ms = deployment.deadline_s.saturating_mul(1000);
    (now.saturating_sub(rollout.started_ms) > deadline_ms).then(|| {
        format!(
            "not every new replica was ready within the deadline of {}s",
            deployment.deadline_s
        )
    })
}
