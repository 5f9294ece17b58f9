//! How long a request may take: the gateway's limit, or less where the client asks.

use std::time::Duration;

use serde_json::{Map, Value};

/// The request's time limit: the client's `parameters.timeout` in microseconds (what
/// Triton's clients send), but never more than the gateway's `limit`.
pub fn of_request(parameters: &Map<String, Value>, limit: Duration) -> Result<Duration, String> {
    let Some(value) = parameters.get("timeout") else {
        return Ok(limit);
    };
    match value.as_u64() {
        Some(0) | None => Err(format!(
            "parameters.timeout is {value}; expected a whole number of microseconds above 0"
        )),
        Some(us) => Ok(Duration::from_micros(us).min(limit)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parameters(value: Value) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("timeout".into(), value);
        map
    }

    #[test]
    fn the_client_may_ask_for_less_never_for_more() {
        let limit = Duration::from_secs(60);
        assert_eq!(of_request(&Map::new(), limit).unwrap(), limit);
        assert_eq!(
            of_request(&parameters(500_000.into()), limit).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            of_request(&parameters(3_600_000_000u64.into()), limit).unwrap(),
            limit
        );
    }

    #[test]
    fn a_timeout_that_is_not_a_positive_count_is_refused() {
        let limit = Duration::from_secs(60);
        for bad in [
            Value::from(0),
            Value::from(-5),
            Value::from("1s"),
            Value::from(1.5),
        ] {
            let e = of_request(&parameters(bad.clone()), limit).unwrap_err();
            assert!(e.contains("microseconds"), "{bad}: {e}");
        }
    }
}
