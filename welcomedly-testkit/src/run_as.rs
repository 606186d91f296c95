//! Which OS user runs the servers.
//!
//! PostgreSQL refuses to run as root. When the tests run as root, `initdb`, `postgres`, `pg_ctl`
//! and `pg_basebackup` run as the `postgres` OS user (the Debian package creates it) through
//! [`CommandExt::uid`]/[`CommandExt::gid`], and the temp dirs are handed to that user. Otherwise
//! everything runs as the current user.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::Error;

/// The OS user PostgreSQL runs as when the tests run as root.
const SERVER_USER: &str = "postgres";

/// An unprivileged user to run a server as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `None` when not root (run as ourselves); the `postgres` user when root.
    pub(crate) fn for_postgres() -> Result<Option<Self>, Error> {
        if current_uid() != Some(0) {
            return Ok(None);
        }
        lookup(SERVER_USER)
            .map(Some)
            .ok_or_else(|| Error::no_server_user(SERVER_USER))
    }

    /// Makes `command` run as this user (std also drops root's supplementary groups).
    pub(crate) fn apply(self, command: &mut Command) {
        command.uid(self.uid).gid(self.gid);
    }

    /// Hands `path` to this user.
    pub(crate) fn chown(self, path: &Path) -> Result<(), Error> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(|source| {
            Error::io(
                format_args!("handing {} to the postgres user", path.display()),
                "run the tests as an ordinary user, or on a file system that supports chown",
                source,
            )
        })
    }
}

/// The effective uid, read from the owner of `/proc/self` (no libc needed).
fn current_uid() -> Option<u32> {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Some(meta.uid());
    }
    id(&["-u"])
}

fn lookup(user: &str) -> Option<RunAs> {
    if let Ok(passwd) = fs::read_to_string("/etc/passwd")
        && let Some(found) = parse_passwd(&passwd, user)
    {
        return Some(found);
    }
    // Users may come from NSS (LDAP, systemd-homed) rather than /etc/passwd.
    Some(RunAs {
        uid: id(&["-u", user])?,
        gid: id(&["-g", user])?,
    })
}

fn parse_passwd(passwd: &str, user: &str) -> Option<RunAs> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        Some(RunAs {
            uid: fields.next()?.parse().ok()?,
            gid: fields.next()?.parse().ok()?,
        })
    })
}

fn id(args: &[&str]) -> Option<u32> {
    let output = Command::new("id").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn parses_the_matching_passwd_line() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgresx:x:7:7::/:/bin/sh\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            parse_passwd(passwd, "postgres"),
            Some(RunAs { uid: 101, gid: 104 })
        );
        assert_eq!(parse_passwd(passwd, "nobody"), None);
        assert_eq!(
            parse_passwd("postgres:x:abc:1::/:/bin/sh", "postgres"),
            None
        );
    }

    #[test]
    fn current_uid_matches_id() {
        assert_eq!(current_uid(), id(&["-u"]));
    }
}
