//! C ABI of lbmkv.
