//! The `Table` class: replicated writes return Promises, local reads are
//! synchronous.

use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;

use crate::callbacks::{self, Outcome};
use crate::conv::{self, Raw};
use crate::error::{type_error, IntoJs, Result};
use crate::promise::{self, Failure};

/// A replicated table. Get one from `node.createTable()` or `node.table()`.
/// Keys and values are bytes: `Buffer`, `Uint8Array` or `string` (UTF-8) in,
/// `Buffer` out.
#[napi]
pub struct Table {
    pub(crate) inner: lbmkv::Table,
    // Keeps the node open while a table handle is reachable.
    _node: lbmkv::Node,
}

impl Table {
    pub(crate) fn new(inner: lbmkv::Table, node: lbmkv::Node) -> Self {
        Table { inner, _node: node }
    }
}

/// A JavaScript array of `[key, value]` pairs, or a plain object, read as entries.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
unsafe fn entries(env: sys::napi_env, v: sys::napi_value) -> Result<lbmkv::Entries> {
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    if unsafe { conv::is_array(env, v) }? {
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract) and `v` is an array (checked above).
        let items = unsafe { conv::array_items(env, v, "entries") }?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            // SAFETY: `env` is valid for this call and `item` is an element
            // just read in it.
            let pair = unsafe { conv::array_items(env, item, &format!("entries[{i}]")) }?;
            if pair.len() != 2 {
                return Err(type_error(format!(
                    "entries[{i}] must be a [key, value] pair, got {} elements",
                    pair.len()
                )));
            }
            // SAFETY: `env` is valid for this call and `pair[0]` is an element
            // just read in it; the bytes are copied.
            let k = unsafe { conv::bytes_vec(env, pair[0], &format!("entries[{i}][0]")) }?;
            // SAFETY: `env` is valid for this call and `pair[1]` is an element
            // just read in it; the bytes are copied.
            let val = unsafe { conv::bytes_vec(env, pair[1], &format!("entries[{i}][1]")) }?;
            out.push((k, val));
        }
        return Ok(out);
    }
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    let t = unsafe { conv::type_of(env, v) }?;
    // SAFETY: `env` and `v` are valid for this call (this function's contract);
    // the borrowed bytes are not used, only whether there are any.
    if t == sys::ValueType::napi_object && unsafe { conv::uint8_array(env, v) }?.is_none() {
        let mut out = Vec::new();
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract) and `v` is an object (checked above).
        for (k, val) in unsafe { conv::own_entries(env, v) }? {
            // SAFETY: `env` is valid for this call and `k` is a property name
            // just read in it; the bytes are copied.
            let key = unsafe { conv::bytes_vec(env, k, "entries key") }?;
            let what = format!("entries[{:?}]", String::from_utf8_lossy(&key));
            // SAFETY: `env` is valid for this call and `val` is a property
            // value just read in it; the bytes are copied.
            out.push((key, unsafe { conv::bytes_vec(env, val, &what) }?));
        }
        return Ok(out);
    }
    Err(type_error(format!(
        "entries must be an array of [key, value] pairs or a plain object, got {}",
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract).
        unsafe { conv::describe_value(env, v) }
    )))
}

/// Whether `options` asks for a strong read (`{ strong: true }`).
///
/// # Safety
/// `env` and `v` must be valid for the current call.
unsafe fn strong(env: sys::napi_env, v: sys::napi_value) -> Result<bool> {
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    if unsafe { conv::is_nullish(env, v) }? {
        return Ok(false);
    }
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    if unsafe { conv::type_of(env, v) }? != sys::ValueType::napi_object {
        return Err(type_error(format!(
            "get options must be an object, got {}",
            // SAFETY: `env` and `v` are valid for this call (this function's
            // contract).
            unsafe { conv::describe_value(env, v) }
        )));
    }
    // SAFETY: `env` and `v` are valid for this call (this function's contract)
    // and `v` is an object (checked above).
    let s = unsafe { conv::property(env, v, c"strong") }?;
    // SAFETY: `env` is valid for this call and `s` is a property value just
    // read in it.
    let t = unsafe { conv::type_of(env, s) }?;
    if t == sys::ValueType::napi_undefined {
        return Ok(false);
    }
    if t != sys::ValueType::napi_boolean {
        return Err(type_error(format!(
            "options.strong must be a boolean, got {}",
            // SAFETY: `env` is valid for this call and `s` is a property value
            // just read in it.
            unsafe { conv::describe_value(env, s) }
        )));
    }
    let mut b = false;
    conv::check(
        // SAFETY: `env` is valid for this call, `s` is a boolean (checked
        // above) and `b` a live local.
        unsafe { sys::napi_get_value_bool(env, s, &mut b) },
        "napi_get_value_bool",
    )?;
    Ok(b)
}

