//! fleet's wire contract: the generated `fleet.v1` messages and gRPC clients and servers,
//! plus the encoded descriptor set the coordinator serves through gRPC reflection.

#![forbid(unsafe_code)]

/// The `fleet.v1` protobuf package.
pub mod v1 {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("fleet.v1");
}

/// The encoded `FileDescriptorSet` of `fleet.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fleet_v1_descriptor");
