//! Gives the shared library the soname `liblbmkv.so.MAJOR`, so that programs
//! linked against it load any later release of the same major version (see
//! `make install`, which installs the versioned file and its links).

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".to_string());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblbmkv.so.{major}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
