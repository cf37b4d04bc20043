//! C ABI of lbmkv: `liblbmkv.so` and `liblbmkv.a`, described by the
//! generated header `include/lbmkv.h` (see `ffi/README.md` for the
//! conventions: ownership, in/out parameters, NULL, panics, callbacks,
//! threading).
//!
//! Every exported function is a thin converter over `lbmkv::blocking`: it
//! checks its pointers, converts types, calls the core, maps the error to a
//! stable status, and catches panics at the boundary.

#![warn(missing_docs)]
// The exported names are C names (`lbmkv_node_start`, `lbmkv_status`, ...).
#![allow(non_camel_case_types)]
// Exported functions take raw pointers from C and are safe to call from Rust's
// point of view only in the sense the header defines; every dereference goes
// through `handle`, which checks for NULL.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

// Declared in the order the header lists them.
mod bytes;
mod callback;
mod config;
mod error;
mod event;
mod handle;
mod log;
mod node;
mod panic;
mod table;
mod watch;

pub use bytes::*;
pub use callback::*;
pub use config::*;
pub use error::*;
pub use event::*;
pub use log::*;
pub use node::*;
pub use table::*;
pub use watch::*;

use std::ffi::c_char;

/// Major version of the library this header belongs to.
pub const LBMKV_VERSION_MAJOR: u32 = 0;
/// Minor version of the library this header belongs to.
pub const LBMKV_VERSION_MINOR: u32 = 1;
/// Patch version of the library this header belongs to.
pub const LBMKV_VERSION_PATCH: u32 = 0;

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0u32;
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

// The header's version macros must follow the crate version.
const _: () = assert!(
    parse_u32(env!("CARGO_PKG_VERSION_MAJOR")) == LBMKV_VERSION_MAJOR
        && parse_u32(env!("CARGO_PKG_VERSION_MINOR")) == LBMKV_VERSION_MINOR
        && parse_u32(env!("CARGO_PKG_VERSION_PATCH")) == LBMKV_VERSION_PATCH,
    "update LBMKV_VERSION_* in ffi/src/lib.rs and regenerate include/lbmkv.h"
);

/// The version of the library, `"MAJOR.MINOR.PATCH"`, a static string. It
/// may differ from the header's `LBMKV_VERSION_*` when a program runs with a
/// newer shared library than it was compiled with.
#[no_mangle]
pub extern "C" fn lbmkv_version() -> *const c_char {
    panic::ffi_boundary! { panic::static_cstr(concat!(env!("CARGO_PKG_VERSION"), "\0")) }
}

// The header promises that nodes and tables may be shared between threads.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<node::NodeState>();
    shareable::<table::TableState>();
};
