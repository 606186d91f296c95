//! Finding the PostgreSQL programs.
//!
//! Debian keeps the server programs (`initdb`, `postgres`, `pg_ctl`) in
//! `/usr/lib/postgresql/<major>/bin`, not always on `PATH`, while `/usr/bin/psql` and
//! `/usr/bin/pg_basebackup` are a Perl wrapper that picks some version. So: `initdb` comes from
//! `PATH` (symlinks resolved) or the highest `/usr/lib/postgresql/<major>/bin`, and every other
//! program is taken from the same directory first, so all of them share one major version and no
//! call pays for the wrapper.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::process::{find_on_path, is_executable};

const INSTALL_HINT: &str = "install PostgreSQL (apt-get install -y postgresql)";
const VERSIONED_ROOT: &str = "/usr/lib/postgresql";

/// Paths of the PostgreSQL programs the cluster runs.
#[derive(Debug, Clone)]
pub(crate) struct PgBinaries {
    pub(crate) initdb: PathBuf,
    pub(crate) postgres: PathBuf,
    pub(crate) pg_ctl: PathBuf,
    pub(crate) pg_basebackup: PathBuf,
    pub(crate) psql: PathBuf,
}

impl PgBinaries {
    /// Finds every program, or says which one is missing and how to install it.
    pub(crate) fn find() -> Result<Self, Error> {
        let versioned = highest_versioned_bin(Path::new(VERSIONED_ROOT));
        let initdb = find_on_path("initdb")
            .and_then(|path| fs::canonicalize(path).ok())
            .or_else(|| {
                versioned
                    .as_ref()
                    .map(|dir| dir.join("initdb"))
                    .filter(|path| is_executable(path))
            })
            .ok_or_else(|| {
                Error::not_installed(
                    "initdb (on PATH or in /usr/lib/postgresql/<major>/bin)",
                    INSTALL_HINT,
                )
            })?;
        let server_dir = initdb.parent().map(Path::to_path_buf);
        let tool = |name: &str| {
            server_dir
                .iter()
                .map(|dir| dir.join(name))
                .find(|path| is_executable(path))
                .or_else(|| find_on_path(name))
                .or_else(|| {
                    versioned
                        .iter()
                        .map(|dir| dir.join(name))
                        .find(|path| is_executable(path))
                })
                .ok_or_else(|| {
                    Error::not_installed(
                        &format!("{name} (next to {}, or on PATH)", initdb.display()),
                        INSTALL_HINT,
                    )
                })
        };
        Ok(Self {
            postgres: tool("postgres")?,
            pg_ctl: tool("pg_ctl")?,
            pg_basebackup: tool("pg_basebackup")?,
            psql: tool("psql")?,
            initdb,
        })
    }
}

/// `<root>/<highest numeric major>/bin` holding an `initdb`.
fn highest_versioned_bin(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major: f64 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            is_executable(&bin.join("initdb")).then_some((major, bin))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn picks_the_highest_major_with_an_initdb() {
        let root = tempfile::tempdir().unwrap();
        for (major, with_initdb) in [("9.6", true), ("15", true), ("16", false), ("x", true)] {
            let bin = root.path().join(major).join("bin");
            fs::create_dir_all(&bin).unwrap();
            if with_initdb {
                let initdb = bin.join("initdb");
                fs::write(&initdb, "#!/bin/sh\n").unwrap();
                fs::set_permissions(&initdb, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        assert_eq!(
            highest_versioned_bin(root.path()),
            Some(root.path().join("15").join("bin"))
        );
        assert_eq!(highest_versioned_bin(&root.path().join("missing")), None);
    }
}
