//! The on-disk copy of the last applied document, so an instance can start while the store is
//! unreachable.
//!
//! One JSON object: `{"format":1,"version":N,"saved_at_unix_ms":T,"body":"<the document>"}`.
//! Written to a temporary file in the same directory, flushed to disk, then renamed over the
//! old one: a crash mid-write leaves the previous snapshot, never half of a new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Document;

const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    version: u64,
    saved_at_unix_ms: u64,
    body: String,
}

/// A snapshot read back from disk.
#[derive(Debug)]
pub(crate) struct Saved {
    pub(crate) doc: Document,
    pub(crate) saved_at_unix_ms: u64,
}

/// Writes `doc` to `path` atomically (temporary file + fsync + rename). Blocking: call from
/// `spawn_blocking`.
pub(crate) fn write(path: &Path, doc: &Document) -> Result<(), String> {
    let on_disk = OnDisk {
        format: FORMAT,
        version: doc.version,
        saved_at_unix_ms: super::now_unix_ms(),
        body: doc.body.clone(),
    };
    let bytes = serde_json::to_vec(&on_disk).map_err(|e| format!("cannot encode: {e}"))?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!(
            "cannot write the flag snapshot file {}: {e}; check that its directory exists and is writable",
            path.display()
        )
    })
}

/// Reads the snapshot at `path`. Blocking: call from `spawn_blocking`.
pub(crate) fn read(path: &Path) -> Result<Saved, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the flag snapshot file {}: {e}", path.display()))?;
    let on_disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "the flag snapshot file {} is not a snapshot ({e}): delete it; it is rewritten after the next successful sync",
            path.display()
        )
    })?;
    if on_disk.format != FORMAT {
        return Err(format!(
            "the flag snapshot file {} has format {} (this build reads {FORMAT}): delete it",
            path.display(),
            on_disk.format
        ));
    }
    Ok(Saved {
        doc: Document {
            version: on_disk.version,
            body: on_disk.body,
        },
        saved_at_unix_ms: on_disk.saved_at_unix_ms,
    })
}

/// `<dir>/.<name>.tmp`: same directory, so the rename stays on one file system.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "flags-snapshot".to_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_written_snapshot_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        let doc = Document {
            version: 7,
            body: r#"{"a":"é"}"#.to_owned(),
        };
        write(&path, &doc).unwrap();
        write(&path, &doc).unwrap(); // over an existing one
        let saved = read(&path).unwrap();
        assert_eq!(saved.doc, doc);
        assert!(saved.saved_at_unix_ms > 0);
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn a_garbage_file_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        std::fs::write(&path, "not json").unwrap();
        let e = read(&path).unwrap_err();
        assert!(e.contains("delete it"), "{e}");
    }

    #[test]
    fn a_missing_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("flags.json");
        let e = write(&path, &Document::default()).unwrap_err();
        assert!(e.contains("directory"), "{e}");
    }
}
