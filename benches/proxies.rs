//! Criterion benches: rsproxyd against systemd-socket-proxyd (and optionally HAProxy) and a
//! direct connection, each proxy a real process started under the LISTEN_FDS harness
//! (`benches/harness`), with in-process tokio backends and clients.
//!
//! ```text
//! cargo bench --bench proxies                         default run, about two minutes
//! RSPROXYD_BENCH_QUICK=1 cargo bench --bench proxies  smoke run, well under a minute
//! RSPROXYD_BENCH_PROXIES=direct,rsproxyd,ssp,haproxy  which proxies (default: no haproxy)
//! RSPROXYD_BIN=/path/to/rsproxyd                      another build of rsproxyd
//! RSPROXYD_BENCH_VERBOSE=1                            let the proxies log to stderr
//! cargo bench --bench proxies -- rr_50conn            criterion's own name filter
//! ```
//!
//! Groups: `bulk` (one stream, bytes/s), `rr_1conn` and `rr_50conn` (64-byte echo round
//! trips), `connect` (connect, one round trip, close; 16 clients in parallel) and
//! `cold_start` (the backend binds 20-120 ms after the client arrived; the reported time is
//! the delay from that bind to the first byte reaching the backend, not the wall time).

mod harness;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use harness::{Instance, Programs, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Size of every request and reply in the round-trip and connect groups.
const MSG_LEN: usize = 64;
/// Connections kept busy at once in `rr_50conn`.
const CONCURRENT_CONNS: usize = 50;
/// Clients opening connections at once in `connect`.
const CONNECT_PARALLEL: usize = 16;
/// Bytes sent per `bulk` iteration (the quick run sends an eighth).
const BULK_BYTES: u64 = 256 << 20;
/// Write size of the bulk sender and read size of the sink.
const CHUNK: usize = 1 << 20;
/// A whole measured batch taking longer than this means a proxy stalled: abort, do not hang.
const BATCH_DEADLINE: Duration = Duration::from_secs(120);
/// Cold-start trials really run per criterion sample (each is ~100 ms of waiting); the
/// returned time is scaled to the iteration count criterion asked for.
const COLD_TRIALS_PER_SAMPLE: u64 = 2;
/// When the backend binds, after the client arrived (uniformly drawn, so a poller's phase
/// does not line up with the bind).
const COLD_BIND_AFTER: (Duration, Duration) =
    (Duration::from_millis(20), Duration::from_millis(120));

/// What to run, from the environment.
struct Settings {
    quick: bool,
    proxies: Vec<Proxy>,
    programs: Programs,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("RSPROXYD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let wanted = std::env::var("RSPROXYD_BENCH_PROXIES")
            .unwrap_or_else(|_| "direct,rsproxyd,ssp".to_owned());
        let programs = Programs::new(
            std::env::var_os("RSPROXYD_BIN").map_or_else(
                || PathBuf::from(env!("CARGO_BIN_EXE_rsproxyd")),
                PathBuf::from,
            ),
            concat!(env!("CARGO_MANIFEST_DIR"), "/benches/guard.sh"),
        );
        let mut proxies = Vec::new();
        for name in wanted.split(',').filter(|n| !n.trim().is_empty()) {
            let Some(proxy) = Proxy::parse(name) else {
                eprintln!("proxies bench: unknown proxy {name:?}, skipped");
                continue;
            };
            let program = match proxy {
                Proxy::Direct => None,
                Proxy::Rsproxyd => Some(&programs.rsproxyd),
                Proxy::Ssp | Proxy::SspGuard => Some(&programs.ssp),
                Proxy::Haproxy => Some(&programs.haproxy),
            };
            if let Some(p) = program.filter(|p| !p.exists()) {
                eprintln!(
                    "proxies bench: {} not found, {} skipped",
                    p.display(),
                    proxy.name()
                );
                continue;
            }
            proxies.push(proxy);
        }
        Settings {
            quick,
            proxies,
            programs,
        }
    }

