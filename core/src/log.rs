//! Engine logs for applications. lbmkv logs with `tracing`; this module hands
//! each of its records (level, target and the formatted message with its
//! fields) to one sink per process: the C callback, Python's `logging`, a
//! Node.js function or the command's stderr. The surfaces only convert.
//!
//! A Rust application that has its own `tracing` subscriber sees lbmkv's
//! records there and needs none of this.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::error::{Error, Result};

/// How much lbmkv logs, from nothing to everything. The numbers are stable
/// (the C API uses them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum LogLevel {
    /// Nothing.
    Off = 0,
    /// Failures that lose something or stop a part of the node.
    Error = 1,
    /// Refused peers (wrong cookie, protocol version), dropped connections,
    /// partial partitions.
    Warn = 2,
    /// Nodes started, peers up and down.
    Info = 3,
    /// Dial failures, refused connections, events.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl LogLevel {
    /// The level of this number (`0` off ... `5` trace), if there is one.
    pub fn from_number(n: u32) -> Option<LogLevel> {
        Some(match n {
            0 => LogLevel::Off,
            1 => LogLevel::Error,
            2 => LogLevel::Warn,
            3 => LogLevel::Info,
            4 => LogLevel::Debug,
            5 => LogLevel::Trace,
            _ => return None,
        })
    }

    /// The level named `name` (`off`, `error`, `warn`, `info`, `debug`,
    /// `trace`, any case; `warning` too).
    pub fn parse(name: &str) -> Result<LogLevel> {
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(Error::invalid(format!(
                    "log level {name:?} is not one of off, error, warn, info, debug, trace"
                )))
            }
        })
    }

    /// The lower-case name (`"warn"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    fn of(level: &tracing::Level) -> LogLevel {
        match *level {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        }
    }

    fn filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            LogLevel::Off => LevelFilter::OFF,
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

/// One log record, lent to the sink for the duration of its call.
#[derive(Clone, Copy, Debug)]
pub struct LogRecord<'a> {
    /// Never [`LogLevel::Off`].
    pub level: LogLevel,
    /// Where it comes from: the module path, such as `lbmkv::cluster::membership`.
    pub target: &'a str,
    /// The message followed by its fields, `dial refused: ... node=a#12 target=10.0.0.2:7000`.
    pub message: &'a str,
}

/// Where records go. It is called on whatever thread logged, lbmkv's
/// runtime threads included, possibly on several at once; it should return
/// quickly and must not call blocking lbmkv functions.
pub type LogSink = Arc<dyn Fn(&LogRecord<'_>) + Send + Sync>;

static SINK: RwLock<Option<LogSink>> = RwLock::new(None);
static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Off as u8);
/// Whether this module's subscriber is the process's global one.
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Sends lbmkv's records up to `level` to `sink`, from now on, for every
/// node of the process; replaces the sink set before, which is dropped once
/// no call to it is running. `LogLevel::Off` or no sink stops forwarding.
///
/// The first call makes this module's subscriber the process's global
/// `tracing` subscriber; it fails with `InvalidArgument` when the
/// application installed one of its own (which then receives lbmkv's
/// records itself).
pub fn set_log_sink(level: LogLevel, sink: Option<LogSink>) -> Result<()> {
    let installed = *INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Forward);
        tracing::subscriber::set_global_default(subscriber).is_ok()
    });
    if !installed {
        return Err(Error::invalid(
            "the process already has a global tracing subscriber: lbmkv's logs go to it",
        ));
    }
    let level = if sink.is_some() { level } else { LogLevel::Off };
    let old = {
        let mut slot = SINK.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *slot, sink.filter(|_| level != LogLevel::Off))
    };
    LEVEL.store(level as u8, Ordering::Release);
    // Call sites cache whether they are enabled: ask them again.
    tracing::callsite::rebuild_interest_cache();
    // Outside the lock: dropping a sink may run foreign code (a finalizer).
    drop(old);
    Ok(())
}

/// The level set by the last [`set_log_sink`].
pub fn log_level() -> LogLevel {
    LogLevel::from_number(LEVEL.load(Ordering::Acquire).into()).unwrap_or(LogLevel::Off)
}

fn wanted(meta: &Metadata<'_>) -> bool {
    meta.is_event()
        && meta.target().starts_with("lbmkv")
        && LogLevel::of(meta.level()) <= log_level()
}

/// The layer that formats records and hands them to the sink.
struct Forward;

impl<S: Subscriber> Layer<S> for Forward {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if wanted(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        wanted(meta)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(log_level().filter())
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if !wanted(meta) {
            return;
        }
        let Some(sink) = SINK.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let mut text = Text::default();
        event.record(&mut text);
        let mut message = text.message;
        if !text.fields.is_empty() {
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(&text.fields);
        }
        sink(&LogRecord {
            level: LogLevel::of(meta.level()),
            target: meta.target(),
            message: &message,
        });
    }
}

/// The message and the other fields as `key=value`.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            return;
        }
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}={value:?}", field.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn levels_parse_by_name_and_number() {
        assert_eq!(LogLevel::parse("WARNING").unwrap(), LogLevel::Warn);
        assert_eq!(LogLevel::parse("debug").unwrap(), LogLevel::Debug);
        assert!(LogLevel::parse("loud").is_err());
        for n in 0..=5 {
            let level = LogLevel::from_number(n).unwrap();
            assert_eq!(level as u32, n);
            assert_eq!(LogLevel::parse(level.name()).unwrap(), level);
        }
        assert_eq!(LogLevel::from_number(6), None);
    }

    #[test]
    fn records_up_to_the_level_reach_the_sink_with_their_fields() {
        let seen: Arc<Mutex<Vec<(LogLevel, String, String)>>> = Arc::default();
        let into = seen.clone();
        // Other tests of this binary log at the same time: keep this module's records.
        let sink: LogSink = Arc::new(move |r: &LogRecord<'_>| {
            if r.target != module_path!() {
                return;
            }
            into.lock()
                .unwrap()
                .push((r.level, r.target.to_string(), r.message.to_string()));
        });
        set_log_sink(LogLevel::Info, Some(sink)).unwrap();
        let peer = "b";
        tracing::info!(%peer, "peer up");
        tracing::debug!("not at info");
        set_log_sink(LogLevel::Off, None).unwrap();
        tracing::warn!("after the sink was removed");
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![(
                LogLevel::Info,
                "lbmkv::log::tests".to_string(),
                "peer up peer=b".to_string()
            )]
        );
    }
}
