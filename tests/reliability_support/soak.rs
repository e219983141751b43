//! The soak engine: seeded random connections (sizes, modes, half-closes, write chunking)
//! from tokio clients through rsproxyd to an in-process backend, every byte compared with
//! the expected data on both sides, and every failure classified as lost, corrupted or hung.
//!
//! Every connection starts with a 17-byte header (mode, length, offset) except the empty
//! one. Payloads are slices of one shared random buffer at a random offset, so a byte that
//! is dropped, repeated, reordered or delivered to the wrong connection shows as a mismatch.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest slack between payload offsets: offsets are drawn from 0..OFFSET_SPAN.
const OFFSET_SPAN: usize = 1 << 20;
/// Size of the header that precedes every payload.
const HEADER: usize = 17;
/// Read buffer of clients and backend.
const READ_BUF: usize = 64 * 1024;
/// Largest single write a client or the backend issues.
const MAX_CHUNK: usize = 256 * 1024;

/// What a connection does; the backend learns it from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Connect and half-close at once without a byte; expect EOF with no byte.
    Empty,
    /// Send the payload and half-close while reading the echo; expect the echo, then EOF.
    EchoHalfClose,
    /// Send the payload, read the whole echo, then close without shutdown(2).
    EchoFullClose,
    /// Send the payload and half-close; the backend replies after EOF with what it got.
    Sink,
    /// The backend sends the payload and half-closes first; the client then sends a trailer
    /// through the half-open connection and half-closes.
    Source,
}

impl Mode {
    fn code(self) -> u8 {
        match self {
            Mode::Empty => 0,
            Mode::EchoHalfClose => 1,
            Mode::EchoFullClose => 2,
            Mode::Sink => 3,
            Mode::Source => 4,
        }
    }

    fn from_code(c: u8) -> Option<Mode> {
        Some(match c {
            1 => Mode::EchoHalfClose,
            2 => Mode::EchoFullClose,
            3 => Mode::Sink,
            4 => Mode::Source,
            _ => return None,
        })
    }
}

/// One planned connection.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub len: usize,
    pub off: usize,
    /// Seeds the write chunking of this connection.
    pub chunks: u64,
    /// A slow reader: pauses now and then, so the relay meets a full socket buffer.
    pub slow: bool,
}

/// How the soak is run.
#[derive(Clone, Debug)]
pub struct Config {
    pub connections: usize,
    /// Client concurrency of each phase (connections are split evenly across phases).
    pub phases: Vec<usize>,
    /// Largest payload.
    pub max_size: usize,
    /// A connection with no progress (no read, write or connect completing) for this long
    /// is counted as hung and abandoned.
    pub hung_after: Duration,
    pub seed: u64,
}

/// The shared payload buffer: `max_size + OFFSET_SPAN` seeded random bytes.
pub fn payload(max_size: usize) -> &'static [u8] {
    static BUF: OnceLock<Vec<u8>> = OnceLock::new();
    let buf = BUF.get_or_init(|| {
        let words = (max_size + OFFSET_SPAN) / 8 + 1;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut v = Vec::with_capacity(words * 8);
        for _ in 0..words {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    });
    assert!(buf.len() >= max_size + OFFSET_SPAN, "payload built smaller");
    buf
}

fn log_uniform(rng: &mut StdRng, lo: usize, hi: usize) -> usize {
    if hi <= lo {
        return lo;
    }
    let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
    (rng.gen_range(a..b).exp() as usize).clamp(lo, hi)
}

/// Draws the connections: sizes from 0 bytes to `max_size` (10% empty payloads, half small,
/// 30% medium, 10% large), modes spread over every half-close variant.
pub fn plans(cfg: &Config) -> Vec<Plan> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    (0..cfg.connections)
        .map(|_| {
            let len = match rng.gen_range(0..100) {
                0..=9 => 0,
                10..=59 => log_uniform(&mut rng, 1, 16 * 1024),
                60..=89 => log_uniform(&mut rng, 16 * 1024, 1 << 20),
                _ => log_uniform(&mut rng, 1 << 20, cfg.max_size),
            };
            let mode = match rng.gen_range(0..100) {
                0..=2 => Mode::Empty,
                3..=37 => Mode::EchoHalfClose,
                38..=54 => Mode::EchoFullClose,
                55..=79 => Mode::Sink,
                _ => Mode::Source,
            };
            Plan {
                mode,
                len: if mode == Mode::Empty { 0 } else { len },
                off: rng.gen_range(0..OFFSET_SPAN),
                chunks: rng.gen(),
                slow: rng.gen_range(0..10) == 0,
            }
        })
        .collect()
}

