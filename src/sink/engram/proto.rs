//! Generated from proto/engram.proto by build.rs (client side only).
#![allow(clippy::all, missing_docs)]
tonic::include_proto!("engram.v1");
