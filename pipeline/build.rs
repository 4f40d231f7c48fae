//! Compiles the LightStep collector protocol (proto/lightstep/collector.proto) with protox (no
//! system protoc) and tonic-prost-build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["lightstep/collector.proto"], ["proto"])?;
    // Messages only: the receiver and the satellite sink run the service by hand.
    tonic_prost_build::configure().build_client(false).build_server(false).compile_fds(fds)?;
    Ok(())
}
