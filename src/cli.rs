//! The command line: systemd-socket-proxyd's spellings, its error texts, and the new options.

use std::ffi::OsString;
use std::time::Duration;

use clap::Parser;

use crate::keepalive::Mode as KeepaliveMode;
use crate::limits::{
    DEFAULT_CONNECTIONS_MAX, DEFAULT_CONNECTION_IDLE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_SESSION_TIMEOUT, DEFAULT_THREADS, MAX_THREADS,
};
use crate::number::parse_c_unsigned;
use crate::proxy_header::Version;
use crate::target::Target;

/// Bidirectionally proxy local sockets passed by systemd to another socket, waiting for a
/// backend that is still starting.
#[derive(Parser, Debug)]
#[command(
    name = "rsproxyd",
    version,
    about,
    long_about = None,
    override_usage = "rsproxyd [OPTIONS] TARGET",
    // As with getopt in the original, a repeated option takes its last value.
    args_override_self = true,
    after_help = "TARGET is HOST:PORT, [IPV6]:PORT, /path/to/unix.sock or @abstract-name.\n\
                  TIME is a systemd time span: 500ms, 30s, 5min, '1h 30min', a bare number \
                  of seconds, or infinity.\n\
                  Start rsproxyd from a .socket unit, or under systemd-socket-activate."
)]
pub struct Args {
    /// Allow at most N relayed connections at once; others wait in the socket's queue.
    /// Datagram sockets: at most N client sessions; a new client beyond them is dropped
    #[arg(
        short = 'c',
        long = "connections-max",
        value_name = "N",
        allow_hyphen_values = true
    )]
    connections_max: Option<String>,

    /// Exit after TIME without connections or datagrams, counted from start-up too
    #[arg(long = "exit-idle-time", value_name = "TIME")]
    exit_idle_time: Option<String>,

    /// How long a client may wait for the backend to start listening (0: one attempt)
    #[arg(long = "connect-timeout", value_name = "TIME")]
    connect_timeout: Option<String>,

    /// How long relays in flight may finish after SIGTERM before rsproxyd exits anyway
    #[arg(long = "drain-timeout", value_name = "TIME")]
    drain_timeout: Option<String>,

    /// Exit when the backend goes away or never comes up, so the next connection
    /// re-activates the proxy unit and, through Wants=, the backend
    #[arg(long = "follow-backend")]
    follow_backend: bool,

    /// Datagram sockets: end a client's session after TIME with no datagram either way
    /// (default 60s)
    #[arg(long = "session-timeout", value_name = "TIME")]
    session_timeout: Option<String>,

    /// Event-loop threads (1: a single thread, the most efficient per connection)
    #[arg(long = "threads", value_name = "N")]
    threads: Option<String>,

    /// Send the backend a PROXY protocol header (v1 or v2) with the client's address first
    #[arg(long = "proxy-protocol", value_name = "VERSION")]
    proxy_protocol: Option<String>,

    /// End a relay after TIME with no byte moved either way: both sides get a FIN
    /// (default: infinity)
    #[arg(long = "connection-idle-timeout", value_name = "TIME")]
    connection_idle_timeout: Option<String>,

    /// Once one side has sent its FIN, end the relay after TIME with no byte moved
    /// (default: infinity)
    #[arg(long = "half-close-timeout", value_name = "TIME")]
    half_close_timeout: Option<String>,

    /// How long a client may wait for a -c slot before it is closed unserved (default: the
    /// connect timeout; 0: refuse at once, as systemd-socket-proxyd 261)
    #[arg(long = "queue-timeout", value_name = "TIME")]
    queue_timeout: Option<String>,

    /// TCP keepalive on client connections: auto (keep the .socket unit's KeepAlive*=,
    /// else idle 60s, 10s interval, 6 probes) or off
    #[arg(long = "keepalive", value_name = "auto|off")]
    keepalive: Option<String>,

    /// Experimental (built only with the cargo feature `kernel-relay`): relay established
    /// TCP connections inside the kernel (BPF sockmap); needs CAP_BPF and CAP_NET_ADMIN,
    /// otherwise one warning and the relay stays in user space
    #[cfg(feature = "kernel-relay")]
    #[arg(long = "kernel-relay")]
    kernel_relay: bool,

    /// Where to relay connections to
    #[arg(value_name = "TARGET", num_args = 0..)]
    targets: Vec<String>,
}