    /// Proxies for the steady-state groups (the guard only matters at cold start).
    fn steady(&self) -> impl Iterator<Item = Proxy> + '_ {
        self.proxies
            .iter()
            .copied()
            .filter(|p| *p != Proxy::SspGuard)
    }

    /// Proxies that can be cold-started: rsproxyd waits itself, ssp needs the seed's guard.
    fn cold(&self) -> Vec<Proxy> {
        let mut cold = Vec::new();
        if self.proxies.contains(&Proxy::Rsproxyd) {
            cold.push(Proxy::Rsproxyd);
        }
        let ssp = self.proxies.contains(&Proxy::Ssp) || self.proxies.contains(&Proxy::SspGuard);
        if ssp {
            // the guard polls `ss -tln`; without iproute2 it would only ever time out
            if Command::new("ss").arg("-V").output().is_ok() {
                cold.push(Proxy::SspGuard);
            } else {
                eprintln!("proxies bench: ss (iproute2) not found, cold_start/ssp+guard skipped");
            }
        }
        cold
    }

    fn bulk_bytes(&self) -> u64 {
        if self.quick {
            BULK_BYTES / 8
        } else {
            BULK_BYTES
        }
    }

    /// (warm-up, measurement) time per benchmark.
    fn times(&self) -> (Duration, Duration) {
        if self.quick {
            (Duration::from_millis(300), Duration::from_secs(1))
        } else {
            (Duration::from_secs(1), Duration::from_secs(3))
        }
    }
}

/// In-process backends on their own one-worker runtime.
struct Backends {
    _rt: Runtime,
    /// Echoes whatever it reads.
    echo: SocketAddr,
    /// Reads an 8-byte little-endian length and that many bytes, then answers one byte.
    sink: SocketAddr,
}

impl Backends {
    fn start() -> io::Result<Backends> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-backend")
            .enable_all()
            .build()?;
        let (echo, sink) = rt.block_on(async {
            let echo = TcpListener::bind("127.0.0.1:0").await?;
            let sink = TcpListener::bind("127.0.0.1:0").await?;
            Ok::<_, io::Error>((echo, sink))
        })?;
        let (echo_addr, sink_addr) = (echo.local_addr()?, sink.local_addr()?);
        rt.spawn(async move {
            while let Ok((conn, _)) = echo.accept().await {
                tokio::spawn(serve_echo(conn));
            }
        });
        rt.spawn(async move {
            while let Ok((conn, _)) = sink.accept().await {
                tokio::spawn(serve_sink(conn));
            }
        });
        Ok(Backends {
            _rt: rt,
            echo: echo_addr,
            sink: sink_addr,
        })
    }
}

async fn serve_echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn serve_sink(mut conn: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    while let Ok(len) = conn.read_u64_le().await {
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            match conn.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n as u64,
            }
        }
        if conn.write_u8(1).await.is_err() {
            return;
        }
    }
}

/// Everything a group needs.
struct Ctx {
    settings: Settings,
    backends: Backends,
    /// The clients' runtime: one thread (the bench's), so clients cost at most one core.
    client: Runtime,
}

