//! The kernel relay (`--kernel-relay`): an established TCP relay's bytes moved by the kernel
//! through a BPF sockmap, with user space watching only for the ends (FIN, reset).
//!
//! How it works. Three maps keyed by socket cookie (SO_COOKIE):
//! - the *peer* map (SOCKHASH) holds, under each relayed socket's cookie, its peer socket.
//!   It has no program, so entering it changes nothing about how a socket receives;
//! - the *seq* map (HASH) holds, under each relayed socket's cookie, the TCP sequence number
//!   of the first byte that socket received and nobody has relayed yet;
//! - the *verdict* map (SOCKHASH) holds each relayed socket under its own cookie and carries
//!   an SK_SKB stream-verdict program (written out below in 51 BPF instructions): for each
//!   segment a socket in it receives, it takes off the front whatever came before that
//!   sequence number (a retransmission that overlaps bytes already relayed: the kernel hands
//!   such a segment over whole), moves the number on, looks up the receiving socket's cookie
//!   in the peer map and redirects the rest to that peer's send path
//!   (`bpf_sk_redirect_hash`, flags 0). If a lookup or the trim fails the data stays with the
//!   receiving socket (SK_PASS), never dropped: user space then sees data it should not, and
//!   resets the relay.
//!
//! A relay enters kernel mode in this order: user space first reads each socket's receive
//! queue empty and writes it to the peer; then it reads each socket's receive sequence
//! number into the seq map; then both sockets go into the peer map, then into the verdict
//! map; then SO_RCVLOWAT is set on each, which makes TCP call its data-ready hook, now the
//! sockmap's, so whatever arrived between the user-space read and the insertion is relayed
//! at once and in order (without it, it would wait for the next segment).
//!
//! A FIN on one side: once the peer's TCP send queue has taken every byte received before
//! it (counted with TCP_INFO and SIOCOUTQ, since the sockmap's own queue cannot be seen),
//! the peer is shut down for writing. A reset or an error on either side resets both. Both
//! sockets leave both maps before they are closed.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::cli::Config;
use crate::relay::{set_int_option, tcp_info, Moved, Progress, Timeouts};

// From linux/bpf.h (checked against this machine's header).
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
const BPF_NOEXIST: u64 = 1;
/// A hash map's entries allocated as they are added, not all at creation.
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_GET_SOCKET_COOKIE: i32 = 46;
const BPF_FUNC_SKB_ADJUST_ROOM: i32 = 50;
const BPF_FUNC_SK_REDIRECT_HASH: i32 = 72;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// SK_PASS: a verdict program's "keep it" (or, after a redirect call succeeded, "send it").
const SK_PASS: i32 = 1;
/// SK_DROP: a verdict program's "discard it".
const SK_DROP: i32 = 0;
/// Offset of `len` in struct __sk_buff.
const SKB_LEN: i16 = 0;
/// Offset of `cb[0]` in struct __sk_buff. In an SK_SKB program `cb[0..5]` are the first 20
/// bytes of the kernel skb's control block (`sk_skb_convert_ctx_access`), which for a
/// segment `tcp_read_skb` hands over still hold TCP's `struct tcp_skb_cb`: `seq` first.
const SKB_CB0: i16 = 48;
/// The most `bpf_skb_adjust_room` takes off the front of an SK_SKB skb in one call
/// (`sk_skb_adjust_room` refuses more than 0xfff).
const TRIM_STEP: i32 = 0xfff;
/// How many trims the program makes at most for one segment: 64 * 4,095 = 262,080 bytes
/// of overlap, more than one retransmitted segment holds (64 KiB on loopback).
const TRIM_ROUNDS: i32 = 64;

/// One BPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Insn {
    code: u8,
    /// dst_reg in the low four bits, src_reg in the high four.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// Opcodes used (BPF_CLASS | BPF_OP/BPF_SIZE | BPF_SRC/BPF_MODE).
const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const MOV32_REG: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const MOV32_IMM: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const ADD32_REG: u8 = 0x0c; // BPF_ALU | BPF_ADD | BPF_X
const SUB32_REG: u8 = 0x1c; // BPF_ALU | BPF_SUB | BPF_X
const NEG32: u8 = 0x84; // BPF_ALU | BPF_NEG
const STX_DW: u8 = 0x7b; // BPF_STX | BPF_MEM | BPF_DW
const STX_W: u8 = 0x63; // BPF_STX | BPF_MEM | BPF_W
const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW (two slots)
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const JEQ_IMM: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JNE_IMM: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JEQ32_IMM: u8 = 0x16; // BPF_JMP32 | BPF_JEQ | BPF_K
const JLE32_IMM: u8 = 0xb6; // BPF_JMP32 | BPF_JLE | BPF_K
const JSLE32_IMM: u8 = 0xd6; // BPF_JMP32 | BPF_JSLE | BPF_K
const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// The number of instructions in [`verdict_program`].
const PROGRAM_LEN: usize = 51;

