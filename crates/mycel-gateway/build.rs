//! Generates the OIP gRPC service from proto/inference.proto, with a protobuf compiler
//! written in Rust (protox), so that building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/inference.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        // Tensor bytes are handed on without a copy.
        .bytes(".inference")
        .compile_fds(descriptors)?;
    Ok(())
}