impl Ctx {
    /// Starts `proxy` in front of `backend` and checks one echo or sink exchange goes
    /// through; `None` (with a message) when it does not, so one broken proxy skips itself.
    fn start(&self, proxy: Proxy, backend: SocketAddr) -> Option<Instance> {
        let started = Instance::start(
            proxy,
            &self.settings.programs,
            backend,
            &std::env::temp_dir(),
        )
        .and_then(|mut inst| {
            let check = self.client.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), async {
                    let mut s = TcpStream::connect(inst.addr).await?;
                    if backend == self.backends.sink {
                        s.write_u64_le(1).await?;
                        s.write_u8(0).await?;
                        s.read_u8().await?;
                    } else {
                        round_trip(&mut s, &[7u8; MSG_LEN]).await?;
                    }
                    Ok::<_, io::Error>(())
                })
                .await
            });
            match check {
                Ok(Ok(())) => inst.check_alive().map(|()| inst),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "first exchange timed out",
                )),
            }
        });
        match started {
            Ok(inst) => Some(inst),
            Err(e) => {
                eprintln!(
                    "proxies bench: {} does not work, skipped: {e}",
                    proxy.name()
                );
                None
            }
        }
    }

    /// Runs `work` on the client runtime; a failure or a stall aborts the bench, since the
    /// numbers of a broken run mean nothing.
    fn block<T, F: Future<Output = io::Result<T>>>(&self, what: &str, work: F) -> T {
        match self
            .client
            .block_on(async { tokio::time::timeout(BATCH_DEADLINE, work).await })
        {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!("{what}: stalled for {BATCH_DEADLINE:?}"),
        }
    }

    fn group<'c>(&self, c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
        let (warm, measure) = self.settings.times();
        let mut g = c.benchmark_group(name);
        g.warm_up_time(warm).measurement_time(measure);
        g
    }
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg).await?;
    let mut back = [0u8; MSG_LEN];
    s.read_exact(&mut back[..msg.len()]).await?;
    Ok(())
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// How many of `iters` iterations worker `i` of `n` runs.
fn share(iters: u64, i: usize, n: usize) -> u64 {
    let (i, n) = (i as u64, n as u64);
    iters / n + u64::from(i < iters % n)
}

/// One stream: an 8-byte length, that many bytes, the sink's one-byte ack.
fn bench_bulk(c: &mut Criterion, ctx: &Ctx) {
    let bytes = ctx.settings.bulk_bytes();
    let mut g = ctx.group(c, "bulk");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .throughput(Throughput::Bytes(bytes));
    let chunk = vec![0x5au8; CHUNK];
    for proxy in ctx.settings.steady() {
        let Some(inst) = ctx.start(proxy, ctx.backends.sink) else {
            continue;
        };
        let mut stream = ctx.block("bulk connect", TcpStream::connect(inst.addr));
        g.bench_function(proxy.name(), |b| {
            b.iter_custom(|iters| {
                ctx.block("bulk", async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        stream.write_u64_le(bytes).await?;
                        let mut left = bytes;
                        while left > 0 {
                            let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
                            stream.write_all(&chunk[..n]).await?;
                            left -= n as u64;
                        }
                        stream.read_u8().await?;
                    }
                    Ok(start.elapsed())
                })
            });
        });
    }
    g.finish();
}

/// Ping-pong of 64-byte messages on one connection.
fn bench_rr_1conn(c: &mut Criterion, ctx: &Ctx) {
    let mut g = ctx.group(c, "rr_1conn");
    g.throughput(Throughput::Elements(1));
    let msg = [0x42u8; MSG_LEN];
    for proxy in ctx.settings.steady() {
        let Some(inst) = ctx.start(proxy, ctx.backends.echo) else {
            continue;
        };
        let mut stream = ctx.block("rr_1conn connect", connect(inst.addr));
        g.bench_function(proxy.name(), |b| {
            b.iter_custom(|iters| {
                ctx.block("rr_1conn", async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        round_trip(&mut stream, &msg).await?;
                    }
                    Ok(start.elapsed())
                })
            });
        });
    }
    g.finish();
}

