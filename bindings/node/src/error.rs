//! Errors thrown into JavaScript: `Error` objects whose `code` is the stable
//! code of the core's `ErrorKind` (`'UNAVAILABLE'`, `'INVALID_ARGUMENT'`, ...).

use napi::bindgen_prelude::*;

/// The `code` of a JavaScript error; an `ErrorKind::code()` of the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code(pub &'static str);

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl From<Status> for Code {
    fn from(_: Status) -> Self {
        // A failing Node-API call is not the user's fault.
        Code(lbmkv::ErrorKind::Internal.code())
    }
}

/// An error on its way to JavaScript.
pub type JsErr = napi::Error<Code>;

/// Result of every exported function.
pub type Result<T> = std::result::Result<T, JsErr>;

/// An `INVALID_ARGUMENT` error.
pub fn invalid(message: impl Into<String>) -> JsErr {
    JsErr::new(
        Code(lbmkv::ErrorKind::InvalidArgument.code()),
        message.into(),
    )
}

/// The `code` the native addon gives an argument of the wrong type; the
/// JavaScript layer (`index.js`) turns such an error into a `TypeError` whose
/// `code` is `INVALID_ARGUMENT`.
pub const TYPE_CODE: &str = "ERR_INVALID_ARG_TYPE";

/// The `code` the native addon gives a number out of its range; the
/// JavaScript layer turns such an error into a `RangeError` whose `code` is
/// `INVALID_ARGUMENT`.
pub const RANGE_CODE: &str = "ERR_OUT_OF_RANGE";

/// An argument of the wrong type (a `TypeError` in JavaScript).
pub fn type_error(message: impl Into<String>) -> JsErr {
    JsErr::new(Code(TYPE_CODE), message.into())
}

/// A number out of its range (a `RangeError` in JavaScript).
pub fn range_error(message: impl Into<String>) -> JsErr {
    JsErr::new(Code(RANGE_CODE), message.into())
}

/// The JavaScript form of a core error.
pub fn from_core(e: lbmkv::Error) -> JsErr {
    JsErr::new(Code(e.kind().code()), e.message().to_string())
}

/// The JavaScript form of a Node-API failure.
pub fn from_napi(e: napi::Error) -> JsErr {
    JsErr::new(
        Code(lbmkv::ErrorKind::Internal.code()),
        format!("Node-API call failed: {}: {}", e.status, e.reason),
    )
}

/// Extension to turn foreign results into [`Result`].
pub trait IntoJs<T> {
    /// Converts the error.
    fn js(self) -> Result<T>;
}

impl<T> IntoJs<T> for lbmkv::Result<T> {
    fn js(self) -> Result<T> {
        self.map_err(from_core)
    }
}

impl<T> IntoJs<T> for napi::Result<T> {
    fn js(self) -> Result<T> {
        self.map_err(from_napi)
    }
}
