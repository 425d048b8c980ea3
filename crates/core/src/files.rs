//! Reading files the user names (stack files, saved plans) without trusting
//! what kind of file they are.
//!
//! `std::fs::read` on `/dev/zero` grows without end, and opening a FIFO that
//! has no writer blocks forever. Here the file is opened non-blocking (so a
//! FIFO without a writer opens at once and then reads as empty), switched
//! back to blocking reads, and read through a reader that stops one byte past
//! the limit, whatever the file type.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("it is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("it is not UTF-8 text (invalid byte sequence at byte {at})")]
    NotText { at: usize },
    #[error("it is a directory")]
    Directory,
}

/// The whole content of `path`, at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if file.metadata()?.is_dir() {
        return Err(ReadError::Directory);
    }
    // Back to blocking reads: a FIFO without writers then reads as end of
    // file, one with a writer waits for its data, as `cat` would.
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe {
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    let mut out = Vec::new();
    file.take(limit as u64 + 1).read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(out)
}

/// Like [`read_bounded`], as text.
pub fn read_text_bounded(path: &Path, limit: usize) -> Result<String, ReadError> {
    let bytes = read_bounded(path, limit)?;
    String::from_utf8(bytes).map_err(|e| ReadError::NotText {
        at: e.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn dev_zero_stops_at_the_limit() {
        let t = Instant::now();
        let e = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_fifo_without_writer_reads_as_empty_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = Instant::now();
        assert_eq!(read_bounded(&fifo, 100).unwrap(), Vec::<u8>::new());
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn directories_and_binary_are_named() {
        assert!(matches!(
            read_bounded(Path::new("/"), 10),
            Err(ReadError::Directory)
        ));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bin");
        std::fs::write(&f, b"ab\xffcd").unwrap();
        assert!(matches!(
            read_text_bounded(&f, 10),
            Err(ReadError::NotText { at: 2 })
        ));
    }
}
