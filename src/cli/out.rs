//! Standard output that a closed pipe cannot kill: `ralph-deploy apply
//! --json | head -1` must end the output, not the run (which would stop
//! midway with the lock held). SIGPIPE stays ignored (Rust's default), and
//! every line goes through here: the first write that fails (the reader went
//! away) turns further output off, and the run goes on to finish and unlock.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` (and a newline when `newline`) to stdout, unless stdout
/// has been closed by its reader.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let r = out.write_fmt(args).and_then(|_| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if r.is_err() {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Raw bytes (a man page, completions), with the same rule.
pub fn bytes(b: &[u8]) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if std::io::stdout().lock().write_all(b).is_err() {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Whether the reader of stdout went away.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}
