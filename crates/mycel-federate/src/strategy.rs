//! The aggregation strategies and their parameters.
//!
//! On the command line a strategy is its name, then `:` and `key=value` parameters
//! separated by commas: `fedavg`, `fedprox:mu=0.01`, `fedmedian`,
//! `trimmed-mean:beta=0.1`, `krum:f=2`, `krum:f=2,m=3`.

use std::fmt;
use std::str::FromStr;

use crate::error::FederateError;

/// How client updates become the next global model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strategy {
    /// FedAvg (McMahan et al. 2017): the mean of the updates weighted by their example
    /// counts.
    FedAvg,
    /// FedProx (Li et al. 2020): clients add `mu / 2 · ‖w − w_global‖²` to their local
    /// loss; the server aggregates exactly as FedAvg. `mu` travels to the clients in
    /// the round's training config ([`Strategy::proximal_mu`]).
    FedProx {
        /// Weight of the proximal term, ≥ 0.
        mu: f64,
    },
    /// The coordinate-wise median (Yin et al. 2018), unweighted; for an even number of
    /// updates, the mean of the two middle values (as numpy's `median`).
    FedMedian,
    /// The coordinate-wise trimmed mean (Yin et al. 2018), unweighted: per coordinate,
    /// drop the `floor(beta · n)` largest and as many smallest values, average the rest.
    TrimmedMean {
        /// Fraction trimmed at each end, in [0, 0.5).
        beta: f64,
    },
    /// Krum and Multi-Krum (Blanchard et al. 2017): score each update by the sum of the
    /// squared distances to its `n − f − 2` nearest other updates and keep the `m`
    /// with the lowest scores; the aggregate is their unweighted mean (`m = 1`: Krum
    /// picks one update).
    Krum {
        /// How many byzantine clients to tolerate (`f`); needs `n ≥ 2f + 3` updates.
        byzantine: usize,
        /// How many updates to average (`m`), 1 ≤ m ≤ n − f.
        keep: usize,
    },
}

impl Strategy {
    /// The strategy's name as the command line spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::FedAvg => "fedavg",
            Strategy::FedProx { .. } => "fedprox",
            Strategy::FedMedian => "fedmedian",
            Strategy::TrimmedMean { .. } => "trimmed-mean",
            Strategy::Krum { .. } => "krum",
        }
    }

    /// FedProx's `mu`, which the coordinator puts into each client's training config;
    /// `None` for the other strategies.
    pub fn proximal_mu(&self) -> Option<f64> {
        match self {
            Strategy::FedProx { mu } => Some(*mu),
            _ => None,
        }
    }

    /// Whether the aggregate is a (weighted) mean of all updates, computed in one
    /// streaming pass per update, rather than a per-coordinate order statistic or a
    /// selection that needs every update at once.
    pub fn is_mean(&self) -> bool {
        matches!(self, Strategy::FedAvg | Strategy::FedProx { .. })
    }

    /// Checks the parameters' ranges.
    pub fn check(&self) -> Result<(), FederateError> {
        match *self {
            Strategy::FedProx { mu } if !(mu.is_finite() && mu >= 0.0) => {
                Err(FederateError::Strategy(format!(
                    "fedprox mu must be a finite number ≥ 0, got {mu}"
                )))
            }
            Strategy::TrimmedMean { beta } if !(0.0..0.5).contains(&beta) => {
                Err(FederateError::Strategy(format!(
                    "trimmed-mean beta must be in [0, 0.5), got {beta}"
                )))
            }
            Strategy::Krum { keep: 0, .. } => Err(FederateError::Strategy(
                "krum m must be at least 1".to_string(),
            )),
            _ => Ok(()),
        }
    }

    /// Checks that `n` accepted updates are enough.
    pub(crate) fn check_count(&self, n: usize) -> Result<(), FederateError> {
        let needed = match *self {
            Strategy::Krum { byzantine, keep } => (2 * byzantine + 3).max(keep + byzantine),
            _ => 1,
        };
        if n < needed {
            return Err(FederateError::TooFewUpdates {
                strategy: self.to_string(),
                needed,
                got: n,
            });
        }
        Ok(())
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::FedAvg | Strategy::FedMedian => f.write_str(self.name()),
            Strategy::FedProx { mu } => write!(f, "fedprox:mu={mu}"),
            Strategy::TrimmedMean { beta } => write!(f, "trimmed-mean:beta={beta}"),
            Strategy::Krum { byzantine, keep } => write!(f, "krum:f={byzantine},m={keep}"),
        }
    }
}

