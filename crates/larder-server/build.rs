//! Compiles the gRPC contract in `proto/` with protox (pure Rust: no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let proto_file = "../../proto/larder/serving/v1/serving.proto";
    println!("cargo:rerun-if-changed={proto_file}");
    let descriptors = protox::compile([proto_file], [proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
