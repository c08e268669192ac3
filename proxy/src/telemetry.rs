//! The proxy's metrics: their names, help texts and labels, in one place, recorded
//! through the `metrics` facade and rendered in Prometheus' text format by
//! `metrics-exporter-prometheus` (served by `exporter`). Names follow Prometheus'
//! conventions: `portcullis_` first, counters end in `_total`, base units
//! (`_seconds`, `_bytes`); labels take values from small fixed sets, or the names of
//! listeners and plugins from the configuration — never an address or a login.
//!
//! Without `[metrics]` no recorder is installed and [`on`] is false: the places that
//! would build labels skip it, and the handles made at start-up are no-ops.

use std::sync::{
    OnceLock,
    atomic::{AtomicBool, Ordering},
};

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::smtp::Command;

static ON: AtomicBool = AtomicBool::new(false);

/// True once the recorder is installed.
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Latency buckets, in seconds: 100 µs to 30 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

pub(crate) const SESSIONS: &str = "portcullis_sessions_total";
pub(crate) const SESSIONS_OPEN: &str = "portcullis_sessions_open";
pub(crate) const CONNECTIONS_REFUSED: &str = "portcullis_connections_refused_total";
pub(crate) const REPLIES: &str = "portcullis_replies_total";
pub(crate) const MESSAGES: &str = "portcullis_messages_total";
pub(crate) const MESSAGE_BYTES: &str = "portcullis_message_bytes_total";
pub(crate) const UPSTREAM_CONNECTS: &str = "portcullis_upstream_connects_total";
pub(crate) const UPSTREAM_ERRORS: &str = "portcullis_upstream_errors_total";
pub(crate) const UPSTREAM_REPLY: &str = "portcullis_upstream_reply_seconds";
pub(crate) const UPSTREAM_SERVER_FAILURES: &str = "portcullis_upstream_server_failures_total";
pub(crate) const UPSTREAM_SERVER_UP: &str = "portcullis_upstream_server_up";
pub(crate) const PLUGIN_CALLS: &str = "portcullis_plugin_calls_total";
pub(crate) const PLUGIN_CALL: &str = "portcullis_plugin_call_seconds";
pub(crate) const PLUGIN_FAULTS: &str = "portcullis_plugin_faults_total";
pub(crate) const PLUGIN_SHADOW: &str = "portcullis_plugin_shadow_verdicts_total";
pub(crate) const PLUGIN_INSTANCES: &str = "portcullis_plugin_instances";
pub(crate) const TLS_HANDSHAKES: &str = "portcullis_tls_handshakes_total";
pub(crate) const TLS_FAILURES: &str = "portcullis_tls_handshake_failures_total";
pub(crate) const AUTH: &str = "portcullis_auth_total";
pub(crate) const KV_ENTRIES: &str = "portcullis_kv_entries";
pub(crate) const KV_ERRORS: &str = "portcullis_kv_errors_total";
pub(crate) const RELOADS: &str = "portcullis_reloads_total";

/// Installs the recorder and describes every metric; the handle renders them.
pub(crate) fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .map_err(|error| error.to_string())?
        .install_recorder()
        .map_err(|error| error.to_string())?;
    describe();
    let _ = HANDLES.set(Handles::new());
    ON.store(true, Ordering::Relaxed);
    Ok(handle)
}

/// The stages replies are counted by (`stage` of `portcullis_replies_total`).
pub(crate) const STAGES: [&str; 8] = [
    "connect", "helo", "auth", "mail", "rcpt", "data", "starttls", "other",
];

/// The upstream's steps (`step` of `portcullis_upstream_reply_seconds`).
const STEPS: [&str; 8] = [
    "connect", "greeting", "ehlo", "xclient", "tls", "command", "data", "data_end",
];

const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// The handles of the metrics counted once or more per message, made at
/// installation, so counting is an index and an atomic add rather than a lookup of
/// the name and labels in the registry.
struct Handles {
    replies: [[Counter; 4]; 8],
    upstream_reply: [Histogram; 8],
}

