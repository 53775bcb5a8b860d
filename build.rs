//! Generates the Rust code of the public contract from `proto/` with a pure-Rust
//! protobuf compiler, so a fresh machine needs no system `protoc`.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/selfieauth/v1/selfie_auth.proto",
        "proto/selfieauth/v1/error_reason.proto",
        // Not imported by the contract; vendored so callers can decode ErrorInfo,
        // BadRequest and the other details, and served by reflection with it.
        "proto/google/rpc/error_details.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptor_set = protox::compile(protos, ["proto"])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by gRPC reflection so grpcurl and friends need no local .proto files.
    std::fs::write(
        out_dir.join("selfieauth_descriptor.bin"),
        descriptor_set.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .extern_path(".google.rpc", "::tonic_types::pb")
        .bytes(".selfieauth.v1.SubmitAuthenticationRequest")
        .bytes(".selfieauth.v1.EnrollUserRequest")
        // Image bytes must never reach a log: these messages get a redacting Debug.
        .skip_debug([
            "selfieauth.v1.SubmitAuthenticationRequest",
            "selfieauth.v1.EnrollUserRequest",
        ])
        // Undecodable requests are INVALID_ARGUMENT, not prost's INTERNAL.
        .codec_path("crate::grpc::codec::StrictCodec")
        .compile_fds(descriptor_set)?;
    Ok(())
}
