//! The fast path against the careful one, over random requests valid and not.

use bytes::Bytes;

use super::super::{header, parse_request_with};
use crate::testing::Lcg;

const DATATYPES: [&str; 13] = [
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16",
    "FP32", "FP64", "BYTES",
];

/// Elements any datatype might be sent, most of them wrong for some datatype or at
/// the edge of what serde_json reads as an integer, a float or an error.
const ODD: [&str; 34] = [
    "-0",
    "-0.0",
    "0.0",
    "01",
    "1.",
    ".5",
    "1e",
    "1e+",
    "1E5",
    "1e400",
    "-1e400",
    "1e-400",
    "2.5e-320",
    "1.7976931348623157e308",
    "3.4028235e38",
    "65504.1",
    "99999999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1.5",
    "true",
    "false",
    "null",
    "\"x\"",
    "{}",
    "NaN",
    "Infinity",
    "+1",
    "- 1",
    "0x10",
    "128",
    "-129",
];

const SPACE: [&str; 5] = ["", "", " ", "\n", "\t "];

/// One valid element of `datatype`, and whether the fast path should take it.
fn element(rng: &mut Lcg, datatype: &str) -> (String, bool) {
    let int = |rng: &mut Lcg, min: i128, max: i128| {
        let n = match rng.below(4) {
            0 => min,
            1 => max,
            _ => min + i128::from(rng.below(1 << 20)) % (max - min + 1),
        };
        // `-0` reads as a float in serde_json: a case of its own.
        (n.to_string(), true)
    };
    match datatype {
        "BOOL" => (rng.pick(&["true", "false"]).to_owned(), true),
        "INT8" => int(rng, i8::MIN.into(), i8::MAX.into()),
        "INT16" => int(rng, i16::MIN.into(), i16::MAX.into()),
        "INT32" => int(rng, i32::MIN.into(), i32::MAX.into()),
        "INT64" => int(rng, i64::MIN.into(), i64::MAX.into()),
        "UINT8" => int(rng, 0, u8::MAX.into()),
        "UINT16" => int(rng, 0, u16::MAX.into()),
        "UINT32" => int(rng, 0, u32::MAX.into()),
        "UINT64" => int(rng, 0, u64::MAX.into()),
        "BYTES" => ("\"abc\"".to_owned(), false),
        _ => {
            let sign = if rng.chance(30) { "-" } else { "" };
            let whole = rng.below(1 << 24);
            let mut text = format!("{sign}{whole}");
            if rng.chance(60) {
                text += &format!(
                    ".{:0width$}",
                    rng.below(1 << 30),
                    width = rng.below(12) as usize
                );
            }
            if rng.chance(30) {
                let e = rng.below(80) as i64 - 40;
                let mark = rng.pick(&["e", "E", "e+"]);
                let mark = if e < 0 { &mark[..1] } else { mark };
                text += &format!("{mark}{e}");
            }
            if text
                .trim_start_matches('-')
                .trim_start_matches('0')
                .is_empty()
                || text == "-0"
                || text.starts_with("-0e")
                || text.starts_with("-0E")
            {
                return (text, false);
            }
            // Integers past 2^53 and exotic exponents are still numbers; both paths agree.
            (text, true)
        }
    }
}

