//! Node configuration, with the defaults of the specification.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Bytes a frame may need beyond the keys and values of the entries it
/// carries: a merge chunk holds up to 1 MiB of other entries before its last
/// one, plus clocks, lengths and the message around them. The largest key and
/// value together with this must fit `max_frame_size`.
pub const FRAME_ENVELOPE: usize = 1280 * 1024;

/// What one entry of a write counts for beyond its key and value (its clock
/// and lengths) when writes are weighed against the write budget.
pub const ENTRY_OVERHEAD: usize = 256;

/// How a node is started. Every field has a default; `Config::default()` gives a
/// node on `127.0.0.1` with an OS-chosen port and no seeds.
#[derive(Clone, Debug)]
pub struct Config {
    /// Unique name in the cluster; default `<hostname>-<pid>` (plus a suffix for
    /// further nodes in the same process).
    pub name: Option<String>,
    /// Address to listen on, `host:port`; default `127.0.0.1:0`.
    pub listen: String,
    /// The address (`host:port`) peers are told to reach this node at, for NAT
    /// and containers. Default: the listen address; for a wildcard listen
    /// address, each peer uses the address it sees this node's connection come
    /// from, with the listen port.
    pub advertise: Option<String>,
    /// Addresses (`host:port`) to join; host names resolve to all their addresses.
    pub seeds: Vec<String>,
    /// `Node::start` waits until this many members (itself included) are in the
    /// view, and fails with `Unavailable`, naming each seed and why it was not
    /// reached, when they are not there within the request timeout. 0 or 1:
    /// do not wait.
    pub min_members: usize,
    /// Shared cluster secret; default `$LBMKV_COOKIE`, else `~/.lbmkv.cookie`.
    pub cookie: Option<Vec<u8>>,
    /// Interval between heartbeats on an idle connection.
    pub heartbeat_interval: Duration,
    /// Silence after which a peer is considered down.
    pub failure_timeout: Duration,
    /// Upper bound for one operation (write acknowledgement, strong read, connect).
    pub request_timeout: Duration,
    /// Upper bound for one call of a conflict handler.
    pub handler_timeout: Duration,
    /// Interval of anti-entropy rounds: connected peers compare table digests
    /// and merge what differs.
    pub anti_entropy_interval: Duration,
    /// How long tombstones are kept before they are purged.
    pub tombstone_retention: Duration,
    /// Bound of each table's conflict log.
    pub conflict_log_limit: usize,
    /// Largest accepted key, in bytes.
    pub max_key_size: usize,
    /// Largest accepted value, in bytes. The largest key and value plus
    /// [`FRAME_ENVELOPE`] must fit `max_frame_size`.
    pub max_value_size: usize,
    /// Largest frame accepted from an authenticated peer. It also bounds the
    /// bytes of writes in flight from this node and of each batch it orders
    /// (see [`Config::write_budget`]).
    pub max_frame_size: usize,
    /// Seed of the node's random number generator (incarnation, nonces); random by default.
    /// Fixed seeds make runs reproducible under a network simulator.
    pub rng_seed: Option<u64>,
    /// Mutual TLS between nodes; `None` (the default): plain TCP, with the
    /// cookie handshake and frame tags only. See [`TlsConfig`].
    pub tls: Option<TlsConfig>,
}

/// Mutual TLS: PEM files of this node's certificate chain, its private key
/// and the cluster's CA. Every node presents its certificate and verifies its
/// peer's against the CA; a peer's node name must be one of the DNS names
/// (subject alternative names) of its certificate, matched as a TLS client
/// matches a host name (case-insensitive, a `*.` wildcard stands for one
/// label). A node with TLS refuses peers without it. The cookie handshake and
/// frame tags still run inside TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM), its own certificate first.
    pub cert: PathBuf,
    /// This node's private key (PEM: PKCS#8, PKCS#1 or SEC1); refused when
    /// group or others may access the file.
    pub key: PathBuf,
    /// The CA certificate(s) (PEM) that sign every member's certificate.
    pub ca: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: None,
            listen: "127.0.0.1:0".to_string(),
            advertise: None,
            seeds: Vec::new(),
            min_members: 0,
            cookie: None,
            heartbeat_interval: Duration::from_millis(250),
            failure_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            handler_timeout: Duration::from_secs(5),
            anti_entropy_interval: Duration::from_secs(1),
            tombstone_retention: Duration::from_secs(24 * 3600),
            conflict_log_limit: 1000,
            max_key_size: 64 * 1024,
            max_value_size: 62 * 1024 * 1024,
            max_frame_size: 64 * 1024 * 1024,
            rng_seed: None,
            tls: None,
        }
    }
}

