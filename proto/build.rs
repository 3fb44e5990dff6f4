//! Compiles `proto/fleet/v1/*.proto` (and Prometheus' remote-write messages,
//! `proto/prometheus/remote.proto`, and the part of etcd's API in `proto/etcd/rpc.proto`) with the
//! vendored protoc, so a fresh machine needs nothing
//! installed by hand, and writes the descriptor set that the coordinator's reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["proto/fleet/v1/agent.proto", "proto/fleet/v1/control.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .file_descriptor_set_path(out_dir.join("fleet_v1_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    // Prometheus' remote-write messages (messages only: the coordinator POSTs them over HTTP).
    let remote = "proto/prometheus/remote.proto";
    println!("cargo:rerun-if-changed={remote}");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.compile_protos(&[remote], &["proto"])?;
    // The part of etcd's v3 API the coordinators use for several coordinators (clients only).
    let etcd = "proto/etcd/rpc.proto";
    println!("cargo:rerun-if-changed={etcd}");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().build_server(false).compile_with_config(config, &[etcd], &["proto"])?;
    Ok(())
}