/// Why a connection did not complete as planned.
#[derive(Debug)]
pub enum Fail {
    /// An error, or EOF before every byte arrived.
    Lost(String),
    /// Bytes that differ from what was sent, or more bytes than were sent.
    Corrupted(String),
    /// No progress for `hung_after`.
    Hung(String),
}

/// Runs one I/O step, turning an error into Lost and no completion within `hung` into Hung.
async fn step<T>(
    what: &str,
    hung: Duration,
    f: impl Future<Output = std::io::Result<T>>,
) -> Result<T, Fail> {
    match tokio::time::timeout(hung, f).await {
        Err(_) => Err(Fail::Hung(format!("no progress for {hung:?} in {what}"))),
        Ok(Err(e)) => Err(Fail::Lost(format!("{what}: {e}"))),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Writes `data` in randomly sized chunks, each write a step.
async fn send_chunked(
    w: &mut (impl AsyncWriteExt + Unpin),
    data: &[u8],
    rng: &mut StdRng,
    hung: Duration,
) -> Result<(), Fail> {
    let mut pos = 0;
    while pos < data.len() {
        let want = log_uniform(rng, 1, MAX_CHUNK).min(data.len() - pos);
        let n = step("write", hung, w.write(&data[pos..pos + want])).await?;
        if n == 0 {
            return Err(Fail::Lost("write returned 0".into()));
        }
        pos += n;
    }
    Ok(())
}

/// Reads and compares with `expect`; with `until_eof`, keeps reading until EOF and fails on
/// extra bytes, otherwise stops once `expect.len()` bytes arrived.
async fn read_verify(
    r: &mut (impl AsyncReadExt + Unpin),
    expect: &[u8],
    until_eof: bool,
    slow: bool,
    hung: Duration,
) -> Result<(), Fail> {
    let mut buf = vec![0u8; READ_BUF];
    let mut pos = 0;
    let mut reads = 0u32;
    loop {
        reads += 1;
        if slow && reads % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await; // a slow consumer
        }
        if !until_eof && pos == expect.len() {
            return Ok(());
        }
        let want = if until_eof {
            READ_BUF
        } else {
            READ_BUF.min(expect.len() - pos)
        };
        let n = step("read", hung, r.read(&mut buf[..want])).await?;
        if n == 0 {
            if pos == expect.len() {
                return Ok(());
            }
            return Err(Fail::Lost(format!(
                "EOF after {pos} of {} bytes",
                expect.len()
            )));
        }
        if pos + n > expect.len() {
            return Err(Fail::Corrupted(format!(
                "{} bytes more than the {} sent",
                pos + n - expect.len(),
                expect.len()
            )));
        }
        if buf[..n] != expect[pos..pos + n] {
            let i = (0..n).find(|&i| buf[i] != expect[pos + i]).unwrap_or(0);
            return Err(Fail::Corrupted(format!(
                "byte {} of {} differs",
                pos + i,
                expect.len()
            )));
        }
        pos += n;
    }
}

fn header(p: &Plan) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0] = p.mode.code();
    h[1..9].copy_from_slice(&(p.len as u64).to_le_bytes());
    h[9..17].copy_from_slice(&(p.off as u64).to_le_bytes());
    h
}

/// Runs one planned connection as a client of `addr`.
pub async fn client(
    addr: SocketAddr,
    p: Plan,
    buf: &'static [u8],
    hung: Duration,
) -> Result<(), Fail> {
    let stream = step("connect", hung, TcpStream::connect(addr)).await?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let data = &buf[p.off..p.off + p.len];
    let mut rng = StdRng::seed_from_u64(p.chunks);
    match p.mode {
        Mode::Empty => {
            step("shutdown", hung, wr.shutdown()).await?;
            read_verify(&mut rd, &[], true, false, hung).await
        }
        Mode::EchoHalfClose => {
            let w = async {
                step("write header", hung, wr.write_all(&header(&p))).await?;
                send_chunked(&mut wr, data, &mut rng, hung).await?;
                step("shutdown", hung, wr.shutdown()).await
            };
            tokio::try_join!(w, read_verify(&mut rd, data, true, p.slow, hung)).map(|_| ())
        }
        Mode::EchoFullClose => {
            let w = async {
                step("write header", hung, wr.write_all(&header(&p))).await?;
                send_chunked(&mut wr, data, &mut rng, hung).await
            };
            tokio::try_join!(w, read_verify(&mut rd, data, false, p.slow, hung))?;
            // Close both directions at once, without shutdown(2) first.
            drop(rd.reunite(wr).expect("halves of one stream"));
            Ok(())
        }
        Mode::Sink => {
            step("write header", hung, wr.write_all(&header(&p))).await?;
            send_chunked(&mut wr, data, &mut rng, hung).await?;
            step("shutdown", hung, wr.shutdown()).await?;
            let mut summary = [0u8; 16];
            step("read summary", hung, rd.read_exact(&mut summary)).await?;
            let got = u64::from_le_bytes(summary[..8].try_into().unwrap());
            let bad_at = u64::from_le_bytes(summary[8..].try_into().unwrap());
            if bad_at != u64::MAX {
                return Err(Fail::Corrupted(format!(
                    "sink saw byte {bad_at} of {} differ",
                    p.len
                )));
            }
            if got != p.len as u64 {
                return Err(Fail::Lost(format!("sink got {got} of {} bytes", p.len)));
            }
            read_verify(&mut rd, &[], true, false, hung).await
        }
        Mode::Source => {
            step("write header", hung, wr.write_all(&header(&p))).await?;
            read_verify(&mut rd, data, true, p.slow, hung).await?;
            // The backend has half-closed; this direction must still carry the trailer.
            step(
                "write trailer",
                hung,
                wr.write_all(&(p.len as u64).to_le_bytes()),
            )
            .await?;
            step("shutdown", hung, wr.shutdown()).await
        }
    }
}

