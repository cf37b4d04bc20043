//! Byte slices in, library-owned bytes, entries and names out.

use std::ffi::{c_char, CString};
use std::ptr;

use crate::error::Failure;
use crate::handle::{self, castable};
use crate::panic::ffi_boundary;

/// A borrowed run of bytes: `len` bytes at `data`. `data` may be NULL only
/// when `len` is 0. lbmkv never keeps a slice after the call returns.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct lbmkv_slice {
    /// First byte.
    pub data: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl lbmkv_slice {
    pub(crate) const EMPTY: lbmkv_slice = lbmkv_slice {
        data: ptr::null(),
        len: 0,
    };

    /// Lends Rust bytes to C.
    pub(crate) fn of(bytes: &[u8]) -> lbmkv_slice {
        lbmkv_slice {
            data: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The bytes of a slice from C; NULL data with a nonzero length is invalid.
    pub(crate) fn bytes<'a>(&self, what: &str) -> Result<&'a [u8], Failure> {
        if self.data.is_null() {
            if self.len == 0 {
                return Ok(&[]);
            }
            return Err(Failure::invalid(format!(
                "{what} has NULL data and a length of {}",
                self.len
            )));
        }
        if self.len > isize::MAX as usize {
            return Err(Failure::invalid(format!(
                "{what} is longer than isize::MAX"
            )));
        }
        // SAFETY: `data` is not NULL and `len` fits in isize (both checked
        // above), and u8 needs no alignment. The header's input rule makes
        // the caller pass `len` readable bytes at `data`, left unchanged
        // until the exported call returns; every caller of `bytes` uses or
        // copies the slice within that call.
        Ok(unsafe { std::slice::from_raw_parts(self.data, self.len) })
    }

    /// The slices of a C array of `count` slices.
    pub(crate) fn array<'a>(
        items: *const lbmkv_slice,
        count: usize,
        what: &str,
    ) -> Result<Vec<&'a [u8]>, Failure> {
        if count == 0 {
            return Ok(Vec::new());
        }
        if items.is_null() {
            return Err(Failure::invalid(format!(
                "{what} is NULL with a count of {count}"
            )));
        }
        if count > isize::MAX as usize / std::mem::size_of::<lbmkv_slice>() {
            return Err(Failure::invalid(format!("{what}: count too large")));
        }
        // SAFETY: `items` is not NULL and `count` slices fit in isize bytes
        // (both checked above). The header's input rule makes the caller pass
        // an array of `count` initialized, aligned `lbmkv_slice`s, unchanged
        // until the exported call returns; the result is used within it.
        let items = unsafe { std::slice::from_raw_parts(items, count) };
        items
            .iter()
            .enumerate()
            .map(|(i, s)| s.bytes(&format!("{what}[{i}]")))
            .collect()
    }
}

/// Bytes owned by the caller, made by lbmkv: `len` bytes at `data`, followed
/// by one NUL byte that `len` does not count (so text can be used as a C
/// string). `data` is never NULL in a returned value. Free with
/// `lbmkv_bytes_free`.
#[repr(C)]
#[derive(Debug)]
pub struct lbmkv_bytes {
    /// First byte.
    pub data: *mut u8,
    /// Number of bytes, without the trailing NUL.
    pub len: usize,
}

impl lbmkv_bytes {
    /// No bytes: what an output holds when there is no value.
    pub(crate) const NONE: lbmkv_bytes = lbmkv_bytes {
        data: ptr::null_mut(),
        len: 0,
    };

    /// Hands a copy of `bytes` (plus a NUL) to C.
    pub(crate) fn copy_of(bytes: &[u8]) -> lbmkv_bytes {
        let mut v = Vec::with_capacity(bytes.len() + 1);
        v.extend_from_slice(bytes);
        v.push(0);
        Self::from_terminated(v)
    }

    /// Hands `v` to C, adding the NUL.
    pub(crate) fn from_vec(mut v: Vec<u8>) -> lbmkv_bytes {
        v.push(0);
        Self::from_terminated(v)
    }

    fn from_terminated(v: Vec<u8>) -> lbmkv_bytes {
        let boxed = v.into_boxed_slice();
        let len = boxed.len() - 1;
        lbmkv_bytes {
            data: Box::into_raw(boxed).cast(),
            len,
        }
    }
}