/// The stream-verdict program, with `peer_map` the peer map's fd and `seq_map` the seq
/// map's (see the module's doc):
/// ```text
///  0  r6 = r1                                  ; the __sk_buff
///  1  r2 = skb->len
///  2  r0 = SK_DROP
///  3  if r2 == 0 goto out                      ; a bare FIN: nothing to send (see below)
///  4  r0 = bpf_get_socket_cookie(r1)           ; the receiving socket's cookie
///  5  *(u64 *)(r10 - 8) = r0
///  6  r0 = bpf_map_lookup_elem(seq_map, r10 - 8)
/// 11  if r0 == 0 goto keep                     ; not set up: user space sees it, resets
/// 12  r7 = r0                                  ; &next: the first byte not relayed yet
/// 13  w1 = *next; w2 = skb->cb[0] (the segment's seq); w3 = w2 + skb->len (its end)
/// 17  w4 = w3 - w1; if (s32)w4 <= 0 goto drop  ; nothing after `next` (TCP never queues it)
/// 20  *next = w3
/// 21  w8 = w1 - w2; if (s32)w8 <= 0 goto redirect ; no overlap: the usual case
/// 24  r9 = TRIM_ROUNDS
/// 25  loop: w2 = min(w8, TRIM_STEP); w8 -= w2
/// 29  r0 = bpf_skb_adjust_room(r6, -w2, 0, 0)  ; take w2 bytes off the front
/// 34  if r0 != 0 goto keep
/// 35  if w8 == 0 goto redirect
/// 36  r9 -= 1; if r9 != 0 goto loop            ; else (overlap too long) keep
/// 38  keep: return SK_PASS                     ; kept: user space sees data, resets
/// 40  drop: return SK_DROP
/// 42  redirect: bpf_sk_redirect_hash(r6, peer_map, r10 - 8, 0)
/// 49  r0 = SK_PASS                             ; redirected if found, else kept
/// 50  out: return r0
/// ```
/// A FIN that comes in a segment of its own reaches the program as an empty skb. Redirected,
/// the sockmap's sender would try to send zero bytes, take the 0 for a failure and set EPIPE
/// on the peer (kernel 6.18, seen here). It carries no data, and TCP has already noted the
/// FIN, which user space sees; so it is dropped.
///
/// The overlap: TCP queues a retransmitted segment that starts before what it has received
/// already and ends after it (seq < rcv_nxt < end_seq) whole, leaving readers to skip the
/// part they have (tcp_recvmsg and tcp_read_sock do, by `copied_seq`). `tcp_read_skb`, which
/// hands segments to this program, does not: without the trim the overlap went to the peer
/// a second time (docs/performance.md, "Duplicated segments"). Trimmed, `tcp_eat_skb` also
/// advances the socket's `copied_seq` by what is left, so it stays right.
fn verdict_program(peer_map: RawFd, seq_map: RawFd) -> [Insn; PROGRAM_LEN] {
    [
        /* 0 */ insn(MOV64_REG, 6, 1, 0, 0),
        /* 1 */ insn(LDX_W, 2, 1, SKB_LEN, 0),
        /* 2 */ insn(MOV64_IMM, 0, 0, 0, SK_DROP),
        /* 3 */ insn(JEQ_IMM, 2, 0, 46, 0), // -> 50
        /* 4 */ insn(CALL, 0, 0, 0, BPF_FUNC_GET_SOCKET_COOKIE),
        /* 5 */ insn(STX_DW, 10, 0, -8, 0),
        /* 6 */ insn(LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, seq_map),
        /* 7 */ insn(0, 0, 0, 0, 0),
        /* 8 */ insn(MOV64_REG, 2, 10, 0, 0),
        /* 9 */ insn(ADD64_IMM, 2, 0, 0, -8),
        /* 10 */ insn(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
        /* 11 */ insn(JEQ_IMM, 0, 0, 26, 0), // -> 38
        /* 12 */ insn(MOV64_REG, 7, 0, 0, 0),
        /* 13 */ insn(LDX_W, 1, 7, 0, 0),
        /* 14 */ insn(LDX_W, 2, 6, SKB_CB0, 0),
        /* 15 */ insn(LDX_W, 3, 6, SKB_LEN, 0),
        /* 16 */ insn(ADD32_REG, 3, 2, 0, 0),
        /* 17 */ insn(MOV32_REG, 4, 3, 0, 0),
        /* 18 */ insn(SUB32_REG, 4, 1, 0, 0),
        /* 19 */ insn(JSLE32_IMM, 4, 0, 20, 0), // -> 40
        /* 20 */ insn(STX_W, 7, 3, 0, 0),
        /* 21 */ insn(MOV32_REG, 8, 1, 0, 0),
        /* 22 */ insn(SUB32_REG, 8, 2, 0, 0),
        /* 23 */ insn(JSLE32_IMM, 8, 0, 18, 0), // -> 42
        /* 24 */ insn(MOV64_IMM, 9, 0, 0, TRIM_ROUNDS),
        /* 25 */ insn(MOV32_REG, 2, 8, 0, 0),
        /* 26 */ insn(JLE32_IMM, 2, 0, 1, TRIM_STEP), // -> 28
        /* 27 */ insn(MOV32_IMM, 2, 0, 0, TRIM_STEP),
        /* 28 */ insn(SUB32_REG, 8, 2, 0, 0),
        /* 29 */ insn(NEG32, 2, 0, 0, 0),
        /* 30 */ insn(MOV64_REG, 1, 6, 0, 0),
        /* 31 */ insn(MOV64_IMM, 3, 0, 0, 0),
        /* 32 */ insn(MOV64_IMM, 4, 0, 0, 0),
        /* 33 */ insn(CALL, 0, 0, 0, BPF_FUNC_SKB_ADJUST_ROOM),
        /* 34 */ insn(JNE_IMM, 0, 0, 3, 0), // -> 38
        /* 35 */ insn(JEQ32_IMM, 8, 0, 6, 0), // -> 42
        /* 36 */ insn(ADD64_IMM, 9, 0, 0, -1),
        /* 37 */ insn(JNE_IMM, 9, 0, -13, 0), // -> 25
        /* 38 */ insn(MOV64_IMM, 0, 0, 0, SK_PASS),
        /* 39 */ insn(EXIT, 0, 0, 0, 0),
        /* 40 */ insn(MOV64_IMM, 0, 0, 0, SK_DROP),
        /* 41 */ insn(EXIT, 0, 0, 0, 0),
        /* 42 */ insn(MOV64_REG, 1, 6, 0, 0),
        /* 43 */ insn(LD_IMM64, 2, BPF_PSEUDO_MAP_FD, 0, peer_map),
        /* 44 */ insn(0, 0, 0, 0, 0),
        /* 45 */ insn(MOV64_REG, 3, 10, 0, 0),
        /* 46 */ insn(ADD64_IMM, 3, 0, 0, -8),
        /* 47 */ insn(MOV64_IMM, 4, 0, 0, 0),
        /* 48 */ insn(CALL, 0, 0, 0, BPF_FUNC_SK_REDIRECT_HASH),
        /* 49 */ insn(MOV64_IMM, 0, 0, 0, SK_PASS),
        /* 50 */ insn(EXIT, 0, 0, 0, 0),
    ]
}

/// union bpf_attr for BPF_MAP_CREATE (the fields used).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// union bpf_attr for BPF_MAP_UPDATE_ELEM / BPF_MAP_DELETE_ELEM.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// union bpf_attr for BPF_PROG_LOAD (the fields used).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// union bpf_attr for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Calls bpf(2) with `attr`, one of the attribute structs above.
fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] prefix of union bpf_attr for `cmd`, valid and
    // writable for its full size during the call; any pointers inside it point to memory
    // the caller keeps alive across this call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Takes ownership of an fd bpf(2) returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: bpf(2) just returned this new fd; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn name16(s: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    for (d, b) in n.iter_mut().zip(s.bytes().take(15)) {
        *d = b;
    }
    n
}