/// An optional glob pattern (`*` when absent).
///
/// # Safety
/// `env` and `v` must be valid for the current call.
unsafe fn pattern(env: sys::napi_env, v: sys::napi_value, what: &str) -> Result<Vec<u8>> {
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    if unsafe { conv::is_nullish(env, v) }? {
        return Ok(b"*".to_vec());
    }
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    unsafe { conv::bytes_vec(env, v, what) }
}

/// A ttl in milliseconds (JavaScript's unit of time); `None`: no expiry.
fn ttl_arg(ms: Option<f64>) -> Result<Option<std::time::Duration>> {
    let Some(ms) = ms else {
        return Ok(None);
    };
    std::time::Duration::try_from_secs_f64(ms / 1000.0)
        .map(Some)
        .map_err(|_| {
            crate::error::range_error(format!(
                "options.ttl must be a finite, non-negative number of milliseconds, got {ms}"
            ))
        })
}

fn opt_buffer(env: sys::napi_env, v: Option<Vec<u8>>) -> Result<sys::napi_value> {
    // SAFETY: only called with the env of a JavaScript call that is still
    // running: as the `to_js` of `promise::spawn`, which `settle` runs on the
    // JavaScript thread.
    unsafe { conv::opt_buffer(env, v.as_deref()) }
}

fn pairs(env: sys::napi_env, v: lbmkv::Entries) -> Result<sys::napi_value> {
    // SAFETY: only called with the env of a JavaScript call that is still
    // running: as the `to_js` of `promise::spawn` (run by `settle` on the
    // JavaScript thread) and by `match_entries` with its own env.
    unsafe { conv::pairs(env, &v) }
}

/// Maps an update function's outcome to the core's: a throw aborts the update
/// and keeps the thrown value for the rejection.
fn outcome(o: Outcome, thrown: &Mutex<Option<napi::Error>>) -> lbmkv::Result<Option<Vec<u8>>> {
    match o {
        Outcome::Value(v) => Ok(Some(v)),
        Outcome::Nothing => Ok(None),
        Outcome::Bad(m) => Err(lbmkv::Error::new(lbmkv::ErrorKind::InvalidArgument, m)),
        Outcome::Threw(e) => {
            let message = format!("the update function threw: {}", e.reason);
            if let Ok(mut slot) = thrown.lock() {
                *slot = Some(e);
            }
            Err(lbmkv::Error::new(lbmkv::ErrorKind::Aborted, message))
        }
    }
}

/// The failure of an update: the user's own thrown value when it aborted it.
fn update_failure(e: lbmkv::Error, thrown: &Mutex<Option<napi::Error>>) -> Failure {
    if e.kind() == lbmkv::ErrorKind::Aborted {
        if let Some(js) = thrown.lock().ok().and_then(|mut s| s.take()) {
            return Failure::Js(js);
        }
    }
    Failure::Core(e)
}

