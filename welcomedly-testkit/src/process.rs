//! Child-process plumbing shared by the Redis and PostgreSQL launchers: log files, bounded
//! waits, finding binaries.

use std::env;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;

/// How many log lines a start error carries.
pub(crate) const TAIL_LINES: usize = 30;
/// How often start-up and shutdown waits look again.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// Opens (appending) the log a server's stdout and stderr go to, and its current length, so a
/// start error shows only what this start wrote.
pub(crate) fn open_log(path: &Path) -> Result<(Stdio, Stdio, u64), Error> {
    let open = || -> std::io::Result<(Stdio, Stdio, u64)> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        let err = file.try_clone()?;
        Ok((Stdio::from(file), Stdio::from(err), len))
    };
    open().map_err(|source| {
        Error::io(
            format_args!("opening the log {}", path.display()),
            "check that the temp dir is writable",
            source,
        )
    })
}

/// The last `TAIL_LINES` lines written to `path` after byte `from`.
pub(crate) fn log_tail(path: &Path, from: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(TAIL_LINES);
            lines.get(skip..).unwrap_or_default().join("\n")
        }
        Err(error) => format!("(could not read the log: {error})"),
    }
}

/// Waits up to `timeout` for `child` to exit.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            // An error here means the child was already reaped.
            Err(_) => return None,
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(POLL),
        }
    }
}

/// SIGKILLs `child` and reaps it; used on teardown paths where nothing can be reported.
pub(crate) fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether `child` is still running.
pub(crate) fn is_alive(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// The first executable `name` in the directories of `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is an executable file.
pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A temp dir with `prefix` in its name.
pub(crate) fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, Error> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|source| {
            Error::io(
                "creating a temp dir",
                "check that TMPDIR (or /tmp) exists and is writable",
                source,
            )
        })
}