/// Frees the data of `bytes` and sets it to `{NULL, 0}`, so a second call
/// does nothing. NULL, or bytes whose data is NULL, do nothing.
#[no_mangle]
pub extern "C" fn lbmkv_bytes_free(bytes: *mut lbmkv_bytes) {
    ffi_boundary! {
        if let Some(b) = handle::opt_out(bytes) {
            if !b.data.is_null() {
                let whole = ptr::slice_from_raw_parts_mut(b.data, b.len + 1);
                // SAFETY: a non-NULL `data` of an `lbmkv_bytes` is only ever
                // made by `from_terminated`, which leaked a `Box<[u8]>` of
                // `len + 1` bytes (the NUL included) with this pointer and
                // length; the caller frees each value once (the header's
                // ownership rule), and `data` is set to NULL below so that a
                // second call on the same struct does nothing.
                drop(unsafe { Box::from_raw(whole) });
            }
            b.data = ptr::null_mut();
            b.len = 0;
        }
    }
}

/// Key-value pairs made by lbmkv (previous values of a batch, results of a
/// match or of an update of the whole table), sorted by key where the
/// operation says so. Free with `lbmkv_entries_free`.
pub struct lbmkv_entries {
    _private: [u8; 0],
}

/// A list of names made by lbmkv (members, tables). Free with `lbmkv_names_free`.
pub struct lbmkv_names {
    _private: [u8; 0],
}

castable! {
    lbmkv_entries => lbmkv::Entries, Owned;
    lbmkv_names => Vec<CString>, Owned;
}

pub(crate) fn entries_out(entries: lbmkv::Entries) -> *mut lbmkv_entries {
    handle::into_raw(entries)
}

pub(crate) fn names_out(names: Vec<String>) -> *mut lbmkv_names {
    // Names are checked to hold no NUL; an impossible one is dropped, not truncated.
    let names: Vec<CString> = names
        .into_iter()
        .filter_map(|n| CString::new(n).ok())
        .collect();
    handle::into_raw(names)
}

/// Number of entries (0 for NULL).
#[no_mangle]
pub extern "C" fn lbmkv_entries_len(entries: *const lbmkv_entries) -> usize {
    ffi_boundary! { handle::opt_ref(entries).map_or(0, |e| e.len()) }
}

/// The key of entry `index`, borrowed until the entries are freed;
/// `{NULL, 0}` when `entries` is NULL or `index` is out of range.
#[no_mangle]
pub extern "C" fn lbmkv_entries_key(entries: *const lbmkv_entries, index: usize) -> lbmkv_slice {
    ffi_boundary! {
        handle::opt_ref(entries)
            .and_then(|e| e.get(index))
            .map_or(lbmkv_slice::EMPTY, |(k, _)| lbmkv_slice::of(k))
    }
}

/// The value of entry `index`, borrowed until the entries are freed;
/// `{NULL, 0}` when `entries` is NULL or `index` is out of range.
#[no_mangle]
pub extern "C" fn lbmkv_entries_value(entries: *const lbmkv_entries, index: usize) -> lbmkv_slice {
    ffi_boundary! {
        handle::opt_ref(entries)
            .and_then(|e| e.get(index))
            .map_or(lbmkv_slice::EMPTY, |(_, v)| lbmkv_slice::of(v))
    }
}

/// Frees entries. NULL does nothing.
#[no_mangle]
pub extern "C" fn lbmkv_entries_free(entries: *mut lbmkv_entries) {
    ffi_boundary! { handle::free(entries) }
}

/// Number of names (0 for NULL).
#[no_mangle]
pub extern "C" fn lbmkv_names_len(names: *const lbmkv_names) -> usize {
    ffi_boundary! { handle::opt_ref(names).map_or(0, |n| n.len()) }
}

/// Name `index`, NUL-terminated UTF-8, borrowed until the list is freed;
/// NULL when `names` is NULL or `index` is out of range.
#[no_mangle]
pub extern "C" fn lbmkv_names_get(names: *const lbmkv_names, index: usize) -> *const c_char {
    ffi_boundary! {
        handle::opt_ref(names)
            .and_then(|n| n.get(index))
            .map_or(ptr::null(), |n| n.as_ptr())
    }
}

/// Frees a list of names. NULL does nothing.
#[no_mangle]
pub extern "C" fn lbmkv_names_free(names: *mut lbmkv_names) {
    ffi_boundary! { handle::free(names) }
}
