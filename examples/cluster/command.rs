//! The fault commands read from stdin.

use std::time::Duration;

/// One line of stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Status,
    Kill(usize),
    Stop(usize),
    Restart(usize),
    KillReplica(usize),
    RestartReplica(usize),
    PauseReplica(usize),
    ResumeReplica(usize),
    Lag(usize, Duration),
    Promote(usize),
    KillPrimary,
    RestartPrimary,
    KillRedis,
    RestartRedis,
    PauseRedis(Option<Duration>),
    ResumeRedis,
    Help,
    Quit,
    /// Nothing to do (an empty line).
    Nothing,
}

pub(crate) const HELP: &str = "\
fault commands (type one and press Enter):
  status                 every instance (up / ready), NGINX, the PostgreSQL nodes, Redis
  kill <i>               SIGKILL instance i, as a crash           stop <i>     SIGTERM: it drains
  restart <i>            start instance i again on the same port (stops it first if it runs)
  kill-replica <j>       crash PostgreSQL replica j               restart-replica <j>
  pause-replica <j>      freeze replica j (SIGSTOP)               resume-replica <j>
  lag <j> <ms>           replica j applies commits <ms> late (recovery_min_apply_delay); 0 clears
  promote <j>            promote replica j to a primary (after kill-primary: a failover)
  kill-primary           crash the PostgreSQL primary             restart-primary
  kill-redis             crash Redis                              restart-redis (starts empty)
  pause-redis [ms]       freeze Redis (SIGSTOP), for <ms> or until resume-redis
  help                   this text
  quit                   tear everything down and exit (also Ctrl-C or SIGTERM)";

/// Parses one line; the error says what was wrong and points at `help`.
pub(crate) fn parse(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let index = |word: Option<&&str>, what: &str| -> Result<usize, String> {
        word.and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("`{}` needs {what} number", line.trim()))
    };
    let millis = |word: Option<&&str>| -> Result<Duration, String> {
        word.and_then(|w| w.parse().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| format!("`{}` needs a delay in milliseconds", line.trim()))
    };
    let (Some(name), args) = (words.first(), words.get(1..).unwrap_or_default()) else {
        return Ok(Command::Nothing);
    };
    let command = match (*name, args.len()) {
        ("status", 0) => Command::Status,
        ("kill", 1) => Command::Kill(index(args.first(), "an instance")?),
        ("stop", 1) => Command::Stop(index(args.first(), "an instance")?),
        ("restart", 1) => Command::Restart(index(args.first(), "an instance")?),
        ("kill-replica", 1) => Command::KillReplica(index(args.first(), "a replica")?),
        ("restart-replica", 1) => Command::RestartReplica(index(args.first(), "a replica")?),
        ("pause-replica", 1) => Command::PauseReplica(index(args.first(), "a replica")?),
        ("resume-replica", 1) => Command::ResumeReplica(index(args.first(), "a replica")?),
        ("lag", 2) => Command::Lag(index(args.first(), "a replica")?, millis(args.get(1))?),
        ("promote", 1) => Command::Promote(index(args.first(), "a replica")?),
        ("kill-primary", 0) => Command::KillPrimary,
        ("restart-primary", 0) => Command::RestartPrimary,
        ("kill-redis", 0) => Command::KillRedis,
        ("restart-redis", 0) => Command::RestartRedis,
        ("pause-redis", 0) => Command::PauseRedis(None),
        ("pause-redis", 1) => Command::PauseRedis(Some(millis(args.first())?)),
        ("resume-redis", 0) => Command::ResumeRedis,
        ("help" | "?", _) => Command::Help,
        ("quit" | "exit", 0) => Command::Quit,
        _ => return Err(format!("unknown command `{}`", line.trim())),
    };
    Ok(command)
}