#[napi]
impl Table {
    /// The table's name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// Number of live entries on this node.
    #[napi(getter)]
    pub fn size(&self) -> Result<u32> {
        let n = self.inner.len().js()?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Sets `key` to `value` on every member; resolves to the previous value.
    #[napi(
        ts_args_type = "key: BytesLike, value: BytesLike",
        ts_return_type = "Promise<Buffer | null>"
    )]
    pub fn put(&self, env: Env, key: Unknown, value: Unknown, ttl_ms: Option<f64>) -> Result<Raw> {
        promise::run(&env, || {
            let ttl = ttl_arg(ttl_ms)?;
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it; the bytes are
            // copied before the task is spawned.
            let key = unsafe { conv::bytes_vec(env.raw(), key.raw(), "key") }?;
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it; the bytes are
            // copied before the task is spawned.
            let value = unsafe { conv::bytes_vec(env.raw(), value.raw(), "value") }?;
            let t = self.inner.clone();
            promise::spawn(
                &env,
                async move {
                    Ok::<_, Failure>(match ttl {
                        Some(ttl) => t.put_expiring(&key, &value, ttl).await?,
                        None => t.put(&key, &value).await?,
                    })
                },
                opt_buffer,
            )
        })
    }

    /// Sets all entries atomically (an array of `[key, value]` pairs or a
    /// plain object); resolves to the previous entries, sorted by key.
    #[napi(
        ts_args_type = "entries: Array<[BytesLike, BytesLike]> | Record<string, BytesLike>",
        ts_return_type = "Promise<Array<[Buffer, Buffer]>>"
    )]
    pub fn put_many(&self, env: Env, entries: Unknown, ttl_ms: Option<f64>) -> Result<Raw> {
        promise::run(&env, || {
            let ttl = ttl_arg(ttl_ms)?;
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it.
            let entries = unsafe { self::entries(env.raw(), entries.raw()) }?;
            let t = self.inner.clone();
            promise::spawn(
                &env,
                async move {
                    let mut prev = match ttl {
                        Some(ttl) => t.put_many_expiring(entries, ttl).await?,
                        None => t.put_many(entries).await?,
                    };
                    prev.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    Ok::<_, Failure>(prev)
                },
                pairs,
            )
        })
    }

    /// The local value of `key`, or `null` (no network). With
    /// `{ strong: true }`, a Promise of the value as the table's sequencer has it.
    #[napi(
        ts_args_type = "key: BytesLike, options?: { strong?: false } | null",
        ts_return_type = "Buffer | null"
    )]
    pub fn get(&self, env: Env, key: Unknown, options: Unknown) -> Result<Raw> {
        let raw_env = env.raw();
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it.
        if unsafe { strong(raw_env, options.raw()) }? {
            return promise::run(&env, || {
                // SAFETY: napi-rs passes this method the env of the current
                // JavaScript call and argument handles valid in it; the bytes
                // are copied before the task is spawned.
                let key = unsafe { conv::bytes_vec(raw_env, key.raw(), "key") }?;
                let t = self.inner.clone();
                promise::spawn(
                    &env,
                    async move { Ok::<_, Failure>(t.get_strong(&key).await?) },
                    opt_buffer,
                )
            });
        }
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it. The borrowed bytes are used
        // only below, within this call, while no JavaScript runs that could
        // detach or change them.
        let key = unsafe { conv::bytes(raw_env, key.raw(), "key") }?;
        let v = self
            .inner
            // SAFETY: `raw_env` is valid for this call (see above), and the
            // closure runs before `with_value` returns.
            .with_value(key.as_slice(), |v| unsafe { conv::opt_buffer(raw_env, v) })
            .js()??;
        Ok(Raw(v))
    }

    /// Milliseconds `key` has left before it expires, by this node's clock;
    /// `null` when it is absent or never expires.
    #[napi(ts_args_type = "key: BytesLike")]
    pub fn ttl(&self, env: Env, key: Unknown) -> Result<Option<f64>> {
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it. The borrowed bytes are used
        // only on the next line, within this call.
        let key = unsafe { conv::bytes(env.raw(), key.raw(), "key") }?;
        let left = self.inner.ttl(key.as_slice()).js()?;
        Ok(left.map(|d| d.as_secs_f64() * 1000.0))
    }

    /// Opens a watch of the keys under `prefix` with a buffer of `buffer`
    /// changes (0: the default); the JavaScript layer's `watch` calls it.
    #[napi(js_name = "_watch", skip_typescript)]
    pub fn watch(&self, env: Env, prefix: Unknown, buffer: u32) -> Result<crate::watch::Watch> {
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it; the bytes are copied.
        let prefix = unsafe { conv::bytes_vec(env.raw(), prefix.raw(), "prefix") }?;
        let inner = lbmkv::blocking::Table::from_async(self.inner.clone())
            .watch(&prefix, buffer as usize)
            .js()?;
        Ok(crate::watch::Watch {
            inner,
            _node: self._node.clone(),
        })
    }

    /// Whether `key` has a live value on this node.
    #[napi(ts_args_type = "key: BytesLike")]
    pub fn has(&self, env: Env, key: Unknown) -> Result<bool> {
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it. The borrowed bytes are used
        // only on the next line, within this call.
        let key = unsafe { conv::bytes(env.raw(), key.raw(), "key") }?;
        self.inner.contains(key.as_slice()).js()
    }

    /// Live keys on this node, sorted, as an array (`keys()`, `entries()` and
    /// iteration are built on it and `match` by the JavaScript layer).
    #[napi(js_name = "_keys", skip_typescript)]
    pub fn keys(&self, env: Env) -> Result<Raw> {
        let keys = self.inner.keys().js()?;
        let raw_env = env.raw();
        let mut items = Vec::with_capacity(keys.len());
        for k in &keys {
            // SAFETY: `raw_env` is the env napi-rs passed this method, valid
            // for this call.
            items.push(unsafe { conv::buffer(raw_env, k) }?);
        }
        // SAFETY: `raw_env` is valid for this call and the items were just
        // created in it.
        Ok(Raw(unsafe { conv::array(raw_env, &items) }?))
    }

    /// Deletes `key` everywhere (a tombstone); resolves to the previous value.
    #[napi(
        ts_args_type = "key: BytesLike",
        ts_return_type = "Promise<Buffer | null>"
    )]
    pub fn delete(&self, env: Env, key: Unknown) -> Result<Raw> {
        promise::run(&env, || {
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it; the bytes are
            // copied before the task is spawned.
            let key = unsafe { conv::bytes_vec(env.raw(), key.raw(), "key") }?;
            let t = self.inner.clone();
            promise::spawn(
                &env,
                async move { Ok::<_, Failure>(t.delete(&key).await?) },
                opt_buffer,
            )
        })
    }

    /// Deletes all `keys` atomically; resolves to the previous entries of
    /// those that existed, sorted by key.
    #[napi(
        ts_args_type = "keys: BytesLike[]",
        ts_return_type = "Promise<Array<[Buffer, Buffer]>>"
    )]
    pub fn delete_many(&self, env: Env, keys: Unknown) -> Result<Raw> {
        promise::run(&env, || {
            let raw_env = env.raw();
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it.
            let items = unsafe { conv::array_items(raw_env, keys.raw(), "keys") }?;
            let mut keys = Vec::with_capacity(items.len());
            for (i, k) in items.into_iter().enumerate() {
                // SAFETY: `raw_env` is valid for this call and `k` is an
                // element just read in it; the bytes are copied.
                keys.push(unsafe { conv::bytes_vec(raw_env, k, &format!("keys[{i}]")) }?);
            }
            let t = self.inner.clone();
            promise::spawn(
                &env,
                async move {
                    let mut prev = t.delete_many(keys).await?;
                    prev.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    Ok::<_, Failure>(prev)
                },
                pairs,
            )
        })
    }

    /// Local entries whose key and value match the glob patterns (`*`, `?`,
    /// `[...]`, `\` escapes; default `*`), as `[key, value]` pairs sorted by key.
    #[napi(
        js_name = "match",
        ts_args_type = "keyPattern?: BytesLike | null, valuePattern?: BytesLike | null",
        ts_return_type = "Array<[Buffer, Buffer]>"
    )]
    pub fn match_entries(
        &self,
        env: Env,
        key_pattern: Unknown,
        value_pattern: Unknown,
    ) -> Result<Raw> {
        let raw_env = env.raw();
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it.
        let kp = unsafe { pattern(raw_env, key_pattern.raw(), "keyPattern") }?;
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it.
        let vp = unsafe { pattern(raw_env, value_pattern.raw(), "valuePattern") }?;
        let found = self.inner.match_entries(&kp, &vp).js()?;
        Ok(Raw(pairs(raw_env, found)?))
    }

    /// Atomic read-modify-write of `key`: `fn(key, value)` runs on the
    /// JavaScript thread (maybe more than once) and returns the new value,
    /// `null`/`undefined` to delete, or the old value to write nothing; it may
    /// return a Promise. Resolves to `[old, new]`. When `fn` throws, the update
    /// is not applied and the Promise rejects with what it threw.
    #[napi(
        ts_args_type = "key: BytesLike, fn: UpdateFn",
        ts_return_type = "Promise<[Buffer | null, Buffer | null]>"
    )]
    pub fn update(&self, env: Env, key: Unknown, f: Unknown, ttl_ms: Option<f64>) -> Result<Raw> {
        promise::run(&env, || {
            let ttl = ttl_arg(ttl_ms)?;
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it; the bytes are
            // copied before the task is spawned.
            let key = unsafe { conv::bytes_vec(env.raw(), key.raw(), "key") }?;
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it, which is what
            // `fn2` requires; the resulting function is thread-safe.
            let f = Arc::new(unsafe { callbacks::fn2(env.raw(), f.raw(), "the update function") }?);
            let t = self.inner.clone();
            promise::spawn(
                &env,
                async move {
                    let thrown = Arc::new(Mutex::new(None));
                    let slot = thrown.clone();
                    let call = move |k: &[u8], v: Option<Vec<u8>>| {
                        let f = f.clone();
                        let slot = slot.clone();
                        let k = k.to_vec();
                        async move { outcome(callbacks::call2(&f, k, v).await, &slot) }
                    };
                    let result = match ttl {
                        Some(ttl) => t.update_with_expiring(&key, ttl, call).await,
                        None => t.update_with(&key, call).await,
                    };
                    result.map_err(|e| update_failure(e, &thrown))
                },
                // SAFETY: `settle` runs this conversion on the JavaScript
                // thread with the env of that callback, valid until it returns,
                // and the pair's values are created in it.
                |env, (old, new)| unsafe {
                    let pair = [
                        conv::opt_buffer(env, old.as_deref())?,
                        conv::opt_buffer(env, new.as_deref())?,
                    ];
                    conv::array(env, &pair)
                },
            )
        })
    }

    /// Atomic update of the whole table: `fn(key, value)` for every entry,
    /// with the rule of `update`. Resolves to `[oldPairs, newPairs]`, the
    /// entries that changed, sorted by key.
    #[napi(
        ts_args_type = "fn: UpdateAllFn",
        ts_return_type = "Promise<[Array<[Buffer, Buffer]>, Array<[Buffer, Buffer]>]>"
    )]
    pub fn update_all(&self, env: Env, f: Unknown) -> Result<Raw> {
        promise::run(&env, || {
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it, which is what
            // `fn2` requires; the resulting function is thread-safe.
            let f = Arc::new(unsafe { callbacks::fn2(env.raw(), f.raw(), "the update function") }?);
            let t = self.inner.clone();
            promise::spawn(
                &env,
                async move {
                    let thrown = Arc::new(Mutex::new(None));
                    let slot = thrown.clone();
                    let result = t
                        .update_all_with(move |k, v| {
                            let f = f.clone();
                            let slot = slot.clone();
                            let k = k.to_vec();
                            async move { outcome(callbacks::call2(&f, k, Some(v)).await, &slot) }
                        })
                        .await;
                    result.map_err(|e| update_failure(e, &thrown))
                },
                // SAFETY: `settle` runs this conversion on the JavaScript
                // thread with the env of that callback, valid until it returns,
                // and the pair's values are created in it.
                |env, (old, new)| unsafe {
                    let pair = [conv::pairs(env, &old)?, conv::pairs(env, &new)?];
                    conv::array(env, &pair)
                },
            )
        })
    }

    /// Sets (or with `null` removes) this node's conflict handler for the table.
    #[napi(ts_args_type = "handler: ConflictHandler | null")]
    pub fn set_conflict_handler(&self, env: Env, handler: Unknown) -> Result<()> {
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it.
        let h = unsafe { crate::node::handler(env.raw(), handler.raw()) }?;
        self.inner.set_conflict_handler(h).js()
    }

    /// The table's conflict log (versions that lost a merge without a
    /// handler's decision), oldest first.
    #[napi(ts_return_type = "ConflictRecord[]")]
    pub fn conflicts(&self, env: Env) -> Result<Raw> {
        let log = self.inner.conflicts().js()?;
        let env = env.raw();
        let mut items = Vec::with_capacity(log.len());
        for c in log {
            // SAFETY: `env` is the env napi-rs passed this method, valid for
            // this call, and `o` is the object just created in it.
            unsafe {
                let o = conv::object(env)?;
                conv::set_property(env, o, c"key", conv::buffer(env, &c.key)?)?;
                conv::set_property(env, o, c"kept", conv::opt_buffer(env, c.kept.as_deref())?)?;
                conv::set_property(env, o, c"lost", conv::opt_buffer(env, c.lost.as_deref())?)?;
                conv::set_property(env, o, c"peer", conv::js_string(env, &c.peer)?)?;
                conv::set_property(env, o, c"at", conv::number(env, c.at_ms as f64)?)?;
                items.push(o);
            }
        }
        // SAFETY: `env` is valid for this call and the items were just created
        // in it.
        Ok(Raw(unsafe { conv::array(env, &items) }?))
    }
}
