//! [`Flags`], the shared handle a service evaluates through, and change subscriptions.
//!
//! The current [`Snapshot`] sits behind an [`ArcSwap`]: a request takes one atomic load
//! ([`Flags::snapshot`] or the cheaper [`Flags::load`]) and evaluates against it without locks;
//! a store installs a new snapshot with [`Flags::replace`]. Readers never wait for writers.
//!
//! Subscriptions: every replace compares the old and new flag sets and sends one [`FlagChange`]
//! per flag whose *effective* definition changed — its own JSON, a prerequisite's (at any
//! depth) or a segment's it uses (also through nested segments). [`Flags::subscribe`] receives
//! every change (a [`tokio::sync::broadcast`] receiver, so a slow receiver sees `Lagged` and
//! should re-read what it cares about); [`Flags::watch`] follows one key and turns a lag into
//! a [`ChangeKind::Missed`] change, so a watcher is never silently behind.
//!
//! ```
//! use welcomedly_flags::{ChangeKind, Context, Flags, Snapshot};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let v1 = r#"{ "flags": {
//!   "beta": { "variants": { "on": true, "off": false }, "fallthrough": { "variant": "off" } },
//!   "new-ui": { "variants": { "on": true, "off": false },
//!               "prerequisites": [{ "flag": "beta", "variants": ["on"] }],
//!               "fallthrough": { "variant": "on" } }
//! } }"#;
//! let flags = Flags::new(Snapshot::compile_json(v1, 1)?);
//! let mut watch = flags.watch("new-ui");
//!
//! // Turning the prerequisite on changes what new-ui serves: its watchers hear of it.
//! flags.replace(Snapshot::compile_json(&v1.replace(r#""variant": "off""#, r#""variant": "on""#), 2)?);
//! let change = watch.changed().await.unwrap();
//! assert_eq!((&*change.key, change.kind, change.version), ("new-ui", ChangeKind::Updated, 2));
//! assert!(flags.snapshot().bool_value("new-ui", &Context::new("u1"), false).value);
//! # Ok::<(), welcomedly_flags::ValidationErrors>(())
//! # }).unwrap();
//! ```

mod diff;

use std::sync::{Arc, Mutex, PoisonError, Weak};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::broadcast;

use crate::snapshot::Snapshot;

/// How a flag changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// The flag is new.
    Added,
    /// Its effective definition changed (itself, a prerequisite or a segment it uses).
    Updated,
    /// The flag is gone.
    Removed,
    /// Only from [`FlagWatch`]: the watcher fell behind and may have missed changes of its
    /// flag; re-read it.
    Missed,
}

/// A flag whose effective definition changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlagChange {
    /// The flag key.
    pub key: Arc<str>,
    /// What happened.
    pub kind: ChangeKind,
    /// The version of the snapshot that carries the change.
    pub version: u64,
}

struct Inner {
    current: ArcSwap<Snapshot>,
    changes: broadcast::Sender<FlagChange>,
    /// Serializes writers so changes are sent in the order snapshots were installed.
    writer: Mutex<()>,
}

/// The shared, swappable flag snapshot. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Flags {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flags")
            .field("version", &self.version())
            .field("subscribers", &self.inner.changes.receiver_count())
            .finish_non_exhaustive()
    }
}

/// The default capacity of the change channel, in changes (each flag of each update is one).
pub const DEFAULT_CHANGE_CAPACITY: usize = 1024;

impl Flags {
    /// A handle serving `initial`.
    pub fn new(initial: Snapshot) -> Flags {
        Flags::with_change_capacity(initial, DEFAULT_CHANGE_CAPACITY)
    }

    /// A handle whose change channel buffers `capacity` changes (at least 1) per slow receiver.
    pub fn with_change_capacity(initial: Snapshot, capacity: usize) -> Flags {
        let (changes, _) = broadcast::channel(capacity.max(1));
        Flags {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(initial),
                changes,
                writer: Mutex::new(()),
            }),
        }
    }

    /// The current snapshot, to keep for a request or longer.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// The current snapshot as an `arc-swap` guard: cheaper than [`Flags::snapshot`] (no
    /// reference count change) for short use; do not hold many guards at once per thread.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.inner.current.load()
    }

    /// The current snapshot's version.
    pub fn version(&self) -> u64 {
        self.inner.current.load().version()
    }

    /// Installs `next` and notifies subscribers of each flag whose effective definition changed.
    pub fn replace(&self, next: Snapshot) {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.install(next);
    }

    /// Installs `next` only if its version is above the current one (a store receiving
    /// updates out of order); returns whether it did.
    pub fn replace_if_newer(&self, next: Snapshot) -> bool {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if next.version() <= self.inner.current.load().version() {
            return false;
        }
        self.install(next);
        true
    }

    fn install(&self, next: Snapshot) {
        let next = Arc::new(next);
        let old = self.inner.current.swap(Arc::clone(&next));
        if self.inner.changes.receiver_count() == 0 {
            return;
        }
        for (key, kind) in diff::changed(&old, &next) {
            // An error only means nobody is subscribed any more.
            let _ = self.inner.changes.send(FlagChange {
                key: key.into(),
                kind,
                version: next.version(),
            });
        }
    }

    /// Every change from now on, one [`FlagChange`] per flag per update.
    pub fn subscribe(&self) -> broadcast::Receiver<FlagChange> {
        self.inner.changes.subscribe()
    }

    /// Changes of flag `key` from now on.
    pub fn watch(&self, key: impl Into<Arc<str>>) -> FlagWatch {
        FlagWatch {
            key: key.into(),
            rx: self.inner.changes.subscribe(),
            flags: Arc::downgrade(&self.inner),
        }
    }
}

/// Changes of one flag; see [`Flags::watch`].
pub struct FlagWatch {
    key: Arc<str>,
    rx: broadcast::Receiver<FlagChange>,
    /// Weak, so a watcher does not keep the channel open after every [`Flags`] is dropped.
    flags: Weak<Inner>,
}

impl std::fmt::Debug for FlagWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagWatch")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl FlagWatch {
    /// The watched key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits for the next change of the flag. After falling behind it returns a
    /// [`ChangeKind::Missed`] change with the current version; `None` once every [`Flags`]
    /// handle is gone.
    pub async fn changed(&mut self) -> Option<FlagChange> {
        loop {
            match self.rx.recv().await {
                Ok(change) if change.key == self.key => return Some(change),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let version = self
                        .flags
                        .upgrade()
                        .map_or(0, |i| i.current.load().version());
                    return Some(FlagChange {
                        key: Arc::clone(&self.key),
                        kind: ChangeKind::Missed,
                        version,
                    });
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
