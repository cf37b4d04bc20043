//! Node configuration.

use std::ffi::c_char;
use std::time::Duration;

use lbmkv::Config;

use crate::bytes::lbmkv_slice;
use crate::error::{lbmkv_error, lbmkv_status, Failure};
use crate::handle::{self, castable};
use crate::panic::{ffi_boundary, ffi_status};

/// How a node is started: every setting has the default of the
/// specification until set (`127.0.0.1:0`, advertised as the listen
/// address, no seeds, no wait for members, cookie from `$LBMKV_COOKIE` or
/// `~/.lbmkv.cookie`, failure timeout 2 s, heartbeats every 250 ms, request
/// and handler timeouts 5 s). Not thread-safe: do not change one config from
/// two threads at once. Free with `lbmkv_config_free`.
pub struct lbmkv_config {
    _private: [u8; 0],
}

castable! {
    lbmkv_config => Config, Owned;
}

/// A new configuration with every default. Never NULL.
#[no_mangle]
pub extern "C" fn lbmkv_config_new() -> *mut lbmkv_config {
    ffi_boundary! { handle::into_raw::<lbmkv_config>(Config::default()) }
}

/// Frees a configuration. NULL does nothing. A node started from it does not
/// need it any more.
#[no_mangle]
pub extern "C" fn lbmkv_config_free(config: *mut lbmkv_config) {
    ffi_boundary! { handle::free(config) }
}

/// Sets the node's name (UTF-8, 1 to 255 bytes, unique in the cluster).
#[no_mangle]
pub extern "C" fn lbmkv_config_set_name(
    config: *mut lbmkv_config,
    name: *const c_char,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let config = handle::try_mut(config, "config")?;
        let name = handle::c_name(name, "node name")?;
        config.name = Some(name.to_string());
        Ok(())
    })
}

/// Turns on mutual TLS between nodes: the paths of this node's certificate
/// chain (PEM, its own certificate first), its private key (PEM, readable by
/// its owner only) and the cluster's CA certificate (PEM). Every member must
/// have TLS; a peer's node name must be a DNS name of its certificate, and a
/// node without a name set takes the first DNS name of its own. The files are
/// read and checked by `lbmkv_node_start` (`LBMKV_STATUS_INVALID_ARGUMENT`,
/// naming the file, when one is missing or unusable).
#[no_mangle]
pub extern "C" fn lbmkv_config_set_tls(
    config: *mut lbmkv_config,
    cert_path: *const c_char,
    key_path: *const c_char,
    ca_path: *const c_char,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let config = handle::try_mut(config, "config")?;
        let cert = handle::c_str(cert_path, "TLS certificate path")?;
        let key = handle::c_str(key_path, "TLS key path")?;
        let ca = handle::c_str(ca_path, "TLS CA path")?;
        config.tls = Some(lbmkv::TlsConfig {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        });
        Ok(())
    })
}

/// Sets the address to listen on, `host:port` (port 0: any free port).
#[no_mangle]
pub extern "C" fn lbmkv_config_set_listen(
    config: *mut lbmkv_config,
    addr: *const c_char,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let config = handle::try_mut(config, "config")?;
        let addr = handle::c_str(addr, "listen address")?;
        lbmkv::validate_address("listen address", addr)?;
        config.listen = addr.to_string();
        Ok(())
    })
}

/// Sets the address (`host:port`) peers are told to reach this node at, for
/// NAT and containers. Default: the listen address; for a wildcard listen
/// address (`0.0.0.0:7000`), each peer uses the address it sees this node's
/// connection come from, with the listen port.
#[no_mangle]
pub extern "C" fn lbmkv_config_set_advertise(
    config: *mut lbmkv_config,
    addr: *const c_char,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let config = handle::try_mut(config, "config")?;
        let addr = handle::c_str(addr, "advertised address")?;
        lbmkv::validate_address("advertised address", addr)?;
        config.advertise = Some(addr.to_string());
        Ok(())
    })
}

/// Adds a seed, `host:port`, to join at start; a host name resolves to all
/// its addresses.
#[no_mangle]
pub extern "C" fn lbmkv_config_add_seed(
    config: *mut lbmkv_config,
    addr: *const c_char,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let config = handle::try_mut(config, "config")?;
        let addr = handle::c_str(addr, "seed address")?;
        lbmkv::validate_address("seed address", addr)?;
        config.seeds.push(addr.to_string());
        Ok(())
    })
}

/// Sets the cluster secret (any bytes, not empty). It never crosses the wire.
#[no_mangle]
pub extern "C" fn lbmkv_config_set_cookie(
    config: *mut lbmkv_config,
    cookie: lbmkv_slice,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let config = handle::try_mut(config, "config")?;
        let cookie = cookie.bytes("cookie")?;
        lbmkv::validate_cookie(cookie)?;
        config.cookie = Some(cookie.to_vec());
        Ok(())
    })
}

