//! How fast the gateway reads OIP JSON requests: a 224×224×3 UINT8 image and the same
//! image as normalized FP32, against serde_json reading the same bytes into a `Value`.
//!
//!     cargo bench -p mycel-core --bench oip_json

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A request with one input of `n` elements written by `element`.
fn request(datatype: &str, n: usize, element: impl Fn(usize) -> String) -> Bytes {
    let data: Vec<String> = (0..n).map(element).collect();
    Bytes::from(format!(
        r#"{{"inputs":[{{"name":"image","shape":[1,224,224,3],"datatype":"{datatype}","data":[{}]}}]}}"#,
        data.join(",")
    ))
}

/// The best time of `f` over a second or so of runs.
fn best(f: impl Fn()) -> Duration {
    let mut best = Duration::MAX;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best
}

fn main() {
    let n = 224 * 224 * 3;
    // A fixed xorshift sequence, so every run reads the same pixels.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let pixels: Vec<u8> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let cases = [
        ("UINT8", request("UINT8", n, |i| pixels[i].to_string())),
        (
            "FP32",
            request("FP32", n, |i| {
                format!("{:.5}", (f32::from(pixels[i]) / 255.0 - 0.45) / 0.226)
            }),
        ),
    ];
    println!("| input | JSON bytes | mycel parse_request | serde_json::Value | ratio |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, body) in cases {
        let ours = best(|| {
            let parsed = mycel_core::oip::parse_request(body.clone(), None);
            black_box(parsed.is_ok());
        });
        let value = best(|| {
            let parsed = serde_json::from_slice::<serde_json::Value>(&body);
            black_box(parsed.is_ok());
        });
        println!(
            "| {name} 1×224×224×3 | {} | {:.2} ms ({:.0} MB/s) | {:.2} ms | {:.1}× |",
            body.len(),
            ours.as_secs_f64() * 1e3,
            body.len() as f64 / ours.as_secs_f64() / 1e6,
            value.as_secs_f64() * 1e3,
            value.as_secs_f64() / ours.as_secs_f64()
        );
    }
}
