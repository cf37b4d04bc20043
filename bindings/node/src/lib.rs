//! Node.js binding of lbmkv.
