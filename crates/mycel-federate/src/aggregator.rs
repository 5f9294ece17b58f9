//! [`Aggregator`]: one round's aggregation, fed updates one by one as they arrive.

use std::path::Path;

use crate::chunk::{self, Chunk, Meter};
use crate::error::{FederateError, Rejection};
use crate::kernel;
use crate::mean::{self, Finalize, Pass, PassError};
use crate::model::{GlobalModel, Update};
use crate::output::Output;
use crate::privacy::{Noise, Privacy};
use crate::robust::{self, Rule};
use crate::strategy::Strategy;

/// Values per chunk unless configured: 32 Ki values make a 256 KiB f64 sum and at most
/// a 256 KiB read buffer per thread, which stay in a core's L2 cache while every
/// update's slice streams through them.
pub const DEFAULT_CHUNK_LEN: usize = 32 * 1024;

/// How many updates the mean strategies hold before adding them into the
/// accumulator, unless configured.
pub const DEFAULT_FOLD_EVERY: usize = 16;

/// How a round aggregates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AggregatorConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// Differential privacy (fedavg and fedprox only); `None` for none.
    pub privacy: Option<Privacy>,
    /// For fedavg and fedprox: once this many accepted updates wait, they are added
    /// into the model-sized accumulator in one pass and their files closed. Larger
    /// means fewer passes over the accumulator and more files open; with fewer updates
    /// than this in a round, no accumulator is allocated at all. At least 1.
    pub fold_every: usize,
    /// Values per chunk: the unit of parallel work and of buffering. At least 1.
    pub chunk_len: usize,
}

impl AggregatorConfig {
    /// `strategy` without privacy, with the default chunking.
    pub fn new(strategy: Strategy) -> Self {
        AggregatorConfig {
            strategy,
            privacy: None,
            fold_every: DEFAULT_FOLD_EVERY,
            chunk_len: DEFAULT_CHUNK_LEN,
        }
    }

    /// Whether [`Aggregator::new`] would take this configuration: the strategy's and
    /// privacy's parameters in range, privacy only with a mean strategy, chunking of
    /// at least 1. Callers can check it before they have a global model.
    pub fn check(&self) -> Result<(), FederateError> {
        self.strategy.check()?;
        if let Some(privacy) = self.privacy {
            privacy.check()?;
            if !self.strategy.is_mean() {
                return Err(FederateError::Privacy(format!(
                    "{} does not take differential privacy: the noise is calibrated to the \
                     sensitivity of a mean; use fedavg or fedprox",
                    self.strategy.name()
                )));
            }
        }
        if self.fold_every == 0 || self.chunk_len == 0 {
            return Err(FederateError::Config(format!(
                "fold_every and chunk_len must be at least 1, got {} and {}",
                self.fold_every, self.chunk_len
            )));
        }
        Ok(())
    }
}

/// What became of one client's update.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientOutcome {
    /// The client, as the caller named it.
    pub client: String,
    /// The example count it reported.
    pub examples: u64,
    /// Whether it is in the aggregate.
    pub status: ClientStatus,
    /// With differential privacy: the L2 norm of its delta before clipping.
    pub delta_norm: Option<f64>,
    /// With Krum: its score (lower is more central).
    pub krum_score: Option<f64>,
}

/// Where an update stands.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientStatus {
    /// Accepted so far; its data is read later.
    Pending,
    /// Part of the aggregate.
    Included,
    /// Valid, but Krum chose other updates.
    NotSelected,
    /// Left out, and why.
    Rejected(Rejection),
}

/// The result of [`Aggregator::finish`].
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// The strategy used.
    pub strategy: Strategy,
    /// Every update offered, in the order added.
    pub clients: Vec<ClientOutcome>,
    /// How many updates are in the aggregate.
    pub included: usize,
    /// Sum of the example counts of the included updates.
    pub examples: u64,
    /// With differential privacy: the standard deviation of the noise added.
    pub noise_std: Option<f64>,
    /// Bytes read from update files, all passes together.
    pub update_bytes_read: u64,
    /// The most memory the passes' buffers held at once (all threads), accumulator
    /// not included.
    pub peak_buffer_bytes: usize,
    /// Size of the model-wide accumulator, 0 when none was needed.
    pub accumulator_bytes: usize,
}