/// A request body, and whether the fast path should take it.
fn request(rng: &mut Lcg) -> (String, bool) {
    let mut plain = true;
    let sp = |rng: &mut Lcg| rng.pick(&SPACE).to_owned();
    let mut inputs = Vec::new();
    for index in 0..1 + rng.below(3) {
        let datatype = if rng.chance(3) {
            "FP99"
        } else {
            rng.pick(&DATATYPES)
        };
        // [rows, cols] or [n]
        let shape: Vec<u64> = if rng.chance(50) {
            vec![1 + rng.below(3), rng.below(5)]
        } else {
            vec![rng.below(6)]
        };
        let count: u64 = shape.iter().product();
        let mut elements = Vec::new();
        let extra = if rng.chance(5) { 1 } else { 0 };
        for _ in 0..count + extra {
            let (text, ok) = if rng.chance(4) {
                (rng.pick(&ODD).to_owned(), false)
            } else {
                element(rng, datatype)
            };
            plain &= ok;
            elements.push(text);
        }
        plain &= extra == 0 && datatype != "FP99" && datatype != "BYTES";
        // Nested by rows when the shape has two dimensions, else flat.
        let data = if shape.len() == 2 && count > 0 && rng.chance(70) {
            let cols = shape[1] as usize;
            let rows: Vec<String> = elements
                .chunks(cols)
                .map(|row| format!("[{}]", row.join(&format!(",{}", sp(rng)))))
                .collect();
            format!("[{}{}]", sp(rng), rows.join(","))
        } else {
            format!(
                "[{}{}{}]",
                sp(rng),
                elements.join(&format!("{},", sp(rng))),
                sp(rng)
            )
        };
        let data = match rng.below(40) {
            0 => {
                plain = false;
                data.replacen(']', ",]", 1)
            }
            1 => {
                plain = false;
                format!("{data}]")
            }
            2 => {
                plain = false;
                data.replacen(']', "}", 1)
            }
            3 => {
                plain = false;
                data.replacen(',', " ", 1)
            }
            _ => data,
        };
        let shape = format!("{shape:?}");
        let mut fields = vec![
            format!("\"name\":{}\"in{index}\"", sp(rng)),
            format!("\"datatype\":\"{datatype}\""),
            format!("\"shape\":{}{shape}", sp(rng)),
            format!("\"data\":{}{data}", sp(rng)),
        ];
        match rng.below(30) {
            0 => {
                plain = false;
                fields[3] = fields[3].replacen("data", "d\\u0061ta", 1);
            }
            1 => {
                plain = false;
                fields.push(format!("\"data\":{data}"));
            }
            2 => fields.push("\"parameters\":{\"data\":[1,2],\"x\":\"]}\\\"\"}".into()),
            3 => {
                plain = false;
                fields.push("\"parameters\":{\"binary_data_size\":4}".into());
            }
            _ => {}
        }
        // Any order: sorted keys put data before datatype.
        for i in (1..fields.len()).rev() {
            fields.swap(i, rng.below(i as u64 + 1) as usize);
        }
        inputs.push(format!("{{{}}}", fields.join(&format!(",{}", sp(rng)))));
    }
    let mut members = vec![format!("\"inputs\":{}[{}]", sp(rng), inputs.join(","))];
    if rng.chance(30) {
        members.push("\"id\":\"r\\\"1\"".into());
    }
    if rng.chance(20) {
        members
            .push("\"outputs\":[{\"name\":\"out\",\"parameters\":{\"binary_data\":true}}]".into());
    }
    for i in (1..members.len()).rev() {
        members.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut body = format!("{}{{{}}}{}", sp(rng), members.join(","), sp(rng));
    if rng.chance(3) {
        plain = false;
        body.truncate(rng.below(body.len() as u64) as usize);
    }
    (body, plain)
}

#[test]
fn the_fast_path_answers_exactly_as_the_careful_one() {
    let mut taken = 0;
    for seed in 0..4000 {
        let mut rng = Lcg(seed);
        let (body, plain) = request(&mut rng);
        let fast = parse_request_with(Bytes::from(body.clone()), None, true);
        let careful = parse_request_with(Bytes::from(body.clone()), None, false);
        assert_eq!(fast, careful, "seed {seed}: {body}");
        if plain {
            assert!(
                header::parse_fast(body.as_bytes()).is_some(),
                "seed {seed}: the fast path gave up on {body}"
            );
            taken += 1;
        }
    }
    // Enough plain requests that the fast path is what was compared.
    assert!(taken > 1000, "only {taken} requests took the fast path");
}

#[test]
fn an_image_takes_the_fast_path() {
    let pixels: Vec<String> = (0..3 * 8 * 8).map(|i| (i % 256).to_string()).collect();
    let body = format!(
        r#"{{"inputs":[{{"name":"image","shape":[1,3,8,8],"datatype":"UINT8","data":[{}]}}]}}"#,
        pixels.join(",")
    );
    assert!(header::parse_fast(body.as_bytes()).is_some());
    let request = parse_request_with(Bytes::from(body), None, true).unwrap();
    let expected: Vec<u8> = (0..3 * 8 * 8).map(|i| (i % 256) as u8).collect();
    assert_eq!(request.inputs[0].data, expected);
}