/// Everything the daemon needs from its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub target: Target,
    pub connections_max: usize,
    /// `None` is infinity.
    pub exit_idle_time: Option<Duration>,
    /// `None` is infinity.
    pub connect_timeout: Option<Duration>,
    pub drain_timeout: Duration,
    pub follow_backend: bool,
    /// Datagram sessions end after this long with no datagram either way; `None` is infinity.
    pub session_timeout: Option<Duration>,
    /// Event-loop threads.
    pub threads: usize,
    /// `--proxy-protocol`: the header version sent first to the backend, if any.
    pub proxy_protocol: Option<Version>,
    /// `--connection-idle-timeout`; `None` is infinity.
    pub idle_timeout: Option<Duration>,
    /// `--half-close-timeout`; `None` is infinity.
    pub half_close_timeout: Option<Duration>,
    /// `--queue-timeout`; `None` is infinity.
    pub queue_timeout: Option<Duration>,
    /// `--keepalive`.
    pub keepalive: KeepaliveMode,
    /// `--kernel-relay`: move TCP relays into a BPF sockmap where the kernel allows it.
    #[cfg(feature = "kernel-relay")]
    pub kernel_relay: bool,
}

/// A command line that cannot be run. The texts keep systemd-socket-proxyd's where users
/// grep for them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("Not enough parameters.\nUsage: rsproxyd [OPTIONS] TARGET (see --help)")]
    NotEnoughParameters,
    #[error("Too many parameters: {0:?}.\nUsage: rsproxyd [OPTIONS] TARGET (exactly one TARGET)")]
    TooManyParameters(Vec<String>),
    #[error(
        "Failed to parse --connections-max= argument: {0} (expected a whole number, 1 or more)"
    )]
    ConnectionsMax(String),
    #[error("Failed to parse --{flag}= argument: {value} ({why})")]
    Time {
        flag: &'static str,
        value: String,
        why: String,
    },
    #[error("Failed to parse --threads= argument: {0} (expected a whole number from 1 to {max})", max = MAX_THREADS)]
    Threads(String),
    #[error("Failed to parse --proxy-protocol= argument: {0} (expected one of: {accepted})", accepted = Version::ACCEPTED)]
    ProxyProtocol(String),
    #[error("Failed to parse --keepalive= argument: {0} (expected auto or off)")]
    Keepalive(String),
    #[error("Failed to parse TARGET: {0}")]
    Target(#[from] crate::target::TargetError),
}

/// What parsing the command line led to.
#[derive(Debug)]
pub enum Parsed {
    Run(Config),
    /// `--help` or `--version`: print this and exit 0.
    Info(String),
}

/// Parses the command line. Errors from clap itself (unknown flags, missing values) are
/// returned as their rendered text, already naming the flag.
pub fn parse<I, T>(args: I) -> Result<Parsed, String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Args::try_parse_from(args) {
        Ok(args) => args
            .into_config()
            .map(Parsed::Run)
            .map_err(|e| e.to_string()),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                Ok(Parsed::Info(e.render().to_string()))
            }
            _ => Err(e.render().to_string().trim_end().to_string()),
        },
    }
}

