//! Every input kept under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`,
//! through its target: the crashes the fuzzers found stay fixed, and the seeds still
//! reach the code they were written to reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn every_kept_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut replayed = 0;
    for (target, run) in mycel_fuzz::TARGETS {
        for kind in ["seeds", "regressions"] {
            let dir = fuzz.join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                eprintln!("{}", path.display());
                run(&input);
                replayed += 1;
            }
        }
    }
    // Every target has seeds: a target whose directory went missing would pass silently.
    assert!(replayed >= mycel_fuzz::TARGETS.len(), "{replayed} inputs");
}

#[test]
fn the_seeds_are_accepted_where_they_should_be() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let update = fuzz.join("safetensors_update/valid");
    assert!(mycel_federate::GlobalModel::open(&update).is_ok());
    let request = std::fs::read(fuzz.join("oip_request/json")).unwrap();
    let body = bytes::Bytes::copy_from_slice(&request[2..]);
    assert!(mycel_core::oip::parse_request(body, None).is_ok());
    let manifest = std::fs::read_to_string(fuzz.join("manifest/full")).unwrap();
    assert!(mycel_core::Manifest::parse(&manifest).is_ok());
}