/// What failed while setting the kernel relay up, for the one warning at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot create a BPF sockmap ({0}; it needs CAP_BPF and CAP_NET_ADMIN, or root)")]
    Map(io::Error),
    #[error("the kernel refused the stream-verdict program ({0}){1}")]
    Load(io::Error, String),
    #[error("cannot attach the stream-verdict program to the sockmap ({0})")]
    Attach(io::Error),
}

/// The loaded program and its three maps, shared by every relay of the daemon.
#[derive(Debug)]
pub struct KernelRelay {
    verdict_map: OwnedFd,
    peer_map: OwnedFd,
    /// Under each relayed socket's cookie, the sequence number of the first byte it received
    /// that the program has not relayed yet (written by user space once, then by the program).
    seq_map: OwnedFd,
    /// Held so the program stays loaded (the attachment also holds it).
    _prog: OwnedFd,
}

impl KernelRelay {
    /// Creates the maps, sized for `sockets` relayed sockets at once, loads the program and
    /// attaches it.
    pub fn load(sockets: usize) -> Result<Self, SetupError> {
        let max = u32::try_from(sockets.max(2)).unwrap_or(u32::MAX);
        let map = |name: &str, map_type: u32, value_size: u32, map_flags: u32| {
            let mut attr = MapCreateAttr {
                map_type,
                key_size: 8,
                value_size,
                max_entries: max,
                map_flags,
                map_name: name16(name),
                ..Default::default()
            };
            bpf(BPF_MAP_CREATE, &mut attr).map(owned)
        };
        let sockhash = |name: &str| map(name, BPF_MAP_TYPE_SOCKHASH, 8, 0);
        let peer_map = sockhash("rsproxyd_peer").map_err(SetupError::Map)?;
        let verdict_map = sockhash("rsproxyd_verd").map_err(SetupError::Map)?;
        let seq_map = map("rsproxyd_seq", BPF_MAP_TYPE_HASH, 4, BPF_F_NO_PREALLOC)
            .map_err(SetupError::Map)?;
        let program = verdict_program(peer_map.as_raw_fd(), seq_map.as_raw_fd());
        let license = b"Dual MIT/GPL\0";
        let mut log = vec![0u8; 0];
        let load = |log: &mut Vec<u8>| {
            let mut attr = ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_SK_SKB,
                insn_cnt: program.len() as u32,
                insns: program.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level: if log.is_empty() { 0 } else { 1 },
                log_size: log.len() as u32,
                log_buf: if log.is_empty() {
                    0
                } else {
                    log.as_mut_ptr() as u64
                },
                prog_name: name16("rsproxyd_relay"),
                ..Default::default()
            };
            bpf(BPF_PROG_LOAD, &mut attr).map(owned)
        };
        let prog = match load(&mut log) {
            Ok(p) => p,
            Err(e) => {
                // Once more with the verifier's log, to say why.
                log = vec![0u8; 16 * 1024];
                let _ = load(&mut log);
                let text = String::from_utf8_lossy(&log);
                let text = text.trim_end_matches('\0').trim();
                let why = if text.is_empty() {
                    String::new()
                } else {
                    format!(": {}", text.replace('\n', "; "))
                };
                return Err(SetupError::Load(e, why));
            }
        };
        let mut attr = AttachAttr {
            target_fd: verdict_map.as_raw_fd() as u32,
            attach_bpf_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_SK_SKB_STREAM_VERDICT,
            ..Default::default()
        };
        bpf(BPF_PROG_ATTACH, &mut attr).map_err(SetupError::Attach)?;
        Ok(Self {
            verdict_map,
            peer_map,
            seq_map,
            _prog: prog,
        })
    }

    fn update(map: &OwnedFd, key: u64, sock: RawFd) -> io::Result<()> {
        let value = sock as u64;
        let mut attr = MapElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            value: &value as *const u64 as u64,
            flags: BPF_NOEXIST,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// Puts `sock`'s next sequence number to relay (see [`next_read_seq`]) into the seq map
    /// under `key`, its cookie: before it enters the verdict map.
    fn set_seq(&self, key: u64, sock: RawFd) -> io::Result<()> {
        let value: u32 = next_read_seq(sock)?;
        let mut attr = MapElemAttr {
            map_fd: self.seq_map.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            value: &value as *const u32 as u64,
            flags: BPF_NOEXIST,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    fn delete(map: &OwnedFd, key: u64) {
        let mut attr = MapElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            ..Default::default()
        };
        let _ = bpf(BPF_MAP_DELETE_ELEM, &mut attr);
    }
}

/// True if both sockets are TCP over IPv4 or IPv6: only those go into the sockmap.
pub fn eligible(client: impl AsFd, backend: impl AsFd) -> bool {
    fn tcp(fd: BorrowedFd<'_>) -> bool {
        let s = socket2::SockRef::from(&fd);
        matches!(s.domain(), Ok(d) if d == socket2::Domain::IPV4 || d == socket2::Domain::IPV6)
            && matches!(s.protocol(), Ok(Some(p)) if p == socket2::Protocol::TCP)
    }
    tcp(client.as_fd()) && tcp(backend.as_fd())
}

/// A socket's cookie (SO_COOKIE): the key it has in both maps.
fn cookie(fd: RawFd) -> io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `v` is a writable u64 of `len` bytes; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}
/// SIOCINQ (bytes received, not yet read; a FIN not counted) or SIOCOUTQ (bytes in the send
/// queue, not yet acknowledged).
fn queued(fd: RawFd, request: libc::Ioctl) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests write one int to the pointer given.
    let rc = unsafe { libc::ioctl(fd, request, &mut n as *mut libc::c_int) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}

// tcpi_state values of a socket that has received its peer's FIN.
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;