impl Args {
    fn into_config(self) -> Result<Config, CliError> {
        let connections_max = match self.connections_max {
            None => DEFAULT_CONNECTIONS_MAX,
            // As the original reads it (safe_atou: 0x10 is 16, 010 is 8), into an unsigned int.
            Some(v) => match parse_c_unsigned(&v, u32::MAX.into()).map(usize::try_from) {
                Some(Ok(n)) if n >= 1 => n,
                _ => return Err(CliError::ConnectionsMax(v)),
            },
        };
        let exit_idle_time = parse_time_flag("exit-idle-time", self.exit_idle_time, None)?;
        let connect_timeout = parse_time_flag(
            "connect-timeout",
            self.connect_timeout,
            Some(DEFAULT_CONNECT_TIMEOUT),
        )?;
        let drain_timeout = parse_time_flag(
            "drain-timeout",
            self.drain_timeout,
            Some(DEFAULT_DRAIN_TIMEOUT),
        )?
        .unwrap_or(Duration::MAX);
        let session_timeout = parse_time_flag(
            "session-timeout",
            self.session_timeout,
            Some(DEFAULT_SESSION_TIMEOUT),
        )?;
        let idle_timeout = parse_time_flag(
            "connection-idle-timeout",
            self.connection_idle_timeout,
            DEFAULT_CONNECTION_IDLE_TIMEOUT,
        )?;
        let half_close_timeout = parse_time_flag(
            "half-close-timeout",
            self.half_close_timeout,
            DEFAULT_CONNECTION_IDLE_TIMEOUT,
        )?;
        // As HAProxy's `timeout queue` defaults to its `timeout connect`.
        let queue_timeout = parse_time_flag("queue-timeout", self.queue_timeout, connect_timeout)?;
        let keepalive = match self.keepalive.as_deref().map(str::trim) {
            None | Some("auto") => KeepaliveMode::Auto,
            Some("off") => KeepaliveMode::Off,
            Some(_) => return Err(CliError::Keepalive(self.keepalive.unwrap_or_default())),
        };
        let threads = match self.threads {
            None => DEFAULT_THREADS,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_THREADS).contains(&n) => n,
                _ => return Err(CliError::Threads(v)),
            },
        };
        let proxy_protocol = match self.proxy_protocol {
            None => None,
            Some(v) => match Version::parse(&v) {
                Some(version) => Some(version),
                None => return Err(CliError::ProxyProtocol(v)),
            },
        };
        let target = match self.targets.as_slice() {
            [] => return Err(CliError::NotEnoughParameters),
            [one] => one.parse()?,
            _ => return Err(CliError::TooManyParameters(self.targets)),
        };
        Ok(Config {
            target,
            connections_max,
            exit_idle_time,
            connect_timeout,
            drain_timeout,
            follow_backend: self.follow_backend,
            session_timeout,
            threads,
            proxy_protocol,
            idle_timeout,
            half_close_timeout,
            queue_timeout,
            keepalive,
            #[cfg(feature = "kernel-relay")]
            kernel_relay: self.kernel_relay,
        })
    }
}

fn parse_time_flag(
    flag: &'static str,
    value: Option<String>,
    default: Option<Duration>,
) -> Result<Option<Duration>, CliError> {
    match value {
        None => Ok(default),
        Some(v) => parse_timespan(&v).map_err(|why| CliError::Time {
            flag,
            value: v,
            why,
        }),
    }
}