/// One round's aggregation.
///
/// Built from the global model and a strategy; [`add_update`](Self::add_update) is
/// called for each client update as it arrives and [`finish`](Self::finish) writes
/// the aggregate.
///
/// `add_update` checks the update's header (tensor names, dtypes, shapes) and
/// example count at once. Its values are checked for NaN and infinity when they are
/// first read: at once with differential privacy (the clip needs the norm first),
/// otherwise in the pass that aggregates them, which then runs again without the
/// culprit. Rejections found that way are in [`outcomes`](Self::outcomes) and the
/// final [`Aggregate`]; a rejected update never contributes to the aggregate.
///
/// Update files are read more than once and after `add_update` returns: they must
/// stay unchanged until `finish` returns (content-addressed blobs do). Open files
/// are kept, so renaming or unlinking them is harmless.
#[derive(Debug)]
pub struct Aggregator {
    global: GlobalModel,
    config: AggregatorConfig,
    chunks: Vec<Chunk>,
    outcomes: Vec<ClientOutcome>,
    /// Accepted updates not yet added into `acc` (for the robust strategies: all).
    pending: Vec<Update>,
    /// Σ wᵢ·uᵢ over the folded updates; `None` until the first fold.
    acc: Option<Vec<f64>>,
    /// Σ wᵢ over the folded updates.
    folded_weight: f64,
    folded: usize,
    meter: Meter,
    seed: u64,
    poisoned: bool,
}

impl Aggregator {
    /// An aggregation of updates to `global` with `config`.
    pub fn new(global: GlobalModel, config: AggregatorConfig) -> Result<Self, FederateError> {
        config.check()?;
        if global.layout().aggregated_values() == 0 {
            return Err(FederateError::Global {
                path: global.path().to_path_buf(),
                reason: "holds no F16, BF16, F32 or F64 values; there is nothing to aggregate"
                    .to_string(),
            });
        }
        let chunks = chunk::chunks(global.layout(), config.chunk_len);
        if config.privacy.is_some() {
            global.check_finite(&chunks, config.chunk_len)?;
        }
        let seed = match config.privacy.and_then(|p| p.seed) {
            Some(seed) => seed,
            None => rand::random(),
        };
        Ok(Aggregator {
            global,
            config,
            chunks,
            outcomes: Vec::new(),
            pending: Vec::new(),
            acc: None,
            folded_weight: 0.0,
            folded: 0,
            meter: Meter::default(),
            seed,
            poisoned: false,
        })
    }

    /// Adds the update of `client` (the caller's name for it, used in messages and the
    /// report), a safetensors file at `path`, trained on `examples` examples.
    ///
    /// [`FederateError::Rejected`] says why this update is left out; the aggregator
    /// stays usable. Any other error leaves it unusable.
    pub fn add_update(
        &mut self,
        client: &str,
        path: &Path,
        examples: u64,
    ) -> Result<(), FederateError> {
        if self.poisoned {
            return Err(FederateError::Poisoned);
        }
        let result = self.admit(client, path, examples);
        if let Err(e) = &result {
            if !matches!(e, FederateError::Rejected { .. }) {
                self.poisoned = true;
            }
        }
        result
    }

    /// Every update offered so far and where it stands.
    pub fn outcomes(&self) -> &[ClientOutcome] {
        &self.outcomes
    }

