//! Terminal output helpers: sizes, times and aligned tables.

use std::time::{Duration, UNIX_EPOCH};

/// `1.5 MiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Cores with at most two decimals and no sign on zero: `0`, `0.5`, `2`.
pub fn cpus(cores: f64) -> String {
    let rounded = (cores * 100.0).round() / 100.0;
    // `+ 0.0` turns a negative zero (an empty f64 sum) into a plain one.
    format!("{}", rounded + 0.0)
}

/// Milliseconds since the epoch as RFC 3339 (UTC, seconds).
pub fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Prints rows as left-aligned columns, the first row being the header.
pub fn table(rows: &[Vec<String>]) {
    print!("{}", table_text(rows));
}

/// [`table`]'s text, each line ending in a newline.
pub fn table_text(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpus_print_without_a_sign_on_zero() {
        assert_eq!(super::cpus(-0.0), "0");
        assert_eq!(super::cpus(0.0), "0");
        assert_eq!(super::cpus(2.0), "2");
        assert_eq!(super::cpus(0.1 + 0.2), "0.3");
        assert_eq!(super::cpus(1.25), "1.25");
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(super::bytes(0), "0 B");
        assert_eq!(super::bytes(1023), "1023 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(500 << 20), "500.0 MiB");
    }
}