impl Handles {
    fn new() -> Self {
        Self {
            replies: STAGES.map(|stage| {
                CLASSES.map(|class| counter!(REPLIES, "stage" => stage, "class" => class))
            }),
            upstream_reply: STEPS.map(|step| histogram!(UPSTREAM_REPLY, "step" => step)),
        }
    }
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Records an upstream reply's time at `step` (one of [`STEPS`]).
pub(crate) fn upstream_reply(step: &str, seconds: f64) {
    if let Some(handles) = HANDLES.get()
        && let Some(index) = STEPS.iter().position(|known| *known == step)
    {
        handles.upstream_reply[index].record(seconds);
    }
}

fn describe() {
    describe_counter!(SESSIONS, "Client sessions accepted, per listener.");
    describe_gauge!(SESSIONS_OPEN, "Client sessions open now, per listener.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused before a session, per listener and reason."
    );
    describe_counter!(
        REPLIES,
        "Replies sent to clients, per stage and code class (2xx, 3xx, 4xx, 5xx)."
    );
    describe_counter!(
        MESSAGES,
        "Messages per listener and outcome: accepted, refused, tempfailed, discarded, quarantined."
    );
    describe_counter!(
        MESSAGE_BYTES,
        Unit::Bytes,
        "Octets of message content read from clients, per listener."
    );
    describe_counter!(
        UPSTREAM_CONNECTS,
        "Upstream sessions opened (handshake done) or failed to open."
    );
    describe_counter!(UPSTREAM_ERRORS, "Upstream failures, per kind.");
    describe_counter!(
        UPSTREAM_SERVER_FAILURES,
        "Times an upstream server failed before a session's client heard anything (the session went to the next), per upstream and server (its place in the list, 1 first)."
    );
    describe_gauge!(
        UPSTREAM_SERVER_UP,
        "1 while an upstream server takes sessions, 0 while it is passed over after a failure; per upstream and server (its place in the list, 1 first)."
    );
    describe_histogram!(
        UPSTREAM_REPLY,
        Unit::Seconds,
        "Time from a command to the upstream's reply, per step."
    );
    describe_counter!(
        PLUGIN_CALLS,
        "Plugin hook calls, per plugin, hook and verdict."
    );
    describe_histogram!(
        PLUGIN_CALL,
        Unit::Seconds,
        "Plugin hook call time, per plugin and hook."
    );
    describe_counter!(
        PLUGIN_FAULTS,
        "Failed plugin calls, per plugin and kind: trap, timeout, memory, invalid."
    );
    describe_counter!(
        PLUGIN_SHADOW,
        "What plugins in shadow would have decided, per plugin, hook and verdict (never applied)."
    );
    describe_gauge!(PLUGIN_INSTANCES, "Plugin instances alive now.");
    describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes with clients, per protocol version."
    );
    describe_counter!(TLS_FAILURES, "TLS handshakes with clients that failed.");
    describe_counter!(
        AUTH,
        "AUTH outcomes: success, failure, throttled (refused for earlier failures)."
    );
    describe_gauge!(
        KV_ENTRIES,
        "Entries in the plugins' key-value store (the memory store only)."
    );
    describe_counter!(
        KV_ERRORS,
        "Calls to the key-value store (Redis) that failed, per kind: timeout, unavailable."
    );
    describe_counter!(
        RELOADS,
        "Reloads (SIGHUP or portcullis reload), per outcome: ok, failed (nothing changed)."
    );
}

/// The outcome of a message, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageOutcome {
    /// The upstream took it (2xx) and no plugin discarded or quarantined it.
    Accepted,
    /// 5xx to the client.
    Refused,
    /// 4xx to the client.
    Tempfailed,
    /// A plugin discarded it: 250 to the client, nothing upstream.
    Discarded,
    /// Delivered into quarantine.
    Quarantined,
}

impl MessageOutcome {
    const ALL: [MessageOutcome; 5] = [
        MessageOutcome::Accepted,
        MessageOutcome::Refused,
        MessageOutcome::Tempfailed,
        MessageOutcome::Discarded,
        MessageOutcome::Quarantined,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            MessageOutcome::Accepted => "accepted",
            MessageOutcome::Refused => "refused",
            MessageOutcome::Tempfailed => "tempfailed",
            MessageOutcome::Discarded => "discarded",
            MessageOutcome::Quarantined => "quarantined",
        }
    }
}

/// The `hook` labels of `portcullis_plugin_calls_total`, in the order of the hook
/// stages (connect first).
pub(crate) const HOOKS: [&str; 7] = [
    "connect",
    "helo",
    "auth",
    "mail",
    "rcpt",
    "data",
    "session-end",
];
/// Its `verdict` labels; `failed` is a call that ended in a fault.
pub(crate) const VERDICTS: [&str; 7] = [
    "continue",
    "accept",
    "reject",
    "tempfail",
    "discard",
    "disconnect",
    "failed",
];

