//! `loadgen`: the command-line face of `benches/harness` for `benches/compare.sh`.
//! Standard library only; built with `rustc -O --edition 2021 benches/loadgen/loadgen.rs`.
//!
//! loadgen freeport                                  print a free loopback port
//! loadgen haproxy-config HOST:PORT                  print the HAProxy config used everywhere
//! loadgen activate PORT_FILE -- CMD [ARGS...]       bind 127.0.0.1:0, write the port to
//!                                                   PORT_FILE, exec CMD with it as fd 3
//! loadgen coldstart SAMPLES MIN_MS MAX_MS PROXY    cold-start delays (ms), one per line,
//!                                                   then `median_ms=`
//! loadgen rss CONNS PROXY                           peak RSS: `idle_kib= loaded_kib=`
//!
//! PROXY is a name (rsproxyd, ssp, ssp+guard, haproxy), started as the criterion bench starts
//! it, or `-- CMD [ARGS...]` with `{BACKEND}` standing for the backend's HOST:PORT.
//! Environment: RSPROXYD_BIN (default target/release/rsproxyd), GUARD_SH (default
//! benches/guard.sh), TMPDIR (HAProxy configs).

#[path = "../harness/mod.rs"]
mod harness;

use std::ffi::OsString;
use std::io;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "usage: loadgen freeport | haproxy-config ADDR | activate PORT_FILE -- CMD... | \
         coldstart SAMPLES MIN_MS MAX_MS PROXY | rss CONNS PROXY \
         (PROXY: rsproxyd|ssp|ssp+guard|haproxy|-- CMD... with {BACKEND})",
    )
}

/// Splits `ARGS... -- CMD...` into the words before `--` (as strings) and the command.
fn split_command(args: &[OsString]) -> io::Result<(Vec<String>, Vec<OsString>)> {
    let sep = args.iter().position(|a| a == "--").ok_or_else(usage)?;
    let head = args[..sep]
        .iter()
        .map(|a| a.to_str().map(str::to_owned).ok_or_else(usage))
        .collect::<io::Result<Vec<_>>>()?;
    let cmd = args[sep + 1..].to_vec();
    if cmd.is_empty() {
        return Err(usage());
    }
    Ok((head, cmd))
}

/// How to start the proxy under test: a known proxy by name, or a command template.
enum ProxySpec {
    Named(harness::Proxy, harness::Programs),
    Template(Vec<OsString>),
}

impl ProxySpec {
    fn command(&self, backend: &str) -> io::Result<Vec<OsString>> {
        match self {
            ProxySpec::Template(t) => Ok(harness::substitute(t, backend)),
            ProxySpec::Named(proxy, programs) => proxy
                .argv(programs, backend, &std::env::temp_dir())?
                .ok_or_else(|| io::Error::other("direct has no proxy process to measure")),
        }
    }
}

/// Parses `WORDS... PROXY` or `WORDS... -- CMD...`; returns the leading words and the proxy.
fn split_proxy(args: &[OsString]) -> io::Result<(Vec<String>, ProxySpec)> {
    if args.iter().any(|a| a == "--") {
        let (head, cmd) = split_command(args)?;
        return Ok((head, ProxySpec::Template(cmd)));
    }
    let (name, head) = args.split_last().ok_or_else(usage)?;
    let name = name.to_str().ok_or_else(usage)?;
    let proxy = harness::Proxy::parse(name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown proxy: {name}"),
        )
    })?;
    let env_or = |key: &str, default: &str| std::env::var_os(key).unwrap_or(default.into());
    let programs = harness::Programs::new(
        env_or("RSPROXYD_BIN", "target/release/rsproxyd"),
        env_or("GUARD_SH", "benches/guard.sh"),
    );
    let head = head
        .iter()
        .map(|a| a.to_str().map(str::to_owned).ok_or_else(usage))
        .collect::<io::Result<Vec<_>>>()?;
    Ok((head, ProxySpec::Named(proxy, programs)))
}

fn number<T: std::str::FromStr>(word: &str) -> io::Result<T> {
    word.parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("not a number: {word}")))
}

fn run(args: &[OsString]) -> io::Result<()> {
    let sub = args.first().and_then(|a| a.to_str()).ok_or_else(usage)?;
    let rest = &args[1..];
    match sub {
        "freeport" => {
            println!("{}", harness::free_port()?);
            Ok(())
        }
        "haproxy-config" => {
            let addr = rest.first().and_then(|a| a.to_str()).ok_or_else(usage)?;
            print!("{}", harness::haproxy_config(addr));
            Ok(())
        }
        "activate" => {
            let (head, cmd) = split_command(rest)?;
            let [port_file] = head.as_slice() else {
                return Err(usage());
            };
            let listener = harness::loopback_listener()?;
            let port = listener.local_addr()?.port();
            // write then rename, so a reader never sees a partial number
            let tmp = format!("{port_file}.tmp");
            std::fs::write(&tmp, format!("{port}\n"))?;
            std::fs::rename(&tmp, port_file)?;
            Err(harness::exec_activated(listener, &cmd))
        }
        "coldstart" => {
            let (head, spec) = split_proxy(rest)?;
            let command = |backend: &str| spec.command(backend);
            let [samples, lo, hi] = head.as_slice() else {
                return Err(usage());
            };
            let samples: usize = number(samples)?;
            let lo = Duration::from_millis(number(lo)?);
            let hi = Duration::from_millis(number(hi)?);
            let mut jitter = harness::Jitter::from_clock();
            let mut delays = Vec::with_capacity(samples);
            let mut failures = 0;
            for _ in 0..samples {
                let bind_after = jitter.between(lo, hi);
                match harness::cold_start_trial(&command, bind_after) {
                    Ok(d) => {
                        let ms = d.as_secs_f64() * 1e3;
                        println!("{ms:.3}");
                        delays.push(ms);
                    }
                    Err(e) => {
                        eprintln!("loadgen: cold start trial failed: {e}");
                        failures += 1;
                    }
                }
            }
            let median = harness::median(&mut delays)
                .ok_or_else(|| io::Error::other("every cold start trial failed"))?;
            println!("median_ms={median:.3} failures={failures}");
            Ok(())
        }
        "rss" => {
            let (head, spec) = split_proxy(rest)?;
            let command = |backend: &str| spec.command(backend);
            let [conns] = head.as_slice() else {
                return Err(usage());
            };
            let rss = harness::rss_trial(&command, number(conns)?)?;
            println!("idle_kib={} loaded_kib={}", rss.idle_kib, rss.loaded_kib);
            Ok(())
        }
        _ => Err(usage()),
    }
}
