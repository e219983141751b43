//! Writes the manual page rsproxyd(8) from the clap definition, plus the sections clap
//! cannot know: TARGET forms, time spans, exit status, environment, a unit example.
//!
//! usage: cargo run --example mangen [OUTDIR]   (default: target/man; writes OUTDIR/rsproxyd.8)
//!
//! The page is dated from SOURCE_DATE_EPOCH when that is set (scripts/build-deb.sh sets it to
//! the last commit's time), so the same commit gives the same page.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;
use rsproxyd::cli::Args;
use rsproxyd::limits::{DEFAULT_CONNECTIONS_MAX, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT};

/// Where the example package puts the worked example (kept in step with Cargo.toml's assets).
const EXAMPLES_DIR: &str = "/usr/share/doc/rsproxyd/examples";

fn main() -> ExitCode {
    let out_dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "target/man".into()),
    );
    match write_page(&out_dir) {
        Ok(path) => {
            eprintln!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "mangen: cannot write the manual page to {}: {e}",
                out_dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn write_page(out_dir: &std::path::Path) -> std::io::Result<PathBuf> {
    // The parser applies the defaults itself (the options are strings until validated), so
    // the page is told them here, from the same constants. clap (without its "string"
    // feature) takes only 'static texts; this process writes one page and exits.
    let conns: &'static str = DEFAULT_CONNECTIONS_MAX.to_string().leak();
    let connect: &'static str = span(DEFAULT_CONNECT_TIMEOUT).leak();
    let drain: &'static str = span(DEFAULT_DRAIN_TIMEOUT).leak();
    let mut cmd = Args::command()
        .mut_arg("connections_max", |a| a.default_value(conns))
        .mut_arg("exit_idle_time", |a| a.default_value("infinity"))
        .mut_arg("connect_timeout", |a| a.default_value(connect))
        .mut_arg("drain_timeout", |a| a.default_value(drain))
        // Exactly one TARGET: the parser takes any number to word its own errors.
        .mut_arg("targets", |a| a.required(true).num_args(1));
    // Built, so that --help and --version exist and every argument knows its arity.
    cmd.build();
    let man = Man::new(cmd.clone())
        .section("8")
        .date(page_date())
        .manual("System Administration");

    std::fs::create_dir_all(out_dir)?;
    let path = out_dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    synopsis(&cmd).to_writer(&mut page)?;
    description().to_writer(&mut page)?;
    man.render_options_section(&mut page)?;
    sections().to_writer(&mut page)?;
    std::fs::write(&path, page)?;
    Ok(path)
}

/// SYNOPSIS with each option's value, as the options are written (clap_mangen's own
/// synopsis leaves the values out): `rsproxyd [-c N] [--exit-idle-time=TIME] ... TARGET`.
fn synopsis(cmd: &clap::Command) -> Roff {
    let mut line = vec![bold(cmd.get_name().to_string())];
    // Options in the order --help lists them, --help and --version after them, TARGET last.
    let mut args: Vec<&clap::Arg> = cmd.get_arguments().filter(|a| !a.is_hide_set()).collect();
    args.sort_by_key(|a| {
        let info = matches!(a.get_id().as_str(), "help" | "version");
        (a.is_positional(), info, a.get_display_order())
    });
    for arg in args {
        let value = arg
            .get_value_names()
            .and_then(|v| v.first())
            .filter(|_| arg.get_num_args().is_some_and(|n| n.takes_values()))
            .map(|v| v.to_string());
        line.push(roman(" "));
        if arg.is_positional() {
            line.push(italic(value.unwrap_or_else(|| arg.get_id().to_string())));
            continue;
        }
        line.push(roman("["));
        match (arg.get_short(), arg.get_long(), value) {
            (Some(s), _, Some(v)) => line.extend([bold(format!("-{s}")), roman(" "), italic(v)]),
            (_, Some(l), Some(v)) => line.extend([bold(format!("--{l}=")), italic(v)]),
            (Some(s), Some(l), None) => {
                line.extend([bold(format!("-{s}")), roman("|"), bold(format!("--{l}"))])
            }
            (None, Some(l), None) => line.push(bold(format!("--{l}"))),
            (Some(s), None, None) => line.push(bold(format!("-{s}"))),
            (None, None, _) => {}
        }
        line.push(roman("]"));
    }
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    roff.text(line);
    roff
}

/// A duration as a systemd time span, the way the options take it.
fn span(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// YYYY-MM-DD of SOURCE_DATE_EPOCH, or of today.
fn page_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let (y, m, d) = civil_from_days(secs / 86_400);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's civil_from_days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// A small builder over roff for the hand-written sections.
struct Page(Roff);

impl Page {
    fn section(&mut self, title: &str) -> &mut Self {
        self.0.control("SH", [title]);
        self
    }
    fn para(&mut self, text: impl Into<Vec<Inline>>) -> &mut Self {
        self.0.control("PP", []);
        self.0.text(text);
        self
    }
    /// A tagged paragraph: `tag` on its own line, `text` indented below it.
    fn item(&mut self, tag: impl Into<Vec<Inline>>, text: impl Into<Vec<Inline>>) -> &mut Self {
        self.0.control("TP", []);
        self.0.text(tag);
        self.0.text(text);
        self
    }
    /// Lines shown as they are (no filling), indented.
    fn literal(&mut self, lines: &str) -> &mut Self {
        self.0.control("PP", []);
        self.0.control("RS", ["4"]);
        self.0.control("nf", []);
        for line in lines.lines() {
            self.0.text([roman(line)]);
        }
        self.0.control("fi", []);
        self.0.control("RE", []);
        self
    }
}

/// DESCRIPTION (clap's would only repeat the one-line summary of NAME).
fn description() -> Roff {
    let mut p = Page(Roff::new());
    p.section("DESCRIPTION");
    p.0.text([
        bold("rsproxyd"),
        roman(" is a drop-in replacement for "),
        bold("systemd-socket-proxyd"),
        roman(
            "(8): it takes the same options and TARGET forms, and a few more. It takes the \
             listening sockets that systemd passes in (a .socket unit with Accept=no, or ",
        ),
        bold("systemd-socket-activate"),
        roman(
            "(1)), and relays every client connection to TARGET. It takes a client from the \
             socket's queue only once it holds a connection to the backend, so a backend that \
             is still starting is waited for (up to --connect-timeout) instead of its first \
             clients being refused, and a client it cannot serve stays queued for the next \
             activation.",
        ),
    ]);
    p.para([roman(
        "Small messages are relayed with read and write, bulk transfers with splice(2); a \
         half-close (shutdown of one direction) is passed through. rsproxyd sends READY=1 \
         once it serves, so units can use Type=notify. It exits after --exit-idle-time without \
         connections, and on SIGTERM or SIGINT it stops accepting, lets open transfers finish \
         for up to --drain-timeout, and exits; a second signal ends it at once.",
    )]);
    p.0
}

fn sections() -> Roff {
    let mut p = Page(Roff::new());

    p.section("TARGET");
    p.para([roman(
        "Where connections are relayed to, in one of these forms:",
    )]);
    p.item(
        [italic("HOST"), roman(":"), italic("PORT")],
        [roman(
            "An IPv4 address or a host name, and a port. A name is resolved with the system \
             resolver, every address it has is tried in order, and it is resolved again while \
             rsproxyd waits for a cold backend.",
        )],
    );
    p.item(
        [roman("["), italic("IPV6"), roman("]:"), italic("PORT")],
        [roman("An IPv6 address in brackets, e.g. [::1]:8080.")],
    );
    p.item(
        [italic("/path/to/unix.sock")],
        [roman(
            "A unix stream socket in the file system; the path must be absolute, at most 107 \
             bytes.",
        )],
    );
    p.item(
        [roman("@"), italic("name")],
        [roman("A unix stream socket in the abstract namespace.")],
    );

    p.section("TIME SPANS");
    p.para([
        roman("TIME values are systemd time spans, as in "),
        bold("systemd.time"),
        roman(
            "(7): 500ms, 30s, 5min, \"1h 30min\", a bare number of seconds, or infinity. Every \
             unit needs a number before it.",
        ),
    ]);

    p.section("EXIT STATUS");
    p.item(
        [bold("0")],
        [roman(
            "--help or --version; an idle exit (--exit-idle-time); a stop by SIGTERM or SIGINT, \
             after the drain; an exit through --follow-backend (the backend went away, or did \
             not come up within --connect-timeout); with Accept=yes, the passed connection was \
             relayed.",
        )],
    );
    p.item(
        [bold("1")],
        [roman(
            "An error: a bad command line (the message names the option and its value), no \
             sockets passed in or a broken LISTEN_* environment, a passed Accept=yes connection \
             whose backend never came up, a second signal during the drain, or a failure to \
             start.",
        )],
    );

    p.section("ENVIRONMENT");
    p.item(
        [
            bold("LISTEN_PID"),
            roman(", "),
            bold("LISTEN_FDS"),
            roman(", "),
            bold("LISTEN_FDNAMES"),
        ],
        [
            roman("The sockets passed in, as in "),
            bold("sd_listen_fds"),
            roman(
                "(3): listening stream sockets of any family, or with Accept=yes one connected \
                 socket. Read at start-up and removed from the environment.",
            ),
        ],
    );
    p.item(
        [bold("NOTIFY_SOCKET")],
        [
            roman("Where to send "),
            bold("sd_notify"),
            roman(
                "(3) messages: READY=1 once serving, STATUS= with the connection count, \
                 STOPPING=1 when draining.",
            ),
        ],
    );
    p.item(
        [bold("WATCHDOG_USEC"), roman(", "), bold("WATCHDOG_PID")],
        [roman(
            "When WatchdogSec= is set: WATCHDOG=1 is sent every half WATCHDOG_USEC, if \
             WATCHDOG_PID is unset or is rsproxyd's own pid.",
        )],
    );
    p.item(
        [bold("SYSTEMD_LOG_LEVEL")],
        [roman(
            "Log level, as systemd's tools take it: err, warning, notice, info, debug, or 0 \
             to 7. The default is info, which is quiet while all goes well.",
        )],
    );
    p.item(
        [bold("RUST_LOG")],
        [roman(
            "A tracing filter (e.g. debug, to see each connection open and close); it takes \
             precedence over SYSTEMD_LOG_LEVEL.",
        )],
    );
    p.item(
        [bold("JOURNAL_STREAM")],
        [roman(
            "When it names rsproxyd's standard error, rsproxyd logs through the journal's \
             native protocol, with fields such as BACKEND=, CLIENT=, BYTES_TO_CLIENT=, \
             DURATION_USEC= and CLOSE= (see journalctl -o json); if the journal's socket \
             cannot be reached, log lines carry <N> priority prefixes so the journal files \
             them at the right level.",
        )],
    );

    p.section("EXAMPLES");
    p.para([roman(
        "Try it by hand: a listening socket on port 8080, relayed to a server on 8081 \
         (started before or after the first request):",
    )]);
    p.literal("systemd-socket-activate -l 127.0.0.1:8080 rsproxyd 127.0.0.1:8081");
    p.para([roman(
        "A socket-activated daemon that binds its own port, 127.0.0.1:8081, and exits when \
         idle, behind the public address 127.0.0.1:8080. Enable only the socket \
         (systemctl enable --now app.socket); the first client starts the proxy, which starts \
         the backend through Wants=.",
    )]);
    p.literal(
        "# app.socket
[Socket]
ListenStream=127.0.0.1:8080
[Install]
WantedBy=sockets.target

# app.service
[Unit]
Requires=app.socket
After=app.socket
Wants=app-backend.service
After=app-backend.service
StartLimitIntervalSec=0
[Service]
Type=notify
ExecStart=/usr/bin/rsproxyd --follow-backend --exit-idle-time=5min 127.0.0.1:8081
TimeoutStopSec=45s

# app-backend.service
[Unit]
StartLimitIntervalSec=0
[Service]
Type=exec
ExecStart=/usr/local/bin/app --listen 127.0.0.1:8081",
    );
    p.para([roman(
        "Wants= rather than Requires= or BindsTo=, and --follow-backend: a backend that fails \
         to start then costs its clients --connect-timeout, and leaves the socket listening for \
         the next client instead of failed.",
    )]);
    p.para([
        roman(
            "The package ships templates for this: rsproxyd@.socket and rsproxyd@.service, \
             one instance per daemon, configured by /etc/rsproxyd/NAME.conf. A commented, \
             hardened version of the units above and the steps for the templates are in ",
        ),
        italic(format!("{EXAMPLES_DIR}/")),
        roman("."),
    ]);

    p.section("FILES");
    p.item(
        [
            italic("/usr/lib/systemd/system/rsproxyd@.socket"),
            roman(", "),
            italic("rsproxyd@.service"),
        ],
        [roman(
            "Template units; not enabled. Enable an instance's socket, never the service.",
        )],
    );
    p.item(
        [italic("/etc/rsproxyd/NAME.conf")],
        [roman(
            "Settings of instance NAME: TARGET=, and optionally CONNECT_TIMEOUT=, \
             EXIT_IDLE_TIME=, DRAIN_TIMEOUT=, OPTIONS=.",
        )],
    );
    p.item(
        [italic(EXAMPLES_DIR)],
        [roman(
            "The worked example, its README and every key of NAME.conf explained.",
        )],
    );

    p.section("SEE ALSO");
    let refs = [
        ("systemd-socket-proxyd", "8"),
        ("systemd-socket-activate", "1"),
        ("systemd.socket", "5"),
        ("systemd.service", "5"),
        ("systemd.time", "7"),
        ("sd_listen_fds", "3"),
        ("sd_notify", "3"),
    ];
    let mut line = Vec::new();
    for (i, (name, sec)) in refs.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*name));
        line.push(roman(format!("({sec})")));
    }
    p.0.control("PP", []);
    p.0.text(line);
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Day counts map to the right calendar dates, leap days included.
    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_512), (2026, 2, 28));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    /// Defaults print as the time spans the options accept.
    #[test]
    fn spans() {
        assert_eq!(span(Duration::from_secs(10)), "10s");
        assert_eq!(span(Duration::from_millis(1500)), "1500ms");
    }
}
