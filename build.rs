//! Compiles proto/ with protox (pure Rust, no system `protoc`) and generates the tonic client
//! and server; also writes the encoded descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/events/v1/events.proto"];
    println!("cargo:rerun-if-changed=proto");

    // Imports (google/protobuf/*.proto) are kept so reflection clients can resolve every type.
    let fds = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("events_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
