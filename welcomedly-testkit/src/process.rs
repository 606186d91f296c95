//! Child-process plumbing shared by the Redis and PostgreSQL launchers: log files, bounded
//! waits, finding binaries, signals.

use std::env;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// Polls `check` every `poll` until it passes; on timeout the error says what `check` last
/// found missing, so a stuck wait explains itself.
pub(crate) fn wait_until(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(reason) => reason,
        };
        if Instant::now() >= deadline {
            return Err(Error::timeout(
                format_args!("waited {timeout:?} for {what}; last: {last}"),
                None,
            ));
        }
        thread::sleep(poll);
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

/// A signal [`signal`] can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Freeze the process (cannot be caught or ignored).
    Stop,
    /// Let a frozen process run again.
    Cont,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Self::Stop => "STOP",
            Self::Cont => "CONT",
        }
    }
}

/// Sends `signal` to every process in `pids` with `kill(1)` (no libc, no `unsafe`).
///
/// A pid that has exited in the meantime is not an error: freezing a server whose helper process
/// just ended is still a frozen server.
pub(crate) fn signal(pids: &[u32], signal: Signal, what: impl fmt::Display) -> Result<(), Error> {
    if pids.is_empty() {
        return Ok(());
    }
    let output = Command::new("kill")
        .arg(format!("-{}", signal.name()))
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| {
            Error::io(
                format_args!("running `kill -{}` for {what}", signal.name()),
                "check that kill(1) is installed (procps or util-linux)",
                source,
            )
        })?;
    if output.status.success() {
        return Ok(());
    }
    // Some pid did not exist any more; those that did got the signal.
    let still_there: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    if still_there.len() < pids.len() {
        return Ok(());
    }
    Err(Error::command_failed(
        format_args!(
            "`kill -{}` for {what} failed ({})",
            signal.name(),
            output.status
        ),
        &String::from_utf8_lossy(&output.stderr),
        "check that the tests may signal the server processes (same user, or root)",
    ))
}

/// Every living descendant of `pid` (children, their children, …), read from `/proc`.
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| Some((child, parent_of(child)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, _) in parents.iter().filter(|(_, p)| *p == parent) {
            if !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// The parent pid in `/proc/<pid>/stat` (field 4; the command name in field 2 may hold spaces
/// and parentheses, so parse after its last `)`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_parent(&stat)
}

fn parse_parent(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
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

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn parent_pid_is_read_after_the_command_name() {
        assert_eq!(parse_parent("42 (postgres) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parse_parent("42 (a) b (c)) S 9 42"), Some(9));
        assert_eq!(parse_parent("garbage"), None);
    }

    #[test]
    fn descendants_include_grandchildren() {
        let mut child = Command::new("sh")
            .args(["-c", "(sleep 30; true) & sleep 30; wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = descendants(child.id());
        // The subshell, its sleep (a grandchild) and the second sleep.
        while found.len() < 3 && Instant::now() < deadline {
            thread::sleep(POLL);
            found = descendants(child.id());
        }
        assert!(found.len() >= 3, "{found:?}");
        signal(&found, Signal::Stop, "test sleepers").unwrap();
        signal(&found, Signal::Cont, "test sleepers").unwrap();
        for pid in found {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        kill_and_reap(&mut child);
    }
}