/// One plugin's call counters and latency histograms, each made on its first use
/// (so only series that happen show up) and kept, so that counting a call is an
/// atomic add rather than a lookup in the recorder's registry.
#[derive(Debug)]
pub(crate) struct PluginMeters {
    plugin: std::sync::Arc<str>,
    calls: [[OnceLock<Counter>; VERDICTS.len()]; HOOKS.len()],
    latency: [OnceLock<Histogram>; HOOKS.len()],
}

impl PluginMeters {
    pub(crate) fn new(plugin: std::sync::Arc<str>) -> Self {
        Self {
            plugin,
            calls: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            latency: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Counts a call of the hook `hook` (index into [`HOOKS`]) that ended in
    /// `verdict` (index into [`VERDICTS`]) after `seconds`.
    pub(crate) fn call(&self, hook: usize, verdict: usize, seconds: f64) {
        if !on() {
            return;
        }
        let (hook, verdict) = (hook.min(HOOKS.len() - 1), verdict.min(VERDICTS.len() - 1));
        let plugin = || metrics::SharedString::from_shared(self.plugin.clone());
        self.calls[hook][verdict]
            .get_or_init(|| {
                counter!(PLUGIN_CALLS, "plugin" => plugin(), "hook" => HOOKS[hook], "verdict" => VERDICTS[verdict])
            })
            .increment(1);
        self.latency[hook]
            .get_or_init(|| histogram!(PLUGIN_CALL, "plugin" => plugin(), "hook" => HOOKS[hook]))
            .record(seconds);
    }
}

/// One listener's handles, made at start-up so counting a session or a message is
/// an atomic add.
#[derive(Debug, Clone)]
pub(crate) struct ListenerMeters {
    pub(crate) sessions: Counter,
    pub(crate) open: Gauge,
    messages: [Counter; 5],
    pub(crate) bytes: Counter,
}

impl ListenerMeters {
    pub(crate) fn new(listener: &str) -> Self {
        let name = listener.to_string();
        Self {
            sessions: counter!(SESSIONS, "listener" => name.clone()),
            open: gauge!(SESSIONS_OPEN, "listener" => name.clone()),
            messages: MessageOutcome::ALL.map(|outcome| {
                counter!(MESSAGES, "listener" => name.clone(), "outcome" => outcome.label())
            }),
            bytes: counter!(MESSAGE_BYTES, "listener" => name),
        }
    }

    /// Counts one message.
    pub(crate) fn message(&self, outcome: MessageOutcome) {
        self.messages[outcome as usize].increment(1);
    }
}

/// Counts a reply sent to a client at `stage` (an index into [`STAGES`]).
pub(crate) fn reply_sent(stage: usize, code: u16) {
    if let Some(handles) = HANDLES.get() {
        let class = usize::from((code / 100).clamp(2, 5) - 2);
        handles.replies[stage.min(STAGES.len() - 1)][class].increment(1);
    }
}

/// Counts a TLS handshake with a client: its version (`"TLSv1.3"`), or a failure.
pub(crate) fn tls_handshake(version: Option<&str>) {
    if !on() {
        return;
    }
    match version {
        Some("TLSv1.3") => counter!(TLS_HANDSHAKES, "version" => "TLSv1.3").increment(1),
        Some("TLSv1.2") => counter!(TLS_HANDSHAKES, "version" => "TLSv1.2").increment(1),
        Some(_) => counter!(TLS_HANDSHAKES, "version" => "other").increment(1),
        None => counter!(TLS_FAILURES).increment(1),
    }
}

/// Counts an AUTH outcome: `"success"`, `"failure"` or `"throttled"`.
pub(crate) fn auth(outcome: &'static str) {
    if on() {
        counter!(AUTH, "outcome" => outcome).increment(1);
    }
}

/// Counts a connection refused before its session, on `listener`, for `reason`.
pub(crate) fn refused(listener: &str, reason: &'static str) {
    if on() {
        counter!(CONNECTIONS_REFUSED, "listener" => listener.to_string(), "reason" => reason)
            .increment(1);
    }
}

/// The stage of the replies to `command`: an index into [`STAGES`].
pub(crate) fn stage_of(command: &Command) -> usize {
    match command {
        Command::Helo(_) | Command::Ehlo(_) => 1,
        Command::Auth(_) => 2,
        Command::Mail(_) => 3,
        Command::Rcpt(_) => 4,
        Command::Data => 5,
        Command::StartTls => 6,
        _ => OTHER,
    }
}

/// The stage of a greeting.
pub(crate) const CONNECT: usize = 0;
/// The stage of anything else.
pub(crate) const OTHER: usize = 7;
