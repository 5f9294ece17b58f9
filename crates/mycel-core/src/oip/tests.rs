use bytes::Bytes;
use serde_json::{json, Value};

use super::*;
use crate::tensor::{Datatype, Tensor};

fn parse(json: Value) -> Result<InferRequest, OipError> {
    parse_request(Bytes::from(json.to_string()), None)
}

fn parse_err(json: Value) -> String {
    match parse(json.clone()) {
        Ok(_) => panic!("accepted {json}"),
        Err(e) => e.message,
    }
}

fn with_binary(header: &str, binary: &[u8]) -> Bytes {
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(binary);
    Bytes::from(body)
}

/// One input through JSON in and JSON out: the response's output.
fn round_trip(input: Value) -> Value {
    let request = parse(json!({"inputs": [input]})).unwrap();
    let encoded = encode_response("m", "1", None, &request.inputs, &request).unwrap();
    assert!(encoded.json_len.is_none());
    serde_json::from_slice::<Value>(&encoded.body).unwrap()["outputs"][0].clone()
}

fn strings(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

#[test]
fn every_datatype_round_trips_through_json() {
    let cases = [
        (
            json!({"name": "b", "datatype": "BOOL", "shape": [2], "data": [true, false]}),
            vec![1, 0],
        ),
        (
            json!({"name": "a", "datatype": "INT8", "shape": [2], "data": [-128, 127]}),
            vec![0x80, 0x7f],
        ),
        (
            json!({"name": "a", "datatype": "INT16", "shape": [1], "data": [-32768]}),
            (-32768i16).to_le_bytes().to_vec(),
        ),
        (
            json!({"name": "a", "datatype": "INT32", "shape": [1], "data": [2147483647]}),
            i32::MAX.to_le_bytes().to_vec(),
        ),
        (
            json!({"name": "a", "datatype": "INT64", "shape": [1], "data": [i64::MIN]}),
            i64::MIN.to_le_bytes().to_vec(),
        ),
        (
            json!({"name": "a", "datatype": "UINT8", "shape": [2], "data": [0, 255]}),
            vec![0, 255],
        ),
        (
            json!({"name": "a", "datatype": "UINT16", "shape": [1], "data": [65535]}),
            vec![255, 255],
        ),
        (
            json!({"name": "a", "datatype": "UINT32", "shape": [1], "data": [u32::MAX]}),
            u32::MAX.to_le_bytes().to_vec(),
        ),
        (
            json!({"name": "a", "datatype": "UINT64", "shape": [1], "data": [u64::MAX]}),
            u64::MAX.to_le_bytes().to_vec(),
        ),
        (
            json!({"name": "a", "datatype": "FP16", "shape": [2], "data": [1.5, -0.25]}),
            [half::f16::from_f32(1.5), half::f16::from_f32(-0.25)]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        (
            json!({"name": "a", "datatype": "FP32", "shape": [2], "data": [0.1, -3.0]}),
            [0.1f32, -3.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        (
            json!({"name": "a", "datatype": "FP64", "shape": [1], "data": [1e-300]}),
            1e-300f64.to_le_bytes().to_vec(),
        ),
        (
            json!({"name": "a", "datatype": "BYTES", "shape": [2], "data": ["héllo \"q\"\n", ""]}),
            strings(&["héllo \"q\"\n".as_bytes(), b""]),
        ),
    ];
    for (case, bytes) in cases {
        let request = parse(json!({"inputs": [case.clone()]})).unwrap();
        assert_eq!(request.inputs[0].data.as_ref(), &bytes[..], "{case}");
        let out = round_trip(case.clone());
        assert_eq!(out["name"], case["name"]);
        assert_eq!(out["datatype"], case["datatype"]);
        assert_eq!(out["shape"], case["shape"]);
        assert_eq!(out["data"], case["data"], "{case}");
    }
    // Floats are written as the shortest text that reads back to the same value.
    let out = round_trip(json!({"name": "a", "datatype": "FP32", "shape": [1], "data": [0.1]}));
    assert_eq!(out["data"][0].to_string(), "0.1");
    // Integers are numbers too.
    let out = round_trip(json!({"name": "a", "datatype": "FP64", "shape": [2], "data": [3, -2]}));
    assert_eq!(out["data"], json!([3.0, -2.0]));
}

#[test]
fn every_datatype_round_trips_through_binary() {
    let f16s: Vec<u8> = [1.0f32, -65504.0, 0.000061035156]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let cases: [(Datatype, Vec<u64>, Vec<u8>); 13] = [
        (Datatype::Bool, vec![3], vec![1, 0, 1]),
        (Datatype::Int8, vec![2], vec![0x80, 1]),
        (Datatype::Int16, vec![1, 2], vec![1, 2, 3, 4]),
        (Datatype::Int32, vec![1], vec![1, 2, 3, 0x84]),
        (Datatype::Int64, vec![1], i64::MIN.to_le_bytes().to_vec()),
        (Datatype::Uint8, vec![2, 2], vec![0, 1, 254, 255]),
        (Datatype::Uint16, vec![1], vec![0xff, 0xff]),
        (Datatype::Uint32, vec![1], u32::MAX.to_le_bytes().to_vec()),
        (Datatype::Uint64, vec![1], u64::MAX.to_le_bytes().to_vec()),
        (Datatype::Fp16, vec![3], f16s),
        (
            Datatype::Fp32,
            vec![2],
            [f32::NAN, -0.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        (
            Datatype::Fp64,
            vec![1],
            f64::INFINITY.to_le_bytes().to_vec(),
        ),
        (
            Datatype::Bytes,
            vec![3],
            strings(&[b"\xff\x00", b"", b"text"]),
        ),
    ];
    for (datatype, shape, bytes) in cases {
        let header = json!({
            "inputs": [{"name": "t", "datatype": datatype, "shape": shape,
                        "parameters": {"binary_data_size": bytes.len()}}],
            "parameters": {"binary_data_output": true},
        })
        .to_string();
        let request = parse_request(with_binary(&header, &bytes), Some(header.len())).unwrap();
        assert_eq!(request.inputs[0].datatype, datatype);
        assert_eq!(request.inputs[0].shape, shape);
        assert_eq!(request.inputs[0].data.as_ref(), &bytes[..]);
        let encoded = encode_response("m", "1", None, &request.inputs, &request).unwrap();
        let json_len = encoded.json_len.unwrap();
        let answer: Value = serde_json::from_slice(&encoded.body[..json_len]).unwrap();
        let out = &answer["outputs"][0];
        assert_eq!(out["datatype"], datatype.as_str());
        assert_eq!(out["shape"], json!(shape));
        assert_eq!(out["parameters"]["binary_data_size"], bytes.len());
        assert!(out.get("data").is_none());
        assert_eq!(&encoded.body[json_len..], &bytes[..]);
    }
}

#[test]
fn nested_and_flat_data_are_the_same_tensor() {
    let flat = parse(
        json!({"inputs": [{"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}),
    );
    let nested = parse(
        json!({"inputs": [{"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}),
    );
    let deep = parse(
        json!({"inputs": [{"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [[[1], [2]], [[3], [4]]]}]}),
    );
    assert_eq!(flat.clone().unwrap(), nested.unwrap());
    assert_eq!(flat.unwrap(), deep.unwrap());
    // Only the count is checked against the shape, not how the nesting is split.
    parse(json!({"inputs": [{"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2, 3], [4]]}]})).unwrap();
    let err = parse_err(
        json!({"inputs": [{"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3]]}]}),
    );
    assert_eq!(
        err,
        "inputs[0].data has 3 elements but shape [2, 2] holds 4"
    );
    // Errors inside nested data name the flat index.
    let err = parse_err(json!({"inputs": [
        {"name": "a", "datatype": "INT8", "shape": [1], "data": [1]},
        {"name": "b", "datatype": "UINT8", "shape": [2, 3], "data": [[1, 2, 3], [4, 300, 6]]},
    ]}));
    assert_eq!(
        err,
        "inputs[1].data[4] is 300; expected an integer from 0 to 255 for UINT8"
    );
}

#[test]
fn data_before_datatype_is_decoded_the_same() {
    let body = br#"{"inputs": [{"data": [[1.5, 2], [3, 4]], "shape": [2, 2], "name": "a", "datatype": "FP16"}]}"#;
    let request = parse_request(Bytes::from_static(body), None).unwrap();
    let expected: Vec<u8> = [1.5f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    assert_eq!(request.inputs[0].data.as_ref(), &expected[..]);
    let body =
        br#"{"inputs": [{"data": [1, "x"], "shape": [2], "name": "a", "datatype": "INT64"}]}"#;
    let err = parse_request(Bytes::from_static(body), None).unwrap_err();
    assert_eq!(
        err.message,
        "inputs[0].data[1] is the string \"x\"; expected an integer from \
         -9223372036854775808 to 9223372036854775807 for INT64"
    );
}

#[test]
fn binary_extension_with_two_inputs_and_a_json_one() {
    let header = json!({
        "id": "7",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
            {"name": "y", "datatype": "UINT8", "shape": [3], "data": [1, 2, 3]},
            {"name": "z", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}},
        ],
        "outputs": [{"name": "x", "parameters": {"binary_data": true}}, {"name": "y"}],
    })
    .to_string();
    let mut binary = [1.0f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat();
    binary.extend(strings(&[b"hi"]));
    let request = parse_request(with_binary(&header, &binary), Some(header.len())).unwrap();
    assert_eq!(request.id.as_deref(), Some("7"));
    assert_eq!(request.inputs[0].data.as_ref(), &binary[..8]);
    assert_eq!(request.inputs[1].data.as_ref(), &[1, 2, 3]);
    assert_eq!(request.inputs[2].data.as_ref(), &binary[8..]);
    assert_eq!(
        request.outputs,
        vec![
            RequestedOutput {
                name: "x".into(),
                binary: Some(true)
            },
            RequestedOutput {
                name: "y".into(),
                binary: None
            },
        ]
    );
    let encoded =
        encode_response("m", "1", request.id.as_deref(), &request.inputs, &request).unwrap();
    let json_len = encoded.json_len.unwrap();
    let answer: Value = serde_json::from_slice(&encoded.body[..json_len]).unwrap();
    assert_eq!(answer["id"], "7");
    assert_eq!(answer["outputs"].as_array().unwrap().len(), 2);
    assert_eq!(answer["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert!(answer["outputs"][0].get("data").is_none());
    assert_eq!(answer["outputs"][1]["data"], json!([1, 2, 3]));
    assert_eq!(&encoded.body[json_len..], &binary[..8]);

    // Binary for every output unless one says otherwise.
    let mut all = request.clone();
    all.outputs.clear();
    all.binary_output = true;
    let encoded = encode_response("m", "1", None, &request.inputs, &all).unwrap();
    assert_eq!(
        &encoded.body[encoded.json_len.unwrap()..],
        &[&binary[..8], &[1, 2, 3], &binary[8..]].concat()[..]
    );
    let mut except_y = all.clone();
    except_y.outputs = vec![
        RequestedOutput {
            name: "y".into(),
            binary: Some(false),
        },
        RequestedOutput {
            name: "x".into(),
            binary: None,
        },
    ];
    let encoded = encode_response("m", "1", None, &request.inputs, &except_y).unwrap();
    let json_len = encoded.json_len.unwrap();
    let answer: Value = serde_json::from_slice(&encoded.body[..json_len]).unwrap();
    assert_eq!(answer["outputs"][0]["name"], "y");
    assert_eq!(answer["outputs"][0]["data"], json!([1, 2, 3]));
    assert_eq!(answer["outputs"][1]["name"], "x");
    assert_eq!(&encoded.body[json_len..], &binary[..8]);

    // The sizes must account for exactly the bytes after the JSON.
    for (changed, got) in [
        ([&binary[..], b"!"].concat(), 15),
        (binary[1..].to_vec(), 13),
    ] {
        let err = parse_request(with_binary(&header, &changed), Some(header.len())).unwrap_err();
        assert_eq!(
            err.message,
            format!(
                "the inputs' parameters.binary_data_size add up to 14 bytes, but {got} bytes \
                 follow the {}-byte JSON (Inference-Header-Content-Length)",
                header.len()
            )
        );
    }
    let err = parse_request(Bytes::from(header.clone()), None).unwrap_err();
    assert!(
        err.message
            .contains("no Inference-Header-Content-Length header"),
        "{err}"
    );
    let err = parse_request(with_binary(&header, &binary), None).unwrap_err();
    assert!(
        err.message.contains("trailing characters")
            && err
                .message
                .contains("needs the Inference-Header-Content-Length"),
        "{err}"
    );
}

/// The bytes `tritonclient.http` sends: `rapidjson.dumps` of the request (compact,
/// keys in insertion order: name, shape, datatype, parameters), then each binary
/// input's raw bytes; requested outputs carry `binary_data`, and with none requested
/// the top-level `binary_data_output` is set instead.
#[test]
fn a_request_as_tritonclient_sends_it() {
    let json = concat!(
        r#"{"id":"42","inputs":["#,
        r#"{"name":"INPUT0","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}},"#,
        r#"{"name":"INPUT1","shape":[1,2],"datatype":"BYTES","parameters":{"binary_data_size":13}},"#,
        r#"{"name":"INPUT2","shape":[2],"datatype":"INT32","data":[7,-7]}],"#,
        r#""outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}},"#,
        r#"{"name":"OUTPUT1","parameters":{"binary_data":false}}],"#,
        r#""parameters":{"priority":1,"timeout":1000}}"#,
    );
    let mut binary: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    binary.extend(strings(&[b"hello", b""]));
    assert_eq!(binary.len(), 16 + 13);
    let request = parse_request(with_binary(json, &binary), Some(json.len())).unwrap();
    assert_eq!(request.id.as_deref(), Some("42"));
    assert_eq!(request.inputs.len(), 3);
    assert_eq!(request.inputs[0].shape, vec![1, 4]);
    assert_eq!(request.inputs[1].datatype, Datatype::Bytes);
    assert_eq!(request.inputs[1].data.as_ref(), &binary[16..]);
    assert_eq!(
        request.inputs[2].data.as_ref(),
        &[7i32.to_le_bytes(), (-7i32).to_le_bytes()].concat()[..]
    );
    assert!(!request.binary_output);
    assert_eq!(request.parameters["priority"], 1);

    let outputs = [
        Tensor {
            name: "OUTPUT1".into(),
            datatype: Datatype::Int64,
            shape: vec![1],
            data: Bytes::from(5i64.to_le_bytes().to_vec()),
        },
        Tensor {
            name: "OUTPUT0".into(),
            datatype: Datatype::Fp32,
            shape: vec![1, 2],
            data: Bytes::from(
                [0.5f32, 1.5]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        },
    ];
    let encoded = encode_response("simple", "3", Some("42"), &outputs, &request).unwrap();
    let json_len = encoded.json_len.unwrap();
    assert_eq!(
        std::str::from_utf8(&encoded.body[..json_len]).unwrap(),
        r#"{"model_name":"simple","model_version":"3","id":"42","outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}},{"name":"OUTPUT1","datatype":"INT64","shape":[1],"data":[5]}]}"#
    );
    assert_eq!(&encoded.body[json_len..], &outputs[1].data[..]);

    // No outputs named: tritonclient asks for all of them, in binary.
    let json = concat!(
        r#"{"inputs":[{"name":"INPUT0","shape":[2],"datatype":"UINT8","parameters":{"binary_data_size":2}}],"#,
        r#""parameters":{"binary_data_output":true}}"#,
    );
    let request = parse_request(with_binary(json, &[9, 8]), Some(json.len())).unwrap();
    assert!(request.binary_output && request.outputs.is_empty());
    let encoded = encode_response("simple", "3", None, &outputs, &request).unwrap();
    let json_len = encoded.json_len.unwrap();
    assert_eq!(
        std::str::from_utf8(&encoded.body[..json_len]).unwrap(),
        r#"{"model_name":"simple","model_version":"3","outputs":[{"name":"OUTPUT1","datatype":"INT64","shape":[1],"parameters":{"binary_data_size":8}},{"name":"OUTPUT0","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}}]}"#
    );
    assert_eq!(
        &encoded.body[json_len..],
        &[&outputs[0].data[..], &outputs[1].data[..]].concat()[..]
    );
}

#[test]
fn rejections_name_the_field_and_what_was_expected() {
    let x = |extra: Value| {
        let mut input = json!({"name": "a", "datatype": "FP32", "shape": [1], "data": [1]});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                input.as_object_mut().unwrap().remove(k);
            } else {
                input[k] = v.clone();
            }
        }
        json!({"inputs": [input]})
    };
    let cases = [
        (json!({}), "inputs is missing"),
        (json!({"inputs": {}}), "expected inputs as an array"),
        (json!({"inputs": [5]}), "expected inputs[0] as an object"),
        (json!({"inputs": [], "id": 5}), "id must be a string, got 5"),
        (
            json!({"inputs": [], "parameters": []}),
            "parameters must be an object",
        ),
        (
            json!({"inputs": [], "parameters": {"binary_data_output": 1}}),
            "parameters.binary_data_output must be true or false, got 1",
        ),
        (x(json!({"name": null})), "inputs[0].name is missing"),
        (
            x(json!({"name": ""})),
            "inputs[0].name must be a non-empty string",
        ),
        (
            x(json!({"datatype": null})),
            "inputs[0].datatype is missing",
        ),
        (
            x(json!({"datatype": "FLOAT"})),
            "inputs[0].datatype: unknown datatype \"FLOAT\"; expected one of BOOL, INT8",
        ),
        (
            x(json!({"datatype": 32})),
            "inputs[0].datatype must be a string",
        ),
        (
            x(json!({"shape": null})),
            "inputs[0].shape is missing; expected an array",
        ),
        (
            x(json!({"shape": 1})),
            "inputs[0].shape must be an array such as [1, 3], got 1",
        ),
        (
            x(json!({"shape": [1, -1]})),
            "inputs[0].shape[1] is -1; expected a non-negative integer",
        ),
        (x(json!({"shape": [1.5]})), "inputs[0].shape[0] is 1.5"),
        (
            x(json!({"shape": [4294967296u64, 4294967296u64]})),
            "inputs[0].shape [4294967296, 4294967296] holds more elements than fit in 64 bits",
        ),
        (
            x(json!({"shape": [2]})),
            "inputs[0].data has 1 elements but shape [2] holds 2",
        ),
        (
            x(json!({"data": null})),
            "inputs[0].data is missing; give data, or parameters.binary_data_size",
        ),
        (
            x(json!({"data": 1})),
            "inputs[0].data must be an array (flat or nested), got 1",
        ),
        (
            x(json!({"data": [null]})),
            "inputs[0].data[0] is null; expected a number for FP32",
        ),
        (x(json!({"data": [{}]})), "inputs[0].data[0] is an object"),
        (
            x(json!({"data": ["1"]})),
            "inputs[0].data[0] is the string \"1\"; expected a number",
        ),
        (
            x(json!({"parameters": {"binary_data_size": 4}})),
            "inputs[0] has both data and parameters.binary_data_size; give one",
        ),
        (
            x(json!({"data": null, "parameters": {"binary_data_size": -4}})),
            "inputs[0].parameters.binary_data_size is -4; expected a byte count",
        ),
        (
            x(json!({"data": null, "parameters": {"shared_memory_region": "r"}})),
            "shared memory is not supported",
        ),
        (
            x(json!({"parameters": 3})),
            "inputs[0].parameters must be an object, got 3",
        ),
        (
            x(json!({"datatype": "UINT8", "data": [300]})),
            "inputs[0].data[0] is 300; expected an integer from 0 to 255 for UINT8",
        ),
        (
            x(json!({"datatype": "INT8", "data": [-129]})),
            "inputs[0].data[0] is -129; expected an integer from -128 to 127 for INT8",
        ),
        (
            x(json!({"datatype": "UINT64", "data": [-1]})),
            "inputs[0].data[0] is -1",
        ),
        (
            x(json!({"datatype": "INT64", "data": [1e20]})),
            "inputs[0].data[0] is 100000000000000000000; expected an integer",
        ),
        (
            x(json!({"datatype": "INT32", "data": [1.0]})),
            "inputs[0].data[0] is 1; expected an integer",
        ),
        (
            x(json!({"datatype": "BOOL", "data": [1]})),
            "inputs[0].data[0] is 1; expected true or false for BOOL",
        ),
        (
            x(json!({"datatype": "BYTES", "data": [1]})),
            "inputs[0].data[0] is 1; expected a string for BYTES",
        ),
        (
            x(json!({"datatype": "FP16", "data": [true]})),
            "inputs[0].data[0] is true; expected a number for FP16",
        ),
        (
            json!({"inputs": [
                {"name": "a", "datatype": "INT8", "shape": [1], "data": [1]},
                {"name": "a", "datatype": "INT8", "shape": [1], "data": [1]}]}),
            "inputs[1].name \"a\" is already the name of inputs[0]",
        ),
        (
            x(json!({"data": null, "parameters": {"binary_data_size": 4}})),
            "add up to 4 bytes, but the request has no Inference-Header-Content-Length header",
        ),
        (
            json!({"inputs": [], "outputs": {}}),
            "outputs must be an array",
        ),
        (
            json!({"inputs": [], "outputs": [1]}),
            "outputs[0] must be an object",
        ),
        (
            json!({"inputs": [], "outputs": [{}]}),
            "outputs[0].name is missing",
        ),
        (
            json!({"inputs": [], "outputs": [{"name": "a"}, {"name": "a"}]}),
            "outputs[1].name \"a\" is requested twice",
        ),
        (
            json!({"inputs": [], "outputs": [{"name": "a", "parameters": {"binary_data": "yes"}}]}),
            "outputs[0].parameters.binary_data must be true or false",
        ),
        (
            json!({"inputs": [], "outputs": [{"name": "a", "parameters": {"classification": 3}}]}),
            "outputs[0].parameters.classification is not supported",
        ),
    ];
    for (body, expected) in cases {
        let err = parse_err(body.clone());
        assert!(
            err.contains(expected),
            "{body}\n  got: {err}\n  want: {expected}"
        );
    }
    let raw = [
        (&br#"{"inputs": ["#[..], "not valid JSON: EOF"),
        (br#"[1]"#, "not an inference request: invalid type: sequence, expected a JSON object with \"inputs\""),
        (br#"{"inputs": [], "inputs": []}"#, "inputs appears twice"),
        (br#"{"inputs": [{"name": "a", "name": "b"}]}"#, "inputs[0].name appears twice"),
        (b"", "not valid JSON"),
    ];
    for (body, expected) in raw {
        let err = parse_request(Bytes::from_static(body), None).unwrap_err();
        assert!(
            err.message.contains(expected),
            "{}: {err}",
            String::from_utf8_lossy(body)
        );
    }
    let err = parse_request(Bytes::from_static(b"{}"), Some(10)).unwrap_err();
    assert_eq!(
        err.message,
        "Inference-Header-Content-Length is 10 but the body has only 2 bytes"
    );
    let err = parse_request(Bytes::from_static(b"{\"inputs\": []}xyz"), Some(14)).unwrap_err();
    assert!(
        err.message
            .contains("add up to 0 bytes, but 3 bytes follow"),
        "{err}"
    );
    // Binary data that does not fit the shape.
    let header = r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","parameters":{"binary_data_size":20}}]}"#;
    let err = parse_request(with_binary(header, &[0; 20]), Some(header.len())).unwrap_err();
    assert_eq!(
        err.message,
        "inputs[0]: tensor \"x\": shape [2, 3] of FP32 needs 24 bytes, got 20"
    );
    let header = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"BOOL","parameters":{"binary_data_size":2}}]}"#;
    let err = parse_request(with_binary(header, &[1, 7]), Some(header.len())).unwrap_err();
    assert!(
        err.message.contains("BOOL element 1 is 7, expected 0 or 1"),
        "{err}"
    );
}

/// A small deterministic generator, so the malformed bodies are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    let header = r#"{"id":"1","inputs":[{"name":"x","shape":[1,2],"datatype":"BYTES","parameters":{"binary_data_size":13}},{"name":"y","shape":[2,2],"datatype":"FP16","data":[[1,2],[3,4]]},{"name":"z","datatype":"UINT8","shape":[2],"data":[1,2]}],"outputs":[{"name":"x","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":false}}"#;
    let binary = strings(&[b"hello", b""]);
    let body = with_binary(header, &binary);
    parse_request(body.clone(), Some(header.len())).unwrap();
    for cut in 0..body.len() {
        let cut_body = body.slice(..cut);
        let _ = parse_request(cut_body.clone(), Some(header.len().min(cut)));
        let _ = parse_request(cut_body.clone(), Some(cut));
        let _ = parse_request(cut_body, None);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"[]{}\",:-0123456789.eE truefalsnul\\\x00\xff";
    for _ in 0..20_000 {
        let mut mutated = body.to_vec();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() % mutated.len() as u64) as usize;
            let byte = alphabet[(rng.next() % alphabet.len() as u64) as usize];
            match rng.next() % 3 {
                0 => mutated[at] = byte,
                1 => mutated.insert(at, byte),
                _ => {
                    mutated.remove(at);
                }
            }
        }
        let json_len = match rng.next() % 3 {
            0 => None,
            1 => Some(header.len()),
            _ => Some((rng.next() % (mutated.len() as u64 + 2)) as usize),
        };
        let _ = parse_request(Bytes::from(mutated), json_len);
    }
    let nasty: Vec<(Vec<u8>, Option<usize>)> = vec![
        ("[".repeat(100_000).into_bytes(), None),
        (format!(r#"{{"inputs":[{{"name":"a","datatype":"FP32","shape":[1],"data":{}1{}}}]}}"#, "[".repeat(5000), "]".repeat(5000)).into_bytes(), None),
        (br#"{"inputs":[{"name":"a","datatype":"FP32","shape":[4294967296,4294967296],"data":[1]}]}"#.to_vec(), None),
        (br#"{"inputs":[{"name":"a","datatype":"FP64","shape":[1099511627776],"data":[1,2]}]}"#.to_vec(), None),
        (br#"{"inputs":[{"name":"a","datatype":"BYTES","shape":[1099511627776],"data":["x"]}]}"#.to_vec(), None),
        (br#"{"inputs":[{"name":"a","datatype":"FP32","shape":[18446744073709551615],"parameters":{"binary_data_size":18446744073709551615}}]}"#.to_vec(), Some(132)),
        (br#"{"inputs":[{"name":"a","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":18446744073709551615}},{"name":"b","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":2}}]}"#.to_vec(), None),
        (br#"{"inputs":[{"name":"a","datatype":"UINT8","shape":[0,4294967296,4294967296],"data":[]}]}"#.to_vec(), None),
        (b"{\"inputs\":[{\"name\":\"\xff\"}]}".to_vec(), None),
        (b"{}".to_vec(), Some(usize::MAX)),
        (b"\xef\xbb\xbf{}".to_vec(), None),
    ];
    for (body, json_len) in nasty {
        let _ = parse_request(Bytes::from(body), json_len);
    }
    // An empty tensor whose other dimensions no framework could index is refused here,
    // not inside the model.
    let err = parse(json!({"inputs": [{"name": "a", "datatype": "UINT8", "shape": [0, 4294967296u64, 4294967296u64], "data": []}]})).unwrap_err();
    assert!(
        err.message.contains("[0, 4294967296, 4294967296]"),
        "{err:?}"
    );
    let request = parse(json!({"inputs": [{"name": "a", "datatype": "UINT8", "shape": [0, 65536, 65536], "data": []}]})).unwrap();
    assert!(request.inputs[0].data.is_empty());
}

#[test]
fn encoding_checks_what_it_is_asked_for() {
    let bytes = Tensor {
        name: "s".into(),
        datatype: Datatype::Bytes,
        shape: vec![1],
        data: Bytes::from(strings(&[b"\xff\xfe"])),
    };
    let request = parse(json!({"inputs": [], "outputs": [{"name": "nope"}]})).unwrap();
    let err = encode_response("m", "1", None, std::slice::from_ref(&bytes), &request).unwrap_err();
    assert_eq!(
        err.message,
        "the model has no output \"nope\"; it returned s"
    );
    let all = parse(json!({"inputs": []})).unwrap();
    let err = encode_response("m", "1", None, std::slice::from_ref(&bytes), &all).unwrap_err();
    assert!(
        err.message.contains("not UTF-8") && err.message.contains("binary_data"),
        "{err}"
    );
    let mut binary = all.clone();
    binary.binary_output = true;
    let encoded = encode_response("m", "1", None, std::slice::from_ref(&bytes), &binary).unwrap();
    assert_eq!(&encoded.body[encoded.json_len.unwrap()..], &bytes.data[..]);

    let short = Tensor {
        name: "f".into(),
        datatype: Datatype::Fp32,
        shape: vec![2],
        data: Bytes::from_static(&[0; 4]),
    };
    let err = encode_response("m", "1", None, &[short], &all).unwrap_err();
    assert!(err.message.contains("output \"f\" is malformed"), "{err}");

    let special = Tensor {
        name: "q\"\n".into(),
        datatype: Datatype::Fp64,
        shape: vec![4],
        data: Bytes::from(
            [f64::NAN, f64::NEG_INFINITY, -0.0, 1e300]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
    };
    let encoded = encode_response("m\"", "v", Some("i\\d"), &[special], &all).unwrap();
    let answer: Value = serde_json::from_slice(&encoded.body).unwrap();
    assert_eq!(answer["model_name"], "m\"");
    assert_eq!(answer["id"], "i\\d");
    assert_eq!(answer["outputs"][0]["name"], "q\"\n");
    assert_eq!(
        answer["outputs"][0]["data"],
        json!([null, null, -0.0, 1e300])
    );

    let empty = Tensor {
        name: "e".into(),
        datatype: Datatype::Int32,
        shape: vec![0, 3],
        data: Bytes::new(),
    };
    let encoded = encode_response("m", "1", None, &[empty], &all).unwrap();
    let answer: Value = serde_json::from_slice(&encoded.body).unwrap();
    assert_eq!(answer["outputs"][0]["data"], json!([]));
    assert!(answer.get("id").is_none());
}
