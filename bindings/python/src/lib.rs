//! Python binding of lbmkv.
