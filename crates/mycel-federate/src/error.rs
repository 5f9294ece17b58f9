//! Why an update is rejected ([`Rejection`], the client's problem) and why aggregation
//! failed ([`FederateError`], the server's problem or a bad configuration).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why one client's update is left out of the aggregate. Each message names what the
/// client sent and what the global model expects, so it can go to the round log as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The file is not a complete safetensors file.
    #[error("not a readable safetensors file: {0}")]
    Unreadable(String),
    /// An update must come from at least one example; a count of zero would also give
    /// the update no weight in FedAvg while still counting it as a participant.
    #[error("the example count is 0; an update must come from at least one example")]
    NoExamples,
    /// The same client already sent an update to this aggregation.
    #[error("this client already sent an update in this round")]
    Duplicate,
    /// The tensor names differ from the global model's.
    #[error(
        "tensor names differ from the global model's: {}",
        names_diff(missing, unexpected)
    )]
    Names {
        /// Names the global model has and the update lacks, sorted.
        missing: Vec<String>,
        /// Names the update has and the global model lacks, sorted.
        unexpected: Vec<String>,
    },
    /// Some tensors have another dtype or shape than the global model's.
    #[error("tensors differ from the global model's: {}", join(.0))]
    Tensors(Vec<TensorMismatch>),
    /// A value is NaN or infinite; the first one in file order is named.
    #[error(
        "tensor '{tensor}' holds {value} at index {index:?} (element {element}); every value must be finite"
    )]
    NonFinite {
        /// The tensor.
        tensor: String,
        /// The value's index in the tensor's shape.
        index: Vec<usize>,
        /// The value's position in the tensor's flat, row-major data.
        element: usize,
        /// Which non-finite value it is.
        value: NonFinite,
    },
}

/// One tensor whose dtype or shape differs between an update and the global model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMismatch {
    /// The tensor's name.
    pub tensor: String,
    /// The global model's dtype, as safetensors spells it (`F32`).
    pub expected_dtype: String,
    /// The global model's shape.
    pub expected_shape: Vec<usize>,
    /// The update's dtype.
    pub dtype: String,
    /// The update's shape.
    pub shape: Vec<usize>,
}

impl fmt::Display for TensorMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is {} {:?}, expected {} {:?}",
            self.tensor, self.dtype, self.shape, self.expected_dtype, self.expected_shape
        )
    }
}

/// A value that is not a finite number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonFinite {
    /// Not a number.
    Nan,
    /// Positive infinity.
    PosInf,
    /// Negative infinity.
    NegInf,
}

impl NonFinite {
    /// What `value` is, or `None` when it is finite.
    pub fn of(value: f64) -> Option<NonFinite> {
        if value.is_nan() {
            Some(NonFinite::Nan)
        } else if value == f64::INFINITY {
            Some(NonFinite::PosInf)
        } else if value == f64::NEG_INFINITY {
            Some(NonFinite::NegInf)
        } else {
            None
        }
    }
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NonFinite::Nan => "NaN",
            NonFinite::PosInf => "+Inf",
            NonFinite::NegInf => "-Inf",
        })
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn names_diff(missing: &[String], unexpected: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected {}", unexpected.join(", ")));
    }
    parts.join("; ")
}

/// Why aggregation could not go on. Unlike a [`Rejection`], which leaves one client
/// out, these stop the round (except [`FederateError::Rejected`], which
/// [`crate::Aggregator::add_update`] returns so the caller can log it and go on).
#[derive(Debug, thiserror::Error)]
pub enum FederateError {
    /// The update was left out; the aggregator is still usable.
    #[error("update from client '{client}' rejected: {reason}")]
    Rejected {
        /// The client, as the caller named it.
        client: String,
        /// Why.
        reason: Rejection,
    },
    /// The global model cannot be read or holds what aggregation cannot handle.
    #[error("global model {path}: {reason}")]
    Global {
        /// The global model's file.
        path: PathBuf,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A strategy parameter is out of range, or the strategy does not parse.
    #[error("strategy: {0}")]
    Strategy(String),
    /// A differential-privacy parameter is out of range, or privacy was asked of a
    /// strategy it is not calibrated for.
    #[error("differential privacy: {0}")]
    Privacy(String),
    /// An [`crate::AggregatorConfig`] setting is out of range.
    #[error("aggregator configuration: {0}")]
    Config(String),
    /// Too few updates were accepted for the strategy.
    #[error("{strategy} needs at least {needed} accepted updates, got {got}")]
    TooFewUpdates {
        /// The strategy, as it is spelled on the command line.
        strategy: String,
        /// The least it works with.
        needed: usize,
        /// How many were accepted.
        got: usize,
    },
    /// An accepted update's file could not be read back.
    #[error("reading the update from client '{client}' ({path}): {source}")]
    ReadUpdate {
        /// The client.
        client: String,
        /// Its file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An accepted update's file now holds other values than when it was checked: the
    /// caller must keep update files unchanged until `finish` returns.
    #[error("the update from client '{client}' ({path}) changed while being aggregated: {change}")]
    UpdateChanged {
        /// The client.
        client: String,
        /// Its file.
        path: PathBuf,
        /// What was seen to change.
        change: String,
    },
    /// The weighted sum left f64's range although every update is finite: only F64
    /// updates with values near f64::MAX can do this.
    #[error(
        "the weighted sum of tensor '{tensor}' is not finite near element {element} although every update is finite there; values are too large to aggregate"
    )]
    Overflow {
        /// The tensor.
        tensor: String,
        /// The first element of the chunk where the sum overflowed.
        element: usize,
    },
    /// The aggregate could not be written.
    #[error("writing the aggregate to {path}: {source}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An earlier call failed in a way that may have left the running sum incomplete.
    #[error(
        "an earlier error left this aggregation unusable; start the round's aggregation again"
    )]
    Poisoned,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_message_lists_missing_and_unexpected() {
        let r = Rejection::Names {
            missing: vec!["a".into(), "b".into()],
            unexpected: vec!["z".into()],
        };
        assert_eq!(
            r.to_string(),
            "tensor names differ from the global model's: missing a, b; unexpected z"
        );
    }

    #[test]
    fn non_finite_message_names_tensor_and_index() {
        let r = Rejection::NonFinite {
            tensor: "fc.weight".into(),
            index: vec![1, 2],
            element: 5,
            value: NonFinite::Nan,
        };
        assert_eq!(
            r.to_string(),
            "tensor 'fc.weight' holds NaN at index [1, 2] (element 5); every value must be finite"
        );
    }
}
