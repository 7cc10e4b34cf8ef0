//! The `events.v1` gRPC contract, generated from `proto/` by the top-level `build.rs`: message
//! types, the tonic client and server, and the descriptor set that backs server reflection.
#![forbid(unsafe_code)]

/// Package `events.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("events.v1");
}

/// Encoded `FileDescriptorSet` of `proto/` and its imports, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/events_descriptor.bin"));
