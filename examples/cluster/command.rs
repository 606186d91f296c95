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
    /// Sentinel: `SENTINEL FAILOVER`; Cluster: `CLUSTER FAILOVER` of the slot's shard.
    Failover(Option<u16>),
    /// Cluster: SIGKILL of the master serving the slot.
    KillMaster(u16),
    /// Cluster: the slot moves to the master on the port, key by key.
    MigrateSlot(u16, u16),
    /// Cluster: a new empty master joins.
    AddMaster,
    /// Sentinel or Cluster: a killed node on the port starts again.
    RestartNode(u16),
    /// Sentinel or Cluster: SIGSTOP of the node on the port.
    PauseNode(u16),
    /// Sentinel or Cluster: SIGCONT.
    ResumeNode(u16),
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
 with --redis sentinel:
  kill-redis             crash the primary (the sentinels promote the replica)
  restart-redis          the old primary back, as a replica      failover   SENTINEL FAILOVER
 with --redis cluster:
  kill-master <slot>     crash the master serving <slot>          failover [slot]  CLUSTER FAILOVER
  migrate-slot <slot> <port>  move <slot> to the master on <port>  add-master  an empty master joins
 with either:
  restart-node <port>    pause-node <port>    resume-node <port>  (a Redis data node, by port)
  help                   this text
  quit                   tear everything down and exit (also Ctrl-C or SIGTERM)";

impl Command {
    /// The command's name as typed.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Kill(_) => "kill",
            Self::Stop(_) => "stop",
            Self::Restart(_) => "restart",
            Self::KillReplica(_) => "kill-replica",
            Self::RestartReplica(_) => "restart-replica",
            Self::PauseReplica(_) => "pause-replica",
            Self::ResumeReplica(_) => "resume-replica",
            Self::Lag(..) => "lag",
            Self::Promote(_) => "promote",
            Self::KillPrimary => "kill-primary",
            Self::RestartPrimary => "restart-primary",
            Self::KillRedis => "kill-redis",
            Self::RestartRedis => "restart-redis",
            Self::PauseRedis(_) => "pause-redis",
            Self::ResumeRedis => "resume-redis",
            Self::Failover(_) => "failover",
            Self::KillMaster(_) => "kill-master",
            Self::MigrateSlot(..) => "migrate-slot",
            Self::AddMaster => "add-master",
            Self::RestartNode(_) => "restart-node",
            Self::PauseNode(_) => "pause-node",
            Self::ResumeNode(_) => "resume-node",
            Self::Help => "help",
            Self::Quit => "quit",
            Self::Nothing => "",
        }
    }
}

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
    let number = |word: Option<&&str>, what: &str| -> Result<u16, String> {
        word.and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("`{}` needs {what} (a number)", line.trim()))
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
        ("failover", 0) => Command::Failover(None),
        ("failover", 1) => Command::Failover(Some(number(args.first(), "a slot")?)),
        ("kill-master", 1) => Command::KillMaster(number(args.first(), "a slot")?),
        ("migrate-slot", 2) => Command::MigrateSlot(
            number(args.first(), "a slot")?,
            number(args.get(1), "a node port")?,
        ),
        ("add-master", 0) => Command::AddMaster,
        ("restart-node", 1) => Command::RestartNode(number(args.first(), "a node port")?),
        ("pause-node", 1) => Command::PauseNode(number(args.first(), "a node port")?),
        ("resume-node", 1) => Command::ResumeNode(number(args.first(), "a node port")?),
        ("help" | "?", _) => Command::Help,
        ("quit" | "exit", 0) => Command::Quit,
        _ => return Err(format!("unknown command `{}`", line.trim())),
    };
    Ok(command)
}