/// Parses a systemd.time(7) span (`30s`, `5min`, `1h 30min`, `500ms`, a bare number of
/// seconds, `infinity`). Returns `None` for infinity.
pub fn parse_timespan(s: &str) -> Result<Option<Duration>, String> {
    crate::timespan::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["rsproxyd"];
        argv.extend_from_slice(args);
        match parse(argv)? {
            Parsed::Run(c) => Ok(c),
            Parsed::Info(i) => Err(format!("info: {i}")),
        }
    }

    /// Every spelling systemd-socket-proxyd accepts gives the same settings here.
    #[test]
    fn drop_in_spellings() {
        let table: Vec<(Vec<&str>, usize, Option<Duration>)> = vec![
            (vec!["127.0.0.1:80"], 256, None),
            (vec!["--connections-max=10", "127.0.0.1:80"], 10, None),
            (vec!["--connections-max", "10", "127.0.0.1:80"], 10, None),
            (vec!["-c10", "127.0.0.1:80"], 10, None),
            (vec!["-c", "10", "127.0.0.1:80"], 10, None),
            (vec!["127.0.0.1:80", "-c", "1"], 1, None),
            // The original reads -c with safe_atou(): base 0, leading space and + allowed.
            (vec!["-c", "0x10", "127.0.0.1:80"], 16, None),
            (vec!["-c", "010", "127.0.0.1:80"], 8, None),
            (vec!["-c", " +5", "127.0.0.1:80"], 5, None),
            (
                vec!["--exit-idle-time=5min", "127.0.0.1:80"],
                256,
                Some(Duration::from_secs(300)),
            ),
            (
                vec!["--exit-idle-time", "1h 30min", "127.0.0.1:80"],
                256,
                Some(Duration::from_secs(5400)),
            ),
            (
                vec!["--exit-idle-time=500ms", "127.0.0.1:80"],
                256,
                Some(Duration::from_millis(500)),
            ),
            (
                vec!["--exit-idle-time=7", "127.0.0.1:80"],
                256,
                Some(Duration::from_secs(7)),
            ),
            (vec!["--exit-idle-time=infinity", "127.0.0.1:80"], 256, None),
            (
                vec!["--exit-idle-time=0", "127.0.0.1:80"],
                256,
                Some(Duration::ZERO),
            ),
        ];
        for (args, conns, idle) in table {
            let c = run(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(c.connections_max, conns, "{args:?}");
            assert_eq!(c.exit_idle_time, idle, "{args:?}");
            assert_eq!(c.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT), "{args:?}");
            assert!(!c.follow_backend);
        }
    }

    /// The new options parse, with 0 meaning a single attempt and infinity no limit.
    #[test]
    fn new_options() {
        let c = run(&[
            "--connect-timeout=0",
            "--drain-timeout=2s",
            "--follow-backend",
            "/run/x.sock",
        ])
        .unwrap();
        assert_eq!(c.connect_timeout, Some(Duration::ZERO));
        assert_eq!(c.drain_timeout, Duration::from_secs(2));
        assert!(c.follow_backend);
        let c = run(&["--connect-timeout=infinity", "@x"]).unwrap();
        assert_eq!(c.connect_timeout, None);
        assert_eq!(c.threads, DEFAULT_THREADS);
        assert_eq!(run(&["--threads=4", "@x"]).unwrap().threads, 4);
        assert_eq!(run(&["@x"]).unwrap().proxy_protocol, None);
        for (args, want) in [
            (&["--proxy-protocol=v1", "@x"][..], Version::V1),
            (&["--proxy-protocol", "v2", "@x"][..], Version::V2),
            (
                &["--proxy-protocol=v2", "--proxy-protocol=v1", "@x"][..],
                Version::V1,
            ),
        ] {
            assert_eq!(run(args).unwrap().proxy_protocol, Some(want), "{args:?}");
        }
        assert_eq!(c.session_timeout, Some(DEFAULT_SESSION_TIMEOUT));
        let c = run(&["--session-timeout=5s", "@x"]).unwrap();
        assert_eq!(c.session_timeout, Some(Duration::from_secs(5)));
        let c = run(&["--session-timeout=infinity", "@x"]).unwrap();
        assert_eq!(c.session_timeout, None);
    }

    /// The timeout options parse; --queue-timeout follows --connect-timeout unless given.
    #[test]
    fn timeout_options() {
        let c = run(&["@x"]).unwrap();
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.half_close_timeout, None);
        assert_eq!(c.queue_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(c.keepalive, KeepaliveMode::Auto);
        let c = run(&[
            "--connection-idle-timeout=2s",
            "--half-close-timeout=500ms",
            "--connect-timeout=3s",
            "--keepalive=off",
            "@x",
        ])
        .unwrap();
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.half_close_timeout, Some(Duration::from_millis(500)));
        assert_eq!(c.queue_timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.keepalive, KeepaliveMode::Off);
        let c = run(&["--queue-timeout=0", "--connect-timeout=infinity", "@x"]).unwrap();
        assert_eq!(c.queue_timeout, Some(Duration::ZERO));
        let c = run(&["--connect-timeout=infinity", "@x"]).unwrap();
        assert_eq!(c.queue_timeout, None);
    }

    /// Bad command lines are refused with a message naming the flag or value.
    #[test]
    fn bad_command_lines() {
        let table: Vec<(Vec<&str>, &str)> = vec![
            (vec![], "Not enough parameters."),
            (vec!["-c", "5"], "Not enough parameters."),
            (vec!["a:1", "b:2"], "Too many parameters"),
            (
                vec!["-c", "0", "a:1"],
                "Failed to parse --connections-max= argument: 0",
            ),
            (
                vec!["-c", "-3", "a:1"],
                "Failed to parse --connections-max= argument: -3",
            ),
            (
                vec!["-cfoo", "a:1"],
                "Failed to parse --connections-max= argument: foo",
            ),
            (
                vec!["--connections-max=", "a:1"],
                "Failed to parse --connections-max= argument: ",
            ),
            (
                vec!["--connections-max=99999999999999999999999", "a:1"],
                "--connections-max=",
            ),
            (vec!["-c", "08", "a:1"], "--connections-max= argument: 08"),
            (vec!["-c", "5 ", "a:1"], "--connections-max= argument: 5 "),
            (
                vec!["-c", "4294967296", "a:1"],
                "--connections-max= argument: 4294967296",
            ),
            (
                vec!["--exit-idle-time=5x", "a:1"],
                "Failed to parse --exit-idle-time= argument: 5x",
            ),
            (
                vec!["--exit-idle-time=", "a:1"],
                "Failed to parse --exit-idle-time= argument: ",
            ),
            (
                vec!["--exit-idle-time=-1s", "a:1"],
                "--exit-idle-time= argument: -1s",
            ),
            (
                vec!["--connect-timeout=soon", "a:1"],
                "--connect-timeout= argument: soon",
            ),
            (
                vec!["--drain-timeout=1e3", "a:1"],
                "--drain-timeout= argument: 1e3",
            ),
            (
                vec!["--session-timeout=1x", "a:1"],
                "Failed to parse --session-timeout= argument: 1x",
            ),
            (
                vec!["--queue-timeout=never", "a:1"],
                "Failed to parse --queue-timeout= argument: never",
            ),
            (
                vec!["--connection-idle-timeout=-2s", "a:1"],
                "--connection-idle-timeout= argument: -2s",
            ),
            (
                vec!["--half-close-timeout=", "a:1"],
                "--half-close-timeout= argument: ",
            ),
            (
                vec!["--keepalive=yes", "a:1"],
                "Failed to parse --keepalive= argument: yes (expected auto or off)",
            ),
            (vec!["--bogus", "a:1"], "--bogus"),
            (
                vec!["--proxy-protocol=v3", "a:1"],
                "Failed to parse --proxy-protocol= argument: v3 (expected one of: v1, v2)",
            ),
            (
                vec!["--proxy-protocol=", "a:1"],
                "Failed to parse --proxy-protocol= argument:  (expected one of: v1, v2)",
            ),
            (
                vec!["--proxy-protocol=V2", "a:1"],
                "--proxy-protocol= argument: V2",
            ),
            (vec!["--proxy-protocol"], "--proxy-protocol"),
            (vec!["--exit-idle-time"], "--exit-idle-time"),
            (vec!["-c"], "-c"),
            (vec!["127.0.0.1"], "has no port"),
            (vec!["[::1]"], "has no port"),
        ];
        for (args, want) in table {
            let err = run(&args).expect_err(&format!("{args:?} should fail"));
            assert!(err.contains(want), "{args:?}: got {err:?}, want {want:?}");
        }
    }

    /// --help and --version are not errors.
    #[test]
    fn help_and_version() {
        for flag in ["--help", "-h", "--version"] {
            match parse(["rsproxyd", flag]) {
                Ok(Parsed::Info(text)) => assert!(text.contains("rsproxyd"), "{flag}: {text}"),
                other => panic!("{flag}: {other:?}"),
            }
        }
    }
}