    /// Aggregates what was accepted and writes the result to `path` (a safetensors
    /// file with the global model's tensors), replacing it atomically.
    pub fn finish(mut self, path: &Path) -> Result<Aggregate, FederateError> {
        if self.poisoned {
            return Err(FederateError::Poisoned);
        }
        let output = Output::create(path, self.global.layout())?;
        output.copy_carried(&self.global)?;
        let noise_std = match self.config.strategy {
            Strategy::FedAvg | Strategy::FedProx { .. } => self.finish_mean(&output)?,
            Strategy::FedMedian => {
                self.finish_coordinatewise(&output, |_| Rule::Median)?;
                None
            }
            Strategy::TrimmedMean { beta } => {
                self.finish_coordinatewise(&output, |n| Rule::TrimmedMean {
                    // As scipy's trim_mean and Flower: int(beta * n) at each end.
                    trim: (beta * n as f64) as usize,
                })?;
                None
            }
            Strategy::Krum { byzantine, keep } => {
                self.finish_krum(&output, byzantine, keep)?;
                None
            }
        };
        output.persist()?;
        let included: Vec<&ClientOutcome> = self
            .outcomes
            .iter()
            .filter(|o| o.status == ClientStatus::Included)
            .collect();
        Ok(Aggregate {
            strategy: self.config.strategy,
            included: included.len(),
            examples: included.iter().map(|o| o.examples).sum(),
            noise_std,
            update_bytes_read: self.meter.update_bytes_read(),
            peak_buffer_bytes: self.meter.peak(),
            accumulator_bytes: self.acc.as_ref().map_or(0, |a| a.len() * 8),
            clients: self.outcomes,
        })
    }

    fn admit(&mut self, client: &str, path: &Path, examples: u64) -> Result<(), FederateError> {
        let slot = self.outcomes.len();
        self.outcomes.push(ClientOutcome {
            client: client.to_string(),
            examples,
            status: ClientStatus::Pending,
            delta_norm: None,
            krum_score: None,
        });
        let duplicate = self.outcomes[..slot]
            .iter()
            .any(|o| o.client == client && !matches!(o.status, ClientStatus::Rejected(_)));
        if duplicate {
            return Err(self.reject(slot, Rejection::Duplicate));
        }
        let mut update = match Update::open(self.global.layout(), slot, client, path, examples) {
            Ok(update) => update,
            Err(reason) => return Err(self.reject(slot, reason)),
        };
        if !self.config.strategy.is_mean() {
            // The robust strategies ignore example counts: a count is a client's
            // claim, and a byzantine client would inflate it.
            update.weight = 1.0;
        }
        if let Some(privacy) = self.config.privacy {
            let scan = update.scan(
                self.global.layout(),
                &self.chunks,
                self.config.chunk_len,
                Some(&self.global),
                &self.meter,
            )?;
            if let Some(reason) = scan.rejection {
                return Err(self.reject(slot, reason));
            }
            let norm = scan.delta_norm.unwrap_or(0.0);
            update.weight = privacy.clip_scale(norm);
            update.checked = true;
            self.outcomes[slot].delta_norm = Some(norm);
        }
        self.pending.push(update);
        if self.config.strategy.is_mean() && self.pending.len() >= self.config.fold_every {
            self.fold()?;
            // The fold read this update too; say so if it was the culprit.
            if let ClientStatus::Rejected(reason) = &self.outcomes[slot].status {
                return Err(FederateError::Rejected {
                    client: client.to_string(),
                    reason: reason.clone(),
                });
            }
        }
        Ok(())
    }

    fn reject(&mut self, slot: usize, reason: Rejection) -> FederateError {
        self.outcomes[slot].status = ClientStatus::Rejected(reason.clone());
        FederateError::Rejected {
            client: self.outcomes[slot].client.clone(),
            reason,
        }
    }

