//! The Linux zero-copy pump: splice(2) from a socket into a pipe and from the pipe into the
//! other socket, for directions that carry bulk data.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};

use crate::tuning::pipe_size;

/// A pipe used as the kernel-side buffer of one relay direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// Creates a non-blocking pipe and asks for [`crate::limits::PIPE_SIZE`] bytes of
    /// capacity (the kernel may refuse past its per-user limit; the default 64 KiB still
    /// works).
    pub fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let capacity = match fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&write),
            FcntlArg::F_SETPIPE_SZ(pipe_size() as libc::c_int),
        ) {
            Ok(n) => n as usize,
            Err(_) => 64 * 1024,
        };
        Ok(Self {
            read,
            write,
            capacity,
        })
    }

    /// How many bytes the pipe holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Moves up to the pipe's capacity from `src` into the pipe. 0 means EOF on `src`.
    pub fn fill(&self, src: impl AsFd) -> io::Result<usize> {
        Ok(splice(
            src,
            None,
            &self.write,
            None,
            self.capacity,
            SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
        )?)
    }

    /// Moves up to `len` bytes from the pipe into `dst`.
    pub fn drain(&self, dst: impl AsFd, len: usize) -> io::Result<usize> {
        Ok(splice(
            &self.read,
            None,
            dst,
            None,
            len,
            SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
        )?)
    }

    /// Reads bytes back out of the pipe (when the destination cannot take a splice).
    pub fn read_into(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nix::unistd::read(
            std::os::fd::AsRawFd::as_raw_fd(&self.read),
            buf,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// Bytes spliced from one socket through the pipe arrive unchanged at the other.
    #[test]
    fn splice_through_pipe() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (c, mut d) = UnixStream::pair().unwrap();
        let pipe = Pipe::new().unwrap();
        assert!(pipe.capacity >= 64 * 1024);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        a.write_all(&data).unwrap();
        drop(a);
        let mut moved = 0;
        loop {
            let n = pipe.fill(&b).unwrap();
            if n == 0 {
                break;
            }
            let mut left = n;
            while left > 0 {
                left -= pipe.drain(&c, left).unwrap();
            }
            moved += n;
        }
        drop(c);
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        assert_eq!(moved, data.len());
        assert_eq!(got, data);
    }
}