/// 64-byte round trips spread over 50 connections that all run at once; one element is one
/// round trip.
fn bench_rr_50conn(c: &mut Criterion, ctx: &Ctx) {
    let mut g = ctx.group(c, "rr_50conn");
    g.throughput(Throughput::Elements(1));
    for proxy in ctx.settings.steady() {
        let Some(inst) = ctx.start(proxy, ctx.backends.echo) else {
            continue;
        };
        let mut conns = ctx.block("rr_50conn connect", async {
            let mut conns = Vec::with_capacity(CONCURRENT_CONNS);
            for _ in 0..CONCURRENT_CONNS {
                conns.push(connect(inst.addr).await?);
            }
            Ok(conns)
        });
        g.bench_function(proxy.name(), |b| {
            b.iter_custom(|iters| {
                ctx.block("rr_50conn", async {
                    let start = Instant::now();
                    let mut tasks = Vec::with_capacity(CONCURRENT_CONNS);
                    for (i, mut s) in conns.drain(..).enumerate() {
                        let n = share(iters, i, CONCURRENT_CONNS);
                        tasks.push(tokio::spawn(async move {
                            let msg = [0x42u8; MSG_LEN];
                            for _ in 0..n {
                                round_trip(&mut s, &msg).await?;
                            }
                            Ok::<_, io::Error>(s)
                        }));
                    }
                    for task in tasks {
                        conns.push(task.await.map_err(io::Error::other)??);
                    }
                    Ok(start.elapsed())
                })
            });
        });
    }
    g.finish();
}

/// New connections: connect, one 64-byte round trip, close; 16 clients at once.
fn bench_connect(c: &mut Criterion, ctx: &Ctx) {
    let mut g = ctx.group(c, "connect");
    g.throughput(Throughput::Elements(1));
    for proxy in ctx.settings.steady() {
        let Some(inst) = ctx.start(proxy, ctx.backends.echo) else {
            continue;
        };
        let addr = inst.addr;
        g.bench_function(proxy.name(), |b| {
            b.iter_custom(|iters| {
                ctx.block("connect", async {
                    let start = Instant::now();
                    let mut tasks = Vec::with_capacity(CONNECT_PARALLEL);
                    for i in 0..CONNECT_PARALLEL {
                        let n = share(iters, i, CONNECT_PARALLEL);
                        tasks.push(tokio::spawn(async move {
                            let msg = [0x42u8; MSG_LEN];
                            for _ in 0..n {
                                let mut s = connect(addr).await?;
                                round_trip(&mut s, &msg).await?;
                            }
                            Ok::<_, io::Error>(())
                        }));
                    }
                    for task in tasks {
                        task.await.map_err(io::Error::other)??;
                    }
                    Ok(start.elapsed())
                })
            });
        });
    }
    g.finish();
}

/// Socket activation from cold: see `harness::cold_start_trial`. The reported time per
/// iteration is the delay from the backend's bind to the first byte reaching it.
fn bench_cold_start(c: &mut Criterion, ctx: &Ctx) {
    let mut g = ctx.group(c, "cold_start");
    g.sampling_mode(SamplingMode::Flat).sample_size(10);
    let scratch = std::env::temp_dir();
    let mut jitter = harness::Jitter::from_clock();
    for proxy in ctx.settings.cold() {
        let programs = &ctx.settings.programs;
        let command = |backend: &str| {
            proxy
                .argv(programs, backend, &scratch)?
                .ok_or_else(|| io::Error::other("no proxy process"))
        };
        g.bench_function(proxy.name(), |b| {
            b.iter_custom(|iters| {
                let trials = iters.min(COLD_TRIALS_PER_SAMPLE);
                let mut total = Duration::ZERO;
                for _ in 0..trials {
                    let bind_after = jitter.between(COLD_BIND_AFTER.0, COLD_BIND_AFTER.1);
                    total += harness::cold_start_trial(&command, bind_after)
                        .unwrap_or_else(|e| panic!("cold start of {}: {e}", proxy.name()));
                }
                total.mul_f64(iters as f64 / trials as f64)
            });
        });
    }
    g.finish();
}

fn main() {
    let settings = Settings::from_env();
    let backends = Backends::start().expect("start the in-process backends");
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the client runtime");
    let ctx = Ctx {
        settings,
        backends,
        client,
    };
    let mut c = Criterion::default().configure_from_args();
    bench_bulk(&mut c, &ctx);
    bench_rr_1conn(&mut c, &ctx);
    bench_rr_50conn(&mut c, &ctx);
    bench_connect(&mut c, &ctx);
    bench_cold_start(&mut c, &ctx);
    c.final_summary();
}