impl Config {
    /// Rejects settings that cannot work, with a message naming the field.
    pub fn validate(&self) -> Result<()> {
        if let Some(name) = &self.name {
            validate_name("node name", name)?;
        }
        if self.heartbeat_interval.is_zero() {
            return Err(Error::invalid("heartbeat_interval must be positive"));
        }
        if self.failure_timeout <= self.heartbeat_interval {
            return Err(Error::invalid(
                "failure_timeout must be longer than heartbeat_interval",
            ));
        }
        if self.request_timeout.is_zero()
            || self.handler_timeout.is_zero()
            || self.anti_entropy_interval.is_zero()
            || self.tombstone_retention.is_zero()
        {
            return Err(Error::invalid("timeouts must be positive"));
        }
        if self.max_key_size == 0 || self.max_value_size == 0 {
            return Err(Error::invalid("size limits must be positive"));
        }
        if self.max_frame_size < 64 * 1024 {
            return Err(Error::invalid("max_frame_size must be at least 64 KiB"));
        }
        if self.max_frame_size > u32::MAX as usize {
            return Err(Error::invalid(
                "max_frame_size must be below 4 GiB (frame lengths are 32 bits)",
            ));
        }
        let largest = self
            .max_key_size
            .saturating_add(self.max_value_size)
            .saturating_add(ENTRY_OVERHEAD)
            .saturating_add(FRAME_ENVELOPE);
        if largest > self.max_frame_size {
            return Err(Error::invalid(format!(
                "max_key_size ({}) + max_value_size ({}) + {} bytes of envelope do not fit \
                 max_frame_size ({}): an entry of the largest size could never be replicated",
                self.max_key_size,
                self.max_value_size,
                ENTRY_OVERHEAD + FRAME_ENVELOPE,
                self.max_frame_size
            )));
        }
        if let Some(cookie) = &self.cookie {
            validate_cookie(cookie)?;
        }
        validate_address("listen address", &self.listen)?;
        if let Some(a) = &self.advertise {
            validate_address("advertised address", a)?;
        }
        for seed in &self.seeds {
            validate_address("seed address", seed)?;
        }
        if let Some(tls) = &self.tls {
            for (what, path) in [
                ("TLS certificate", &tls.cert),
                ("TLS key", &tls.key),
                ("TLS CA", &tls.ca),
            ] {
                if path.as_os_str().is_empty() {
                    return Err(Error::invalid(format!("{what} file must be given")));
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// Bytes of writes that may be waiting for their sequencer at once: this
    /// node's own writes in flight, and the writes it orders as sequencer (its
    /// own and its peers'). A batch of writes therefore always fits one frame,
    /// and a writer waits while the budget is spent (a slow member holds its
    /// share until it acknowledges or is dropped).
    pub fn write_budget(&self) -> usize {
        self.max_frame_size.saturating_sub(FRAME_ENVELOPE)
    }
}

/// Checks a cookie: any bytes, not empty. The one rule every surface applies.
pub fn validate_cookie(cookie: &[u8]) -> Result<()> {
    if cookie.is_empty() {
        return Err(Error::invalid("cookie must not be empty"));
    }
    Ok(())
}

/// Checks the shape `host:port` of an address (resolved only when used).
pub fn validate_address(what: &str, addr: &str) -> Result<()> {
    if addr
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.is_empty())
    {
        return Err(Error::invalid(format!("{what} {addr:?} is not host:port")));
    }
    Ok(())
}

/// Checks that a duration setting is positive.
pub fn validate_positive(what: &str, d: std::time::Duration) -> Result<()> {
    if d.is_zero() {
        return Err(Error::invalid(format!("{what} must be positive")));
    }
    Ok(())
}

/// Checks a table or node name: UTF-8 (guaranteed by `&str`), 1 to 255 bytes, no NUL.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(Error::invalid(format!(
            "{what} must be 1 to 255 bytes, got {}",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(Error::invalid(format!("{what} must not contain NUL")));
    }
    Ok(())
}

/// Checks raw name bytes from a foreign surface and turns them into a `&str`.
pub fn name_from_bytes<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a str> {
    let name = std::str::from_utf8(bytes)
        .map_err(|e| Error::invalid(format!("{what} is not valid UTF-8: {e}")))?;
    validate_name(what, name)?;
    Ok(name)
}