impl FromStr for Strategy {
    type Err = FederateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, params) = s.split_once(':').unwrap_or((s, ""));
        let mut pairs = Vec::new();
        for pair in params.split(',').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(FederateError::Strategy(format!(
                    "parameter '{pair}' of '{s}' is not key=value"
                )));
            };
            pairs.push((key.trim(), value.trim()));
        }
        let params = Params { strategy: s, pairs };
        let strategy = match name {
            "fedavg" => {
                params.allow(&[])?;
                Strategy::FedAvg
            }
            "fedprox" => {
                params.allow(&["mu"])?;
                Strategy::FedProx {
                    mu: params.required("mu", "number", "fedprox:mu=0.01")?,
                }
            }
            "fedmedian" => {
                params.allow(&[])?;
                Strategy::FedMedian
            }
            "trimmed-mean" => {
                params.allow(&["beta"])?;
                Strategy::TrimmedMean {
                    beta: params.required("beta", "number", "trimmed-mean:beta=0.1")?,
                }
            }
            "krum" => {
                params.allow(&["f", "m"])?;
                Strategy::Krum {
                    byzantine: params.required("f", "count", "krum:f=2")?,
                    keep: params.optional("m", "count")?.unwrap_or(1),
                }
            }
            other => {
                return Err(FederateError::Strategy(format!(
                    "unknown strategy '{other}'; expected fedavg, fedprox, fedmedian, trimmed-mean or krum"
                )))
            }
        };
        strategy.check()?;
        Ok(strategy)
    }
}

struct Params<'a> {
    strategy: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl Params<'_> {
    fn allow(&self, keys: &[&str]) -> Result<(), FederateError> {
        for (key, _) in &self.pairs {
            if !keys.contains(key) {
                let expected = if keys.is_empty() {
                    "it takes none".to_string()
                } else {
                    format!("expected {}", keys.join(", "))
                };
                return Err(FederateError::Strategy(format!(
                    "'{}' has unknown parameter '{key}'; {expected}",
                    self.strategy
                )));
            }
        }
        Ok(())
    }

    /// The value of `key` parsed as `T` (`what` names `T` in the error), if given.
    fn optional<T: FromStr>(&self, key: &str, what: &str) -> Result<Option<T>, FederateError> {
        let Some((_, value)) = self.pairs.iter().find(|(k, _)| *k == key) else {
            return Ok(None);
        };
        value.parse().map(Some).map_err(|_| {
            FederateError::Strategy(format!(
                "'{}': {key}={value} is not a valid {what}",
                self.strategy
            ))
        })
    }

    fn required<T: FromStr>(
        &self,
        key: &str,
        what: &str,
        example: &str,
    ) -> Result<T, FederateError> {
        self.optional(key, what)?.ok_or_else(|| {
            FederateError::Strategy(format!(
                "'{}' needs the parameter {key}, e.g. {example}",
                self.strategy
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_strategy() {
        for text in [
            "fedavg",
            "fedprox:mu=0.01",
            "fedmedian",
            "trimmed-mean:beta=0.1",
            "krum:f=2,m=3",
        ] {
            let strategy: Strategy = text.parse().unwrap();
            assert_eq!(strategy.to_string(), text);
        }
        assert_eq!(
            "krum:f=1".parse::<Strategy>().unwrap(),
            Strategy::Krum {
                byzantine: 1,
                keep: 1
            }
        );
        assert_eq!(
            "fedprox:mu=0.5".parse::<Strategy>().unwrap().proximal_mu(),
            Some(0.5)
        );
    }

    #[test]
    fn bad_strategies_say_what_is_expected() {
        let message = |s: &str| s.parse::<Strategy>().unwrap_err().to_string();
        assert_eq!(
            message("fedsgd"),
            "strategy: unknown strategy 'fedsgd'; expected fedavg, fedprox, fedmedian, trimmed-mean or krum"
        );
        assert_eq!(
            message("fedprox"),
            "strategy: 'fedprox' needs the parameter mu, e.g. fedprox:mu=0.01"
        );
        assert_eq!(
            message("trimmed-mean:beta=0.5"),
            "strategy: trimmed-mean beta must be in [0, 0.5), got 0.5"
        );
        assert_eq!(
            message("krum:f=x"),
            "strategy: 'krum:f=x': f=x is not a valid count"
        );
        assert_eq!(
            message("fedavg:mu=1"),
            "strategy: 'fedavg:mu=1' has unknown parameter 'mu'; it takes none"
        );
        assert_eq!(
            message("krum:f=1,m=0"),
            "strategy: krum m must be at least 1"
        );
        assert_eq!(
            message("fedprox:mu=-1"),
            "strategy: fedprox mu must be a finite number ≥ 0, got -1"
        );
    }

    #[test]
    fn krum_needs_2f_plus_3_updates() {
        let krum = Strategy::Krum {
            byzantine: 2,
            keep: 1,
        };
        assert!(krum.check_count(7).is_ok());
        assert_eq!(
            krum.check_count(6).unwrap_err().to_string(),
            "krum:f=2,m=1 needs at least 7 accepted updates, got 6"
        );
        let multi = Strategy::Krum {
            byzantine: 1,
            keep: 6,
        };
        assert!(multi.check_count(6).is_err());
        assert!(multi.check_count(7).is_ok());
    }
}