/// Payload bytes a socket has received in all (tcpi_bytes_received counts the FIN's
/// sequence number too; it is taken off).
fn payload_received(info: &libc::tcp_info) -> u64 {
    let fin = matches!(
        info.tcpi_state,
        TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING | TCP_TIME_WAIT
    );
    info.tcpi_bytes_received.saturating_sub(fin as u64)
}

/// Payload bytes a socket that has read its peer's FIN received: tcpi_bytes_received
/// less the FIN's sequence number. (The state cannot tell: a socket that had sent its own
/// FIN first is in TCP_CLOSE by now, not TIME_WAIT, while its fd is open.)
fn before_fin(fd: RawFd) -> io::Result<u64> {
    Ok(tcp_info(fd)?.tcpi_bytes_received.saturating_sub(1))
}

/// Payload bytes user space has taken out of `fd` so far: received less still queued,
/// read with no segment arriving in between.
fn consumed(fd: RawFd) -> io::Result<u64> {
    loop {
        let before = queued(fd, libc::FIONREAD)?;
        let info = tcp_info(fd)?;
        let after = queued(fd, libc::FIONREAD)?;
        if before == after {
            return Ok(payload_received(&info).saturating_sub(before));
        }
    }
}

/// A lower bound of the bytes ever written to `fd`'s send queue (acknowledged plus still
/// queued; an acknowledgement between the two reads makes it low, never high). With
/// `exact`, read again until no acknowledgement came in between.
fn written(fd: RawFd, exact: bool) -> io::Result<u64> {
    loop {
        let acked = tcp_info(fd)?.tcpi_bytes_acked;
        let outq = queued(fd, libc::TIOCOUTQ)?;
        if !exact || tcp_info(fd)?.tcpi_bytes_acked == acked {
            return Ok(acked + outq);
        }
    }
}

// From linux/tcp.h: TCP's repair mode, used only to read a receive sequence number.
const TCP_REPAIR: libc::c_int = 19;
const TCP_REPAIR_QUEUE: libc::c_int = 20;
const TCP_QUEUE_SEQ: libc::c_int = 21;
const TCP_REPAIR_ON: libc::c_int = 1;
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
const TCP_NO_QUEUE: libc::c_int = 0;
const TCP_RECV_QUEUE: libc::c_int = 1;