/// What the backend saw.
#[derive(Default)]
pub struct BackendStats {
    pub accepted: AtomicUsize,
    pub finished: AtomicUsize,
    /// Connections open at the backend, counted from accept until just before the backend
    /// half-closes: a relay cannot end (and free its `-c` slot) before that point.
    pub current: AtomicUsize,
    pub max_current: AtomicUsize,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub failures: Mutex<Vec<String>>,
}

/// Counts one backend connection in `current` until released (or dropped).
struct Slot<'a>(&'a BackendStats, bool);

impl<'a> Slot<'a> {
    fn take(st: &'a BackendStats) -> Self {
        let now = st.current.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_current.fetch_max(now, Ordering::SeqCst);
        Slot(st, true)
    }
    fn release(&mut self) {
        if std::mem::take(&mut self.1) {
            self.0.current.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Starts the backend on 127.0.0.1:0 in the current runtime; returns its address.
pub async fn start_backend(buf: &'static [u8], hung: Duration) -> (SocketAddr, Arc<BackendStats>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stats = Arc::new(BackendStats::default());
    let st = stats.clone();
    tokio::spawn(async move {
        let mut n: u64 = 0;
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            n += 1;
            st.accepted.fetch_add(1, Ordering::SeqCst);
            let st = st.clone();
            tokio::spawn(async move {
                let mut slot = Slot::take(&st);
                if let Err(e) = serve(s, &st, &mut slot, buf, hung, n).await {
                    let text = match e {
                        Fail::Lost(t) => format!("lost: {t}"),
                        Fail::Corrupted(t) => format!("corrupted: {t}"),
                        Fail::Hung(t) => format!("hung: {t}"),
                    };
                    st.failures.lock().unwrap().push(text);
                }
                drop(slot);
                st.finished.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, stats)
}

/// Serves one backend connection as its header asks, checking every byte it receives.
async fn serve(
    mut s: TcpStream,
    st: &BackendStats,
    slot: &mut Slot<'_>,
    buf: &'static [u8],
    hung: Duration,
    n: u64,
) -> Result<(), Fail> {
    let _ = s.set_nodelay(true);
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        let k = step("read header", hung, s.read(&mut h[got..])).await?;
        if k == 0 {
            if got == 0 {
                // The empty connection: EOF before any byte.
                slot.release();
                return step("shutdown", hung, s.shutdown()).await;
            }
            return Err(Fail::Lost(format!(
                "EOF inside the header after {got} bytes"
            )));
        }
        got += k;
    }
    let mode =
        Mode::from_code(h[0]).ok_or_else(|| Fail::Corrupted(format!("bad mode {}", h[0])))?;
    let len = u64::from_le_bytes(h[1..9].try_into().unwrap()) as usize;
    let off = u64::from_le_bytes(h[9..17].try_into().unwrap()) as usize;
    if off + len > buf.len() {
        return Err(Fail::Corrupted(format!(
            "header asks for {len} bytes at {off}"
        )));
    }
    let data = &buf[off..off + len];
    let (mut rd, mut wr) = s.split();
    match mode {
        Mode::Empty => unreachable!("mode 0 is never sent"),
        Mode::EchoHalfClose | Mode::EchoFullClose | Mode::Sink => {
            let echo = mode != Mode::Sink;
            let mut rbuf = vec![0u8; READ_BUF];
            let mut pos = 0usize;
            let mut bad_at = u64::MAX;
            loop {
                let k = step("read", hung, rd.read(&mut rbuf)).await?;
                if k == 0 {
                    break;
                }
                st.bytes_in.fetch_add(k as u64, Ordering::Relaxed);
                if bad_at == u64::MAX {
                    let fits = pos + k <= len;
                    let same = fits && rbuf[..k] == data[pos..pos + k];
                    if !same {
                        bad_at = (0..k)
                            .find(|&i| pos + i >= len || rbuf[i] != data[pos + i])
                            .map_or(pos as u64, |i| (pos + i) as u64);
                    }
                }
                pos += k;
                if echo {
                    step("echo", hung, wr.write_all(&rbuf[..k])).await?;
                    st.bytes_out.fetch_add(k as u64, Ordering::Relaxed);
                }
            }
            slot.release();
            if !echo {
                let mut summary = [0u8; 16];
                summary[..8].copy_from_slice(&(pos as u64).to_le_bytes());
                summary[8..].copy_from_slice(&bad_at.to_le_bytes());
                step("write summary", hung, wr.write_all(&summary)).await?;
            }
            step("shutdown", hung, wr.shutdown()).await?;
            if bad_at != u64::MAX {
                return Err(Fail::Corrupted(format!(
                    "{mode:?} connection {n}: received byte {bad_at} of {len} differs"
                )));
            }
            if pos != len {
                return Err(Fail::Lost(format!(
                    "{mode:?} connection {n}: received {pos} of {len} bytes"
                )));
            }
            Ok(())
        }
        Mode::Source => {
            let mut rng = StdRng::seed_from_u64(n ^ off as u64);
            send_chunked(&mut wr, data, &mut rng, hung).await?;
            st.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
            slot.release();
            step("shutdown", hung, wr.shutdown()).await?;
            let mut trailer = Vec::new();
            step("read trailer", hung, rd.read_to_end(&mut trailer)).await?;
            if trailer != (len as u64).to_le_bytes() {
                return Err(Fail::Corrupted(format!(
                    "Source connection {n}: trailer {trailer:?} after the backend's half-close"
                )));
            }
            Ok(())
        }
    }
}

/// The outcome of a soak.
#[derive(Debug, Default)]
pub struct Report {
    pub connections: usize,
    pub completed: usize,
    pub lost: usize,
    pub corrupted: usize,
    pub hung: usize,
    /// Payload bytes the clients sent and received (headers and trailers not counted).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub largest: usize,
    pub modes: Vec<(Mode, usize)>,
    /// The first few failures, for the message.
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

/// Runs the planned connections against `addr`, phase by phase, each phase with its own
/// client concurrency.
pub async fn run(addr: SocketAddr, cfg: &Config) -> Report {
    let buf = payload(cfg.max_size);
    let plans = plans(cfg);
    let start = Instant::now();
    let mut report = Report {
        connections: plans.len(),
        ..Report::default()
    };
    let mut modes: std::collections::HashMap<Mode, usize> = Default::default();
    for p in &plans {
        *modes.entry(p.mode).or_default() += 1;
        report.largest = report.largest.max(p.len);
        let (sent, received) = match p.mode {
            Mode::Empty => (0, 0),
            Mode::EchoHalfClose | Mode::EchoFullClose => (p.len, p.len),
            Mode::Sink => (p.len, 0),
            Mode::Source => (0, p.len),
        };
        report.bytes_sent += sent as u64;
        report.bytes_received += received as u64;
    }
    report.modes = modes.into_iter().collect();
    report.modes.sort_by_key(|(m, _)| m.code());
    let per_phase = plans.len().div_ceil(cfg.phases.len().max(1));
    let mut plans = plans.into_iter().enumerate();
    for &concurrency in &cfg.phases {
        let mut set = tokio::task::JoinSet::new();
        let mut spawned = 0;
        loop {
            while spawned < per_phase && set.len() < concurrency {
                let Some((i, p)) = plans.next() else { break };
                let hung = cfg.hung_after;
                let desc = format!("connection {i} ({:?}, {} bytes)", p.mode, p.len);
                set.spawn(async move { (desc, client(addr, p, buf, hung).await) });
                spawned += 1;
            }
            let Some(done) = set.join_next().await else {
                break;
            };
            let (desc, result) = done.expect("client task panicked");
            match result {
                Ok(()) => report.completed += 1,
                Err(f) => {
                    let text = match &f {
                        Fail::Lost(t) => {
                            report.lost += 1;
                            format!("{desc} lost: {t}")
                        }
                        Fail::Corrupted(t) => {
                            report.corrupted += 1;
                            format!("{desc} corrupted: {t}")
                        }
                        Fail::Hung(t) => {
                            report.hung += 1;
                            format!("{desc} hung: {t}")
                        }
                    };
                    if report.failures.len() < 20 {
                        report.failures.push(text);
                    }
                }
            }
        }
    }
    report.elapsed = start.elapsed();
    report
}