    fn pass(&self) -> Pass<'_> {
        Pass {
            layout: self.global.layout(),
            chunks: &self.chunks,
            chunk_len: self.config.chunk_len,
            meter: &self.meter,
        }
    }

    /// Adds the pending updates into the accumulator.
    fn fold(&mut self) -> Result<(), FederateError> {
        let fresh = self.acc.is_none();
        if !fresh {
            // A pass that stopped halfway would leave earlier folds' sums mixed with
            // part of a rejected update, so into a live accumulator only updates
            // already known to be finite are added.
            self.check_pending()?;
        }
        loop {
            if self.pending.is_empty() {
                return Ok(());
            }
            let values = self.global.layout().aggregated_values();
            let mut acc = self.acc.take().unwrap_or_else(|| vec![0.0; values]);
            let updates: Vec<&Update> = self.pending.iter().collect();
            let result = mean::fold(self.pass(), &mut acc, fresh, &updates);
            match result {
                Ok(()) => {
                    self.acc = Some(acc);
                    break;
                }
                // A fresh accumulator held nothing else: it is dropped and the batch
                // folded again without the culprit. Into a live one only checked
                // updates were added, so `reject_at` fails (changed file, overflow).
                Err(PassError::NonFinite(chunk)) => {
                    self.reject_at(&chunk)?;
                    if !fresh {
                        return Err(self.explain_at(&chunk));
                    }
                }
                Err(PassError::Failed(e)) => return Err(e),
            }
        }
        for update in self.pending.drain(..) {
            self.folded_weight += update.weight;
            self.folded += 1;
            self.outcomes[update.slot].status = ClientStatus::Included;
        }
        Ok(())
    }

    /// FedAvg's (or DP-FedAvg's) last pass; returns the noise std with privacy.
    fn finish_mean(&mut self, output: &Output) -> Result<Option<f64>, FederateError> {
        loop {
            let clients = self.folded + self.pending.len();
            self.config.strategy.check_count(clients)?;
            let weight = self.folded_weight + self.pending.iter().map(|u| u.weight).sum::<f64>();
            let noise;
            let finalize = match self.config.privacy {
                Some(privacy) => {
                    noise = Noise::new(self.seed, privacy.noise_std(clients))?;
                    Finalize::Private {
                        global: &self.global,
                        clients,
                        scale_sum: weight,
                        noise: &noise,
                    }
                }
                None => Finalize::Mean {
                    total_weight: weight,
                },
            };
            let updates: Vec<&Update> = self.pending.iter().collect();
            let result = mean::finish(
                self.pass(),
                self.acc.as_deref(),
                &updates,
                &finalize,
                output,
            );
            match result {
                Ok(()) => {
                    for update in &self.pending {
                        self.outcomes[update.slot].status = ClientStatus::Included;
                    }
                    return Ok(self.config.privacy.map(|p| p.noise_std(clients)));
                }
                Err(PassError::NonFinite(chunk)) => self.reject_at(&chunk)?,
                Err(PassError::Failed(e)) => return Err(e),
            }
        }
    }

    /// Runs a pass that holds one chunk of every pending update (sized for their
    /// number), again without the culprit each time it meets a non-finite value.
    fn robust_pass<T>(
        &mut self,
        mut run: impl FnMut(Pass<'_>, &[&Update]) -> Result<T, PassError>,
    ) -> Result<T, FederateError> {
        loop {
            let n = self.pending.len();
            self.config.strategy.check_count(n)?;
            let chunk_len = robust::chunk_len_for(n, self.config.chunk_len);
            let chunks = chunk::chunks(self.global.layout(), chunk_len);
            let pass = Pass {
                chunks: &chunks,
                chunk_len,
                ..self.pass()
            };
            let updates: Vec<&Update> = self.pending.iter().collect();
            match run(pass, &updates) {
                Ok(value) => return Ok(value),
                Err(PassError::NonFinite(chunk)) => self.reject_at(&chunk)?,
                Err(PassError::Failed(e)) => return Err(e),
            }
        }
    }

    /// Median or trimmed mean over all accepted updates.
    fn finish_coordinatewise(
        &mut self,
        output: &Output,
        rule: impl Fn(usize) -> Rule,
    ) -> Result<(), FederateError> {
        self.robust_pass(|pass, updates| {
            robust::coordinatewise(pass, updates, rule(updates.len()), output)
        })?;
        for update in &self.pending {
            self.outcomes[update.slot].status = ClientStatus::Included;
        }
        Ok(())
    }

    /// Krum: distances, selection, then the mean of the selected updates.
    fn finish_krum(
        &mut self,
        output: &Output,
        byzantine: usize,
        keep: usize,
    ) -> Result<(), FederateError> {
        let distances = self.robust_pass(robust::krum_distances)?;
        let n = self.pending.len();
        let choice = robust::krum_select(&distances, n, byzantine, keep);
        for (i, update) in self.pending.iter_mut().enumerate() {
            update.checked = true;
            let outcome = &mut self.outcomes[update.slot];
            outcome.krum_score = Some(choice.scores[i]);
            outcome.status = if choice.selected.contains(&i) {
                ClientStatus::Included
            } else {
                ClientStatus::NotSelected
            };
        }
        let selected: Vec<&Update> = choice.selected.iter().map(|&i| &self.pending[i]).collect();
        let finalize = Finalize::Mean {
            total_weight: selected.len() as f64,
        };
        debug_assert!(selected.len() <= n);
        let result = mean::finish(self.pass(), None, &selected, &finalize, output);
        match result {
            Ok(()) => Ok(()),
            // Every update was read whole by the distance pass, so `reject_at` fails.
            Err(PassError::NonFinite(chunk)) => {
                self.reject_at(&chunk)?;
                Err(self.explain_at(&chunk))
            }
            Err(PassError::Failed(e)) => Err(e),
        }
    }

    /// Reads every pending update not yet checked in full and rejects those holding a
    /// non-finite value.
    fn check_pending(&mut self) -> Result<(), FederateError> {
        let mut index = 0;
        while index < self.pending.len() {
            let update = &self.pending[index];
            if update.checked {
                index += 1;
                continue;
            }
            let scan = update.scan(
                self.global.layout(),
                &self.chunks,
                self.config.chunk_len,
                None,
                &self.meter,
            )?;
            match scan.rejection {
                Some(reason) => {
                    let update = self.pending.remove(index);
                    self.reject(update.slot, reason);
                }
                None => {
                    self.pending[index].checked = true;
                    index += 1;
                }
            }
        }
        Ok(())
    }

    /// After a pass found a non-finite value or sum in `chunk`: rejects every pending
    /// update not yet checked whose slice of `chunk` holds one, naming its first
    /// non-finite value in file order. Fails if a checked update holds one (its file
    /// changed) or none does (the sum overflowed).
    fn reject_at(&mut self, chunk: &Chunk) -> Result<(), FederateError> {
        let Some(ty) = self.global.layout().tensors()[chunk.tensor].float() else {
            return Ok(());
        };
        let mut buf = self.meter.buffer::<u8>(chunk.len * ty.size());
        let mut culprits = Vec::new();
        for (index, update) in self.pending.iter().enumerate() {
            let bytes = update.read_chunk(self.global.layout(), chunk, &mut buf, &self.meter)?;
            if let Some((_, value)) = kernel::first_non_finite(bytes, ty) {
                if update.checked {
                    return Err(FederateError::UpdateChanged {
                        client: update.client.clone(),
                        path: update.path.clone(),
                        change: format!(
                            "tensor '{}' now holds {value}",
                            self.global.layout().tensors()[chunk.tensor].name
                        ),
                    });
                }
                culprits.push(index);
            }
        }
        drop(buf);
        if culprits.is_empty() {
            return Err(self.explain_at(chunk));
        }
        for index in culprits.into_iter().rev() {
            let update = self.pending.remove(index);
            let scan = update.scan(
                self.global.layout(),
                &self.chunks,
                self.config.chunk_len,
                None,
                &self.meter,
            )?;
            let reason = scan.rejection.ok_or_else(|| FederateError::UpdateChanged {
                client: update.client.clone(),
                path: update.path.clone(),
                change: "a non-finite value seen in one read is gone in the next".to_string(),
            })?;
            self.reject(update.slot, reason);
        }
        Ok(())
    }

    /// The error for a non-finite sum in `chunk` that no unchecked update explains.
    fn explain_at(&self, chunk: &Chunk) -> FederateError {
        FederateError::Overflow {
            tensor: self.global.layout().tensors()[chunk.tensor].name.clone(),
            element: chunk.start,
        }
    }
}