/// getsockopt(2) of an int value.
fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` is a writable int of `len` bytes; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// The sequence number of the next byte a read from `fd` would return (TCP's `copied_seq`),
/// which is where the verdict program starts: `rcv_nxt` less the bytes still queued, read
/// with no segment arriving in between. `rcv_nxt` is only readable in repair mode
/// (TCP_REPAIR, CAP_NET_ADMIN, which the kernel relay needs anyway): it is switched on for
/// these reads only, and off without a window probe; entering it sets SO_REUSEADDR's flag,
/// which is put back. Nothing is sent or received differently meanwhile (only the send
/// queue's repair mode holds transmissions back, and it is not chosen).
fn next_read_seq(fd: RawFd) -> io::Result<u32> {
    let reuse = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    set_int_option(fd, libc::IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)?;
    let queue = set_int_option(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
    let seq = (|| loop {
        let before = queued(fd, libc::FIONREAD)?;
        let rcv_nxt = getsockopt_int(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)? as u32;
        let after = queued(fd, libc::FIONREAD)?;
        if before == after {
            return Ok::<u32, io::Error>(rcv_nxt.wrapping_sub(before as u32));
        }
    })();
    let no_queue = set_int_option(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
    let off = set_int_option(fd, libc::IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    let back = set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse);
    queue?;
    let seq = seq?;
    no_queue?;
    off?;
    back?;
    Ok(seq)
}

/// Sets SO_RCVLOWAT to 1 (its default), which makes TCP call the socket's data-ready hook
/// when data is queued: once the socket is in the verdict map, that hook is the sockmap's,
/// so data that arrived before the insertion is relayed now rather than at the next segment.
fn kick(fd: RawFd) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, 1)
}

/// The environment variable that lets `--kernel-relay` run although it is known to be
/// unsafe (no backpressure): for tests and benchmarks only.
pub const UNSAFE_ENV: &str = "RSPROXYD_KERNEL_RELAY_UNSAFE";

/// Sets up `--kernel-relay` for the daemon; where it cannot be, one warning says why and
/// every relay stays in user space. The kernel relay cannot see when bytes last moved, so it
/// is not used with `--connection-idle-timeout` or `--half-close-timeout` (the user-space
/// relay enforces them).
pub fn setup(config: &Config) -> Option<Arc<KernelRelay>> {
    if !config.kernel_relay {
        return None;
    }
    if std::env::var(UNSAFE_ENV).as_deref() != Ok("1") {
        tracing::warn!("--kernel-relay: refused: the kernel relay has no backpressure (the kernel holds without limit what a slow receiver has not taken yet) (docs/performance.md, \"The kernel relay\"); {UNSAFE_ENV}=1 runs it anyway, for measurements; relaying in user space");
        return None;
    }
    if config.idle_timeout.is_some() || config.half_close_timeout.is_some() {
        tracing::warn!("--kernel-relay: the kernel relay does not enforce --connection-idle-timeout or --half-close-timeout; relaying in user space");
        return None;
    }
    if !matches!(config.target, crate::target::Target::Inet { .. }) {
        tracing::warn!("--kernel-relay: the backend is a unix socket, which the kernel relay does not take; relaying in user space");
        return None;
    }
    let relays = config
        .connections_max
        .min(crate::limits::KERNEL_RELAY_MAX_RELAYS);
    match KernelRelay::load(2 * relays) {
        Ok(k) => {
            tracing::debug!("kernel relay ready for {relays} connection(s) at once");
            Some(Arc::new(k))
        }
        Err(e) => {
            tracing::warn!("--kernel-relay: {e}; relaying in user space");
            None
        }
    }
}

/// Relays between `client` and `backend` until both directions have seen EOF, or one side
/// fails, counting in `progress`. In the kernel when `kernel` is given and both are TCP
/// sockets; in user space ([`crate::relay::relay_counted`]) otherwise, and also when the
/// maps are full or a side had already sent its FIN before the relay started. This is the
/// one place where that is decided.
pub async fn relay(
    kernel: Option<&KernelRelay>,
    client: &AsyncFd<OwnedFd>,
    backend: &AsyncFd<OwnedFd>,
    limits: Timeouts,
    progress: &Progress,
) -> io::Result<Moved> {
    let kernel = match kernel {
        Some(k) if eligible(client.get_ref(), backend.get_ref()) => k,
        _ => return crate::relay::relay_counted(client, backend, limits, progress).await,
    };
    match kernel_relay(kernel, client, backend, progress).await {
        Ok(Some(())) => Ok(progress.moved()),
        Ok(None) => crate::relay::relay_counted(client, backend, limits, progress).await,
        Err(e) => {
            crate::relay::reset(client);
            crate::relay::reset(backend);
            Err(e)
        }
    }
}

/// One direction of a relay in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Data flows; no FIN yet.
    Open,
    /// The source sent its FIN after `required` bytes (counted from the switch to the
    /// kernel); the destination is shut down once its send queue has taken them all.
    Fin { required: u64 },
    /// The destination was shut down for writing.
    Done,
}

/// Where each direction's count starts: what user space had read from each socket and
/// written to each when the sockets went into the maps.
#[derive(Clone, Copy, Debug)]
struct Baseline {
    read_client: u64,
    read_backend: u64,
    written_backend: u64,
    written_client: u64,
}

/// The relay in the kernel. `Ok(None)`: the sockets could not go into the maps (full) or a
/// side had already finished, nothing was changed, and the caller relays in user space.
async fn kernel_relay(
    k: &KernelRelay,
    client: &AsyncFd<OwnedFd>,
    backend: &AsyncFd<OwnedFd>,
    progress: &Progress,
) -> io::Result<Option<()>> {
    // Bytes already there are read and forwarded here, so no segment is left half read.
    let before = progress.moved().to_backend;
    let client_eof = drain(client, backend, |n| progress.add(n, 0)).await?;
    if progress.moved().to_backend == before {
        // The backend's handshake ACK was held for the client's first bytes, and none were
        // there: it goes now, or a backend that speaks first would wait for Linux's
        // delayed-ACK timer (in the kernel nothing here sees when the client's bytes come).
        crate::relay::ack_now(backend);
    }
    let backend_eof = drain(backend, client, |n| progress.add(0, n)).await?;
    if client_eof || backend_eof {
        return Ok(None);
    }
    let (c, b) = (client.get_ref().as_raw_fd(), backend.get_ref().as_raw_fd());
    let base = Baseline {
        read_client: consumed(c)?,
        read_backend: consumed(b)?,
        written_backend: written(b, true)?,
        written_client: written(c, true)?,
    };
    let mut entries = Entries {
        k,
        keys: [cookie(c)?, cookie(b)?],
        in_seq: [false; 2],
        in_peer: [false; 2],
        in_verdict: [false; 2],
        shut: [false; 2],
        counting: None,
    };
    // Where the program starts on each socket, read before either enters a sockmap (which
    // changes how the socket answers FIONREAD).
    for (i, fd) in [c, b].into_iter().enumerate() {
        match k.set_seq(entries.keys[i], fd) {
            Ok(()) => entries.in_seq[i] = true,
            Err(e) => {
                tracing::debug!(
                    "kernel relay: cannot read or store the receive sequence number ({e}); relaying in user space"
                );
                return Ok(None);
            }
        }
    }
    // The peer map first: it has no program, so nothing moves yet.
    for (i, peer) in [b, c].into_iter().enumerate() {
        match KernelRelay::update(&k.peer_map, entries.keys[i], peer) {
            Ok(()) => entries.in_peer[i] = true,
            Err(e) => {
                tracing::debug!(
                    "kernel relay: sockmap full or refused ({e}); relaying in user space"
                );
                return Ok(None);
            }
        }
    }
    entries.counting = Some((c, b, base, progress));
    if let Err(e) = KernelRelay::update(&k.verdict_map, entries.keys[0], c) {
        // Nothing has moved in the kernel yet.
        tracing::debug!(
            "kernel relay: client refused by the sockmap ({e}); relaying in user space"
        );
        entries.counting = None;
        return Ok(None);
    }
    entries.in_verdict[0] = true;
    if let Err(e) = KernelRelay::update(&k.verdict_map, entries.keys[1], b) {
        // Typically the backend's FIN came in just now (the sockmap takes only established
        // sockets). What the client sent since it went in may have been redirected: stop
        // that, let it all reach the backend's send queue, then go on in user space.
        tracing::debug!(
            "kernel relay: backend refused by the sockmap ({e}); relaying in user space"
        );
        KernelRelay::delete(&k.verdict_map, entries.keys[0]);
        entries.in_verdict[0] = false;
        let mut waits = 0;
        while written(b, false)?.saturating_sub(base.written_backend)
            < consumed(c)?.saturating_sub(base.read_client)
        {
            // A send that failed in the kernel leaves its error on the backend socket.
            if let Some(e) = socket2::SockRef::from(backend.get_ref()).take_error()? {
                return Err(e);
            }
            pause(waits).await;
            waits += 1;
        }
        let moved = written(b, false)?.saturating_sub(base.written_backend);
        entries.counting = None;
        progress.add(moved, 0);
        return Ok(None);
    }
    entries.in_verdict[1] = true;
    kick(c)?;
    kick(b)?;
    tracing::debug!("relayed in the kernel");

    // [client -> backend, backend -> client]
    let mut dirs = [Direction::Open; 2];
    let mut waits: u32 = 0;
    loop {
        deliver_fin(&mut dirs[0], b, base.written_backend)?;
        deliver_fin(&mut dirs[1], c, base.written_client)?;
        entries.shut = [dirs[0] == Direction::Done, dirs[1] == Direction::Done];
        if dirs == [Direction::Done; 2] {
            return Ok(Some(()));
        }
        let pending = dirs.iter().any(|d| matches!(d, Direction::Fin { .. }));
        if !pending {
            waits = 0;
        }
        tokio::select! {
            r = watch(client, dirs[0] == Direction::Open) => {
                r.inspect_err(|e| tracing::debug!("kernel relay: client side: {e}"))?;
                dirs[0] = Direction::Fin {
                    required: before_fin(c)?.saturating_sub(base.read_client),
                };
            }
            r = watch(backend, dirs[1] == Direction::Open) => {
                r.inspect_err(|e| tracing::debug!("kernel relay: backend side: {e}"))?;
                dirs[1] = Direction::Fin {
                    required: before_fin(b)?.saturating_sub(base.read_backend),
                };
            }
            _ = pause(waits), if pending => waits += 1,
        }
    }
}

/// Shuts `dst` down for writing once a FIN is pending and `dst` has taken every byte that
/// came before it.
fn deliver_fin(dir: &mut Direction, dst: RawFd, written_before: u64) -> io::Result<()> {
    if let Direction::Fin { required } = *dir {
        if written(dst, false)?.saturating_sub(written_before) >= required {
            match nix::sys::socket::shutdown(dst, nix::sys::socket::Shutdown::Write) {
                Ok(()) | Err(nix::errno::Errno::ENOTCONN) => *dir = Direction::Done,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Waits before looking again whether a FIN can be passed on: the sockmap's worker usually
/// has sent everything by the time user space sees the FIN, so first only a yield.
async fn pause(waits: u32) {
    if waits < crate::limits::KERNEL_RELAY_FIN_YIELDS {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(crate::limits::KERNEL_RELAY_FIN_POLL).await;
    }
}

/// Waits until `fd` reports its FIN (`Ok`) while `open`, or an error at any time (`Err`).
/// Data the verdict program moved wakes nobody; data left to user space here would mean
/// the pairing broke, and is an error rather than bytes relayed out of order.
async fn watch(fd: &AsyncFd<OwnedFd>, open: bool) -> io::Result<()> {
    let interest = if open {
        Interest::READABLE | Interest::ERROR
    } else {
        Interest::ERROR
    };
    loop {
        let mut guard = fd.ready(interest).await?;
        let sock = socket2::SockRef::from(fd.get_ref());
        if let Some(e) = sock.take_error()? {
            return Err(e);
        }
        if !open {
            guard.clear_ready();
            continue;
        }
        let mut one = [0u8; 1];
        match nix::sys::socket::recv(
            fd.get_ref().as_raw_fd(),
            &mut one,
            nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                return Err(io::Error::other(
                    "kernel relay: data was left to user space (the sockmap pairing broke)",
                ))
            }
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => guard.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads what `src` holds now and writes it all to `dst`, until a read comes back short
/// (the receive queue was emptied whole). True if `src` is at EOF.
async fn drain(
    src: &AsyncFd<OwnedFd>,
    dst: &AsyncFd<OwnedFd>,
    count: impl Fn(u64),
) -> io::Result<bool> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.is_empty() {
            if queued(src.get_ref().as_raw_fd(), libc::FIONREAD)? == 0 {
                // Nothing queued; a read tells EOF from nothing yet.
                let mut one = [0u8; 1];
                return match nix::sys::socket::recv(
                    src.get_ref().as_raw_fd(),
                    &mut one,
                    nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(0) => Ok(true),
                    Ok(_) => {
                        buf = vec![0u8; crate::limits::COPY_BUFFER];
                        continue;
                    }
                    Err(nix::errno::Errno::EAGAIN) => Ok(false),
                    Err(e) => Err(e.into()),
                };
            }
            buf = vec![0u8; crate::limits::COPY_BUFFER];
        }
        let n = match nix::unistd::read(src.get_ref().as_raw_fd(), &mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => return Ok(false),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut off = 0;
        while off < n {
            let mut guard = dst.writable().await?;
            match guard
                .try_io(|d| nix::unistd::write(d.get_ref(), &buf[off..n]).map_err(io::Error::from))
            {
                Ok(Ok(w)) => off += w,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        count(n as u64);
        if n < buf.len() {
            return Ok(false);
        }
    }
}

/// A relay's map entries: removed from both maps when it ends, however it ends (also when
/// the drain is cut and the future dropped), before its sockets are closed. Adds the bytes
/// the kernel moved to the relay's progress then.
struct Entries<'a> {
    k: &'a KernelRelay,
    /// The client's and the backend's cookies.
    keys: [u64; 2],
    in_seq: [bool; 2],
    in_peer: [bool; 2],
    in_verdict: [bool; 2],
    /// Whether the backend and the client were shut down for writing (their FIN is in the
    /// count of bytes written, and is taken off).
    shut: [bool; 2],
    /// The client's and the backend's fds, where counting started, and where to add.
    counting: Option<(RawFd, RawFd, Baseline, &'a Progress)>,
}

impl Drop for Entries<'_> {
    fn drop(&mut self) {
        for i in 0..2 {
            if self.in_verdict[i] {
                KernelRelay::delete(&self.k.verdict_map, self.keys[i]);
            }
        }
        for i in 0..2 {
            if self.in_peer[i] {
                KernelRelay::delete(&self.k.peer_map, self.keys[i]);
            }
        }
        for i in 0..2 {
            if self.in_seq[i] {
                KernelRelay::delete(&self.k.seq_map, self.keys[i]);
            }
        }
        if let Some((c, b, base, progress)) = self.counting {
            let to_backend = written(b, false)
                .map(|w| w.saturating_sub(base.written_backend + self.shut[0] as u64))
                .unwrap_or(0);
            let to_client = written(c, false)
                .map(|w| w.saturating_sub(base.written_client + self.shut[1] as u64))
                .unwrap_or(0);
            progress.add(to_backend, to_client);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The kernel behaviours the relay is built on, pinned on the machine that runs them
    //! (root only: each test passes without checking anything otherwise, and says so).
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    fn loaded() -> Option<KernelRelay> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: loading BPF needs root");
            return None;
        }
        Some(KernelRelay::load(64).expect("load the program as root"))
    }

    /// A connected pair on loopback: (the side the test drives, the side rsproxyd holds).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (c, a)
    }

    fn insert(k: &KernelRelay, a: &TcpStream, b: &TcpStream) {
        let (ca, cb) = (
            cookie(a.as_raw_fd()).unwrap(),
            cookie(b.as_raw_fd()).unwrap(),
        );
        k.set_seq(ca, a.as_raw_fd()).unwrap();
        k.set_seq(cb, b.as_raw_fd()).unwrap();
        KernelRelay::update(&k.peer_map, ca, b.as_raw_fd()).unwrap();
        KernelRelay::update(&k.peer_map, cb, a.as_raw_fd()).unwrap();
        KernelRelay::update(&k.verdict_map, ca, a.as_raw_fd()).unwrap();
        KernelRelay::update(&k.verdict_map, cb, b.as_raw_fd()).unwrap();
    }

    /// Reads until `want` bytes came or nothing came for `quiet`.
    fn read_for(s: &mut TcpStream, want: usize, quiet: Duration) -> Vec<u8> {
        s.set_read_timeout(Some(quiet)).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < want {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    }

    /// A socket's next sequence number to send (`queue` 2, TCP_SEND_QUEUE) or to receive (1,
    /// TCP_RECV_QUEUE), read in TCP's repair mode.
    fn repair_seq(s: &TcpStream, queue: libc::c_int) -> u32 {
        let fd = s.as_raw_fd();
        let set = |name: libc::c_int, v: libc::c_int| {
            set_int_option(fd, libc::IPPROTO_TCP, name, v).expect("setsockopt in repair mode")
        };
        set(19, 1); // TCP_REPAIR on
        set(20, queue); // TCP_REPAIR_QUEUE
        let mut v: u32 = 0;
        let mut len = size_of::<u32>() as libc::socklen_t;
        // SAFETY: `v` is a writable u32 of `len` bytes; the kernel writes at most `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                21,
                (&mut v as *mut u32).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        set(20, 0); // TCP_NO_QUEUE
        set(19, -1); // TCP_REPAIR_OFF_NO_WP
        v
    }

    /// A socket's TCP timestamp clock now (TCP_TIMESTAMP): what it would put in TSval.
    fn ts_now(s: &TcpStream) -> u32 {
        let mut v: u32 = 0;
        let mut len = size_of::<u32>() as libc::socklen_t;
        // SAFETY: `v` is a writable u32 of `len` bytes; the kernel writes at most `len`.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_TIMESTAMP,
                (&mut v as *mut u32).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        v
    }

    /// Sends `payload` at `seq` to `to` as `from` would have sent it (its ports, what it
    /// acknowledges, its timestamp option), through a raw socket: a retransmission made by
    /// hand. IPv4 on loopback only.
    fn inject(from: &TcpStream, to: &TcpStream, seq: u32, payload: &[u8]) {
        let (src, dst) = match (from.local_addr().unwrap(), from.peer_addr().unwrap()) {
            (std::net::SocketAddr::V4(s), std::net::SocketAddr::V4(d)) => (s, d),
            other => panic!("IPv4 only: {other:?}"),
        };
        let ack = repair_seq(from, 1);
        let mut seg = Vec::with_capacity(32 + payload.len());
        seg.extend_from_slice(&src.port().to_be_bytes());
        seg.extend_from_slice(&dst.port().to_be_bytes());
        seg.extend_from_slice(&seq.to_be_bytes());
        seg.extend_from_slice(&ack.to_be_bytes());
        seg.extend_from_slice(&[8 << 4, 0x18]); // 32-byte header; ACK, PSH
        seg.extend_from_slice(&0xffffu16.to_be_bytes()); // window
        seg.extend_from_slice(&[0, 0, 0, 0]); // checksum (below), urgent pointer
        seg.extend_from_slice(&[1, 1, 8, 10]); // NOP, NOP, timestamps
        seg.extend_from_slice(&ts_now(from).to_be_bytes());
        seg.extend_from_slice(&ts_now(to).to_be_bytes());
        seg.extend_from_slice(payload);
        let mut sum: u32 = 0;
        let mut add = |b: &[u8]| {
            for w in b.chunks(2) {
                sum += u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0));
            }
        };
        add(&src.ip().octets());
        add(&dst.ip().octets());
        add(&[0, libc::IPPROTO_TCP as u8]);
        add(&(seg.len() as u16).to_be_bytes());
        add(&seg);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        seg[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        // SAFETY: socket(2) with constant arguments; the fd is owned at once.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        assert!(raw >= 0, "{}", io::Error::last_os_error());
        // SAFETY: socket(2) just returned this fd; nothing else owns it.
        let raw = unsafe { OwnedFd::from_raw_fd(raw) };
        let to_addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `seg` is readable for its length; `to_addr` is a valid sockaddr_in.
        let n = unsafe {
            libc::sendto(
                raw.as_raw_fd(),
                seg.as_ptr().cast(),
                seg.len(),
                0,
                (&to_addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(n, seg.len() as isize, "{}", io::Error::last_os_error());
    }

    /// Waits until everything `s` sent was acknowledged (so it retransmits nothing itself).
    fn all_acked(s: &TcpStream) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while queued(s.as_raw_fd(), libc::TIOCOUTQ).unwrap() > 0 {
            assert!(Instant::now() < deadline, "not acknowledged");
            std::thread::yield_now();
        }
    }

    /// TCP itself skips what a retransmission carries again: a socket that received 2,000
    /// bytes and then a segment with bytes 1,000 to 3,000 reads 3,000 bytes, each once. (Pins
    /// that the hand-made retransmission below is taken, and queued whole: the reader skips.)
    #[test]
    fn tcp_skips_what_a_retransmission_carries_again() {
        let Some(_k) = loaded() else { return };
        let (mut c, mut a) = pair();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&data[..2000]).unwrap();
        assert_eq!(read_for(&mut a, 2000, Duration::from_secs(5)), data[..2000]);
        all_acked(&c);
        let next = repair_seq(&c, 2);
        inject(&c, &a, next.wrapping_sub(1000), &data[1000..3000]);
        assert_eq!(
            read_for(&mut a, 2000, Duration::from_millis(300)),
            data[2000..]
        );
    }

    /// A retransmission that overlaps bytes already relayed (it starts before what the socket
    /// received and ends after it) is relayed from where the relayed bytes end, each byte
    /// once. TCP queues such a segment whole and the sockmap hands it to the program whole
    /// (`tcp_read_skb`, kernel 6.18): the program takes the overlap off, in one trim (1,000
    /// bytes) or several (30,000 bytes, 4,095 at a time).
    #[test]
    fn an_overlapping_retransmission_is_relayed_once() {
        let Some(k) = loaded() else { return };
        for (sent, overlap, new) in [(2_000, 1_000, 1_000), (60_000, 30_000, 20_000)] {
            let (mut c, a) = pair();
            let (b, mut s) = pair();
            insert(&k, &a, &b);
            let data: Vec<u8> = (0..sent + new).map(|i| (i % 251) as u8).collect();
            c.write_all(&data[..sent]).unwrap();
            assert_eq!(read_for(&mut s, sent, Duration::from_secs(5)), data[..sent]);
            all_acked(&c);
            let next = repair_seq(&c, 2);
            inject(
                &c,
                &a,
                next.wrapping_sub(overlap as u32),
                &data[sent - overlap..],
            );
            let got = read_for(&mut s, overlap + new, Duration::from_millis(300));
            assert_eq!(got.len(), new, "the overlap of {overlap} was relayed again");
            assert_eq!(got, data[sent..]);
        }
    }

    /// A socket in the verdict map with no entry in the seq map keeps its data (readable on
    /// it) instead of relaying it: the relay's watch then sees data and resets, rather than
    /// relay bytes it cannot place.
    #[test]
    fn without_a_sequence_number_data_is_kept() {
        let Some(k) = loaded() else { return };
        let (mut c, mut a) = pair();
        let (b, mut s) = pair();
        let (ca, cb) = (
            cookie(a.as_raw_fd()).unwrap(),
            cookie(b.as_raw_fd()).unwrap(),
        );
        KernelRelay::update(&k.peer_map, ca, b.as_raw_fd()).unwrap();
        KernelRelay::update(&k.peer_map, cb, a.as_raw_fd()).unwrap();
        KernelRelay::update(&k.verdict_map, ca, a.as_raw_fd()).unwrap();
        KernelRelay::update(&k.verdict_map, cb, b.as_raw_fd()).unwrap();
        c.write_all(b"kept").unwrap();
        assert_eq!(read_for(&mut a, 4, Duration::from_secs(5)), b"kept");
        assert!(read_for(&mut s, 4, Duration::from_millis(200)).is_empty());
    }

    /// Bytes go both ways once both sockets are in the maps.
    #[test]
    fn redirects_both_ways() {
        let Some(k) = loaded() else { return };
        let (mut c, a) = pair();
        let (b, mut s) = pair();
        insert(&k, &a, &b);
        c.write_all(b"hello").unwrap();
        assert_eq!(read_for(&mut s, 5, Duration::from_secs(5)), b"hello");
        s.write_all(b"world").unwrap();
        assert_eq!(read_for(&mut c, 5, Duration::from_secs(5)), b"world");
    }

    /// Data queued before the insertion is not relayed by the insertion itself, only once
    /// TCP's data-ready hook runs: SO_RCVLOWAT makes it run, and the order is kept.
    #[test]
    fn queued_data_waits_for_the_kick() {
        let Some(k) = loaded() else { return };
        let (mut c, a) = pair();
        let (b, mut s) = pair();
        c.write_all(b"early").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while queued(a.as_raw_fd(), libc::FIONREAD).unwrap() < 5 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        insert(&k, &a, &b);
        assert!(read_for(&mut s, 5, Duration::from_millis(200)).is_empty());
        kick(a.as_raw_fd()).unwrap();
        assert_eq!(read_for(&mut s, 5, Duration::from_secs(5)), b"early");
        c.write_all(b"later").unwrap();
        assert_eq!(read_for(&mut s, 5, Duration::from_secs(5)), b"later");
    }

    /// A segment user space read part of is relayed from where the read stopped: the kernel
    /// hands the program the whole segment (kernel 6.18; the first program relayed the 100
    /// bytes already read again), and the program takes off what came before the socket's
    /// receive sequence number, as for an overlapping retransmission.
    #[test]
    fn a_half_read_segment_goes_from_where_the_read_stopped() {
        let Some(k) = loaded() else { return };
        let (mut c, mut a) = pair();
        let (b, mut s) = pair();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        c.write_all(&data).unwrap();
        let mut first = [0u8; 100];
        a.read_exact(&mut first).unwrap();
        insert(&k, &a, &b);
        kick(a.as_raw_fd()).unwrap();
        let got = read_for(&mut s, 10_000, Duration::from_millis(500));
        assert_eq!(got.len(), 9_900, "the 100 bytes already read came again");
        assert_eq!(got, data[100..]);
    }

    /// A FIN in a segment of its own leaves the peer without an error (the program drops the
    /// empty skb; redirected, it set EPIPE on the peer), and shows as EOF to a peek; the FIN
    /// counts one in tcpi_bytes_received.
    #[test]
    fn a_bare_fin_is_eof_and_no_error() {
        let Some(k) = loaded() else { return };
        let (mut c, a) = pair();
        let (b, mut s) = pair();
        insert(&k, &a, &b);
        c.write_all(b"data").unwrap();
        assert_eq!(read_for(&mut s, 4, Duration::from_secs(5)), b"data");
        c.shutdown(Shutdown::Write).unwrap();
        let mut p = libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1);
        let mut one = [0u8; 1];
        let n = nix::sys::socket::recv(
            a.as_raw_fd(),
            &mut one,
            nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        );
        assert_eq!(n, Ok(0));
        assert_eq!(tcp_info(a.as_raw_fd()).unwrap().tcpi_bytes_received, 5);
        assert_eq!(before_fin(a.as_raw_fd()).unwrap(), 4);
        assert!(socket2::SockRef::from(&b).take_error().unwrap().is_none());
        // The peer still sends.
        s.write_all(b"reply").unwrap();
        assert_eq!(read_for(&mut c, 5, Duration::from_secs(5)), b"reply");
    }

    /// A socket that has its peer's FIN is refused by the sockmap (EOPNOTSUPP): the relay
    /// then stays in user space.
    #[test]
    fn a_half_closed_socket_is_refused() {
        let Some(k) = loaded() else { return };
        let (c, a) = pair();
        c.shutdown(Shutdown::Write).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while tcp_info(a.as_raw_fd()).unwrap().tcpi_state != TCP_CLOSE_WAIT {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        let e = KernelRelay::update(
            &k.verdict_map,
            cookie(a.as_raw_fd()).unwrap(),
            a.as_raw_fd(),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
    }
}