/// Makes `lbmkv_node_start` wait until `n` members, this node included, are
/// in the view; when they are not there within the request timeout, it fails
/// with `LBMKV_STATUS_UNAVAILABLE` and a message naming each seed and why it
/// was not reached. 0 or 1 (the default 0): do not wait.
#[no_mangle]
pub extern "C" fn lbmkv_config_set_min_members(
    config: *mut lbmkv_config,
    n: usize,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let config = handle::try_mut(config, "config")?;
        config.min_members = n;
        Ok(())
    })
}

fn set_ms(
    config: *mut lbmkv_config,
    ms: u64,
    what: &str,
    set: impl FnOnce(&mut Config, Duration),
) -> Result<(), Failure> {
    let config = handle::try_mut(config, "config")?;
    let d = Duration::from_millis(ms);
    lbmkv::validate_positive(what, d)?;
    set(config, d);
    Ok(())
}

/// Sets the silence after which a peer counts as down (must stay longer
/// than the heartbeat interval; checked when the node starts).
#[no_mangle]
pub extern "C" fn lbmkv_config_set_failure_timeout_ms(
    config: *mut lbmkv_config,
    ms: u64,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        set_ms(config, ms, "failure timeout", |c, d| c.failure_timeout = d)
    })
}

/// Sets the interval of heartbeats on idle connections.
#[no_mangle]
pub extern "C" fn lbmkv_config_set_heartbeat_interval_ms(
    config: *mut lbmkv_config,
    ms: u64,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        set_ms(config, ms, "heartbeat interval", |c, d| {
            c.heartbeat_interval = d
        })
    })
}

/// Sets the upper bound of one operation (write acknowledgement, strong
/// read, connect).
#[no_mangle]
pub extern "C" fn lbmkv_config_set_request_timeout_ms(
    config: *mut lbmkv_config,
    ms: u64,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        set_ms(config, ms, "request timeout", |c, d| c.request_timeout = d)
    })
}

/// Sets the upper bound of one call of a conflict handler; a handler that
/// takes longer counts as failed.
#[no_mangle]
pub extern "C" fn lbmkv_config_set_handler_timeout_ms(
    config: *mut lbmkv_config,
    ms: u64,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        set_ms(config, ms, "handler timeout", |c, d| c.handler_timeout = d)
    })
}

/// Sets the interval of anti-entropy rounds: connected peers compare table
/// digests and merge what differs (default 1000 ms).
#[no_mangle]
pub extern "C" fn lbmkv_config_set_anti_entropy_interval_ms(
    config: *mut lbmkv_config,
    ms: u64,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        set_ms(config, ms, "anti-entropy interval", |c, d| {
            c.anti_entropy_interval = d
        })
    })
}

/// Sets how long tombstones are kept for merges before they are purged
/// (default 24 hours). A node cut off for longer may bring deleted keys back.
#[no_mangle]
pub extern "C" fn lbmkv_config_set_tombstone_retention_ms(
    config: *mut lbmkv_config,
    ms: u64,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        set_ms(config, ms, "tombstone retention", |c, d| {
            c.tombstone_retention = d
        })
    })
}

/// Sets the bound of each table's conflict log (default 1000 entries; 0
/// keeps none).
#[no_mangle]
pub extern "C" fn lbmkv_config_set_conflict_log_limit(
    config: *mut lbmkv_config,
    n: usize,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let config = handle::try_mut(config, "config")?;
        config.conflict_log_limit = n;
        Ok(())
    })
}

fn set_size(
    config: *mut lbmkv_config,
    bytes: usize,
    what: &str,
    set: impl FnOnce(&mut Config, usize),
) -> Result<(), Failure> {
    let config = handle::try_mut(config, "config")?;
    if bytes == 0 {
        return Err(Failure {
            status: lbmkv_status::InvalidArgument,
            message: format!("{what} must be positive"),
        });
    }
    set(config, bytes);
    Ok(())
}

/// Sets the largest accepted key, in bytes (default 65536). The largest key
/// and value plus 1.25 MiB must fit the largest frame (checked when the node
/// starts).
#[no_mangle]
pub extern "C" fn lbmkv_config_set_max_key_size(
    config: *mut lbmkv_config,
    bytes: usize,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        set_size(config, bytes, "max key size", |c, n| c.max_key_size = n)
    })
}

/// Sets the largest accepted value, in bytes (default 62 MiB). The largest
/// key and value plus 1.25 MiB must fit the largest frame (checked when the
/// node starts).
#[no_mangle]
pub extern "C" fn lbmkv_config_set_max_value_size(
    config: *mut lbmkv_config,
    bytes: usize,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        set_size(config, bytes, "max value size", |c, n| c.max_value_size = n)
    })
}

/// Sets the largest frame accepted from a peer, in bytes (default 64 MiB, at
/// least 64 KiB, below 4 GiB; checked when the node starts). It also bounds
/// the bytes of writes in flight.
#[no_mangle]
pub extern "C" fn lbmkv_config_set_max_frame_size(
    config: *mut lbmkv_config,
    bytes: usize,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        set_size(config, bytes, "max frame size", |c, n| c.max_frame_size = n)
    })
}
