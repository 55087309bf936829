//! Compiles the gRPC contract in `proto/` with protox (pure Rust: no `protoc` needed).
//!
//! Twice: the messages and the client into `$OUT_DIR`, and the server into `$OUT_DIR/server`,
//! with the messages taken from the first and `GetOnlineFeaturesResponse` mapped to a type
//! that the server encodes straight from the stored rows (`grpc::EncodedOnlineFeaturesResponse`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let proto_file = "../../proto/larder/serving/v1/serving.proto";
    println!("cargo:rerun-if-changed={proto_file}");
    let descriptors = protox::compile([proto_file], [proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors.clone())?;
    let server_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&server_dir)
        .extern_path(".larder.serving.v1", "crate::grpc::proto")
        .extern_path(
            ".larder.serving.v1.GetOnlineFeaturesResponse",
            "crate::grpc::EncodedOnlineFeaturesResponse",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
