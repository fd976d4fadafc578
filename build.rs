//! Compiles proto/engram.proto with the protoc that ships in the protoc-bin-vendored crate (no system package).
//! Two outputs: the client for the library (`engram.v1.rs`), and the server side for the tests' Engram stand-in
//! (`standin/engram.v1.rs`), so the product carries no server code of its own.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // prost-build reads PROTOC and PROTOC_INCLUDE from the environment (a build script is single-threaded).
    std::env::set_var("PROTOC", protoc);
    std::env::set_var("PROTOC_INCLUDE", &include);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [std::path::PathBuf::from("proto/engram.proto")];
    let includes = [std::path::PathBuf::from("proto"), include];
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_protos(&protos, &includes)?;
    let standin = out.join("standin");
    std::fs::create_dir_all(&standin)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .out_dir(&standin)
        .compile_protos(&protos, &includes)?;
    println!("cargo:rerun-if-changed=proto/engram.proto");
    Ok(())
}
