//! Moving slots between masters: the cluster spec's protocol (`SETSLOT IMPORTING` /
//! `MIGRATING`, `MIGRATE` in batches, `SETSLOT NODE` on every master), whole or step by step.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use crate::Error;
use crate::resp::{Connection, Reply};

use super::slot::check_slot;
use super::topology::view_of;
use super::{MIGRATE_BATCH, MIGRATE_TIMEOUT_MS, RedisCluster, SETTLE_TIMEOUT};

/// A slot migration begun by [`RedisCluster::begin_migration`]: the source says `MIGRATING`,
/// the target `IMPORTING`, and keys move only when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "finish the migration with RedisCluster::finish_migration"]
pub struct SlotMigration {
    slot: u16,
    from: u16,
    to: u16,
    from_id: String,
    to_id: String,
}

impl SlotMigration {
    /// The slot being moved.
    #[must_use]
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The port of the master the slot leaves: it answers `ASK` for keys already moved and
    /// `TRYAGAIN` for multi-key commands over moved and unmoved keys.
    #[must_use]
    pub fn from(&self) -> u16 {
        self.from
    }

    /// The port of the master the slot goes to: it serves moved keys after `ASKING`.
    #[must_use]
    pub fn to(&self) -> u16 {
        self.to
    }
}

impl RedisCluster {
    /// Moves every slot of `slots` to the master at `to` with the full migration protocol (see
    /// [`migrate_slot`](Self::migrate_slot)); slots it serves already are skipped. Returns once
    /// every running node agrees. Moving a few hundred slots takes well under a second.
    ///
    /// # Errors
    ///
    /// A slot is out of range, `to` is not a running master, a command failed, or the cluster
    /// did not settle within 30 s.
    pub fn move_slots(&self, slots: RangeInclusive<u16>, to: u16) -> Result<(), Error> {
        check_slot(*slots.end())?;
        let mut connections = Connections::default();
        for slot in slots {
            let migration = self.begin_with(slot, to, &mut connections)?;
            if let Some(migration) = migration {
                self.finish_with(&migration, &mut connections)?;
            }
        }
        self.wait_settled(
            &format!("every node to see the slots moved to 127.0.0.1:{to}"),
            SETTLE_TIMEOUT,
            |_| Ok(()),
        )
    }

    /// Moves `slot` to the master at `to`: `CLUSTER SETSLOT … IMPORTING` on the target,
    /// `… MIGRATING` on the source, `MIGRATE` of every key in batches of 100, then `CLUSTER
    /// SETSLOT … NODE` on the target, the source and every other master. Returns once every
    /// running node agrees. To act while the slot is half-migrated, use
    /// [`begin_migration`](Self::begin_migration), [`migrate_keys`](Self::migrate_keys) and
    /// [`finish_migration`](Self::finish_migration) instead.
    ///
    /// # Errors
    ///
    /// As [`move_slots`](Self::move_slots).
    pub fn migrate_slot(&self, slot: u16, to: u16) -> Result<(), Error> {
        self.move_slots(slot..=slot, to)
    }

    /// Starts moving `slot` to the master at `to` and stops there: the target says
    /// `IMPORTING`, the source `MIGRATING`, no key has moved. Until
    /// [`finish_migration`](Self::finish_migration), the source answers `ASK` for keys already
    /// moved (see [`migrate_keys`](Self::migrate_keys)) and `TRYAGAIN` for multi-key commands
    /// over moved and unmoved keys.
    ///
    /// # Errors
    ///
    /// `slot` is out of range, `to` is not a running master or serves the slot already
    /// ([`Error::is_invalid_request`]), or a command failed.
    pub fn begin_migration(&self, slot: u16, to: u16) -> Result<SlotMigration, Error> {
        check_slot(slot)?;
        let mut connections = Connections::default();
        self.begin_with(slot, to, &mut connections)?.ok_or_else(|| {
            Error::invalid_request(
                format_args!("migrating slot {slot} to 127.0.0.1:{to}"),
                "that master serves the slot already: pick another target",
            )
        })
    }

    /// `MIGRATE`s the given keys of a begun migration's slot from its source to its target.
    /// Keys that do not exist on the source are skipped. Returns how many were moved.
    ///
    /// # Errors
    ///
    /// A key is not in the migration's slot ([`Error::is_invalid_request`]), or `MIGRATE`
    /// failed.
    pub fn migrate_keys(&self, migration: &SlotMigration, keys: &[&str]) -> Result<usize, Error> {
        if let Some(key) = keys
            .iter()
            .find(|key| Self::slot_of(key.as_bytes()) != migration.slot)
        {
            return Err(Error::invalid_request(
                format_args!(
                    "migrating key {key:?} (slot {}) with slot {}",
                    Self::slot_of(key.as_bytes()),
                    migration.slot
                ),
                "pass only keys of the migration's slot",
            ));
        }
        let mut source = Connection::open(migration.from)?;
        let mut moved = 0;
        for batch in keys.chunks(MIGRATE_BATCH) {
            moved += migrate_batch(&mut source, migration.to, batch)?;
        }
        Ok(moved)
    }

    /// Moves the remaining keys of a begun migration and assigns the slot to the target on
    /// every master (`CLUSTER SETSLOT … NODE`); returns once every running node agrees.
    ///
    /// # Errors
    ///
    /// A command failed, or the cluster did not settle within 30 s.
    pub fn finish_migration(&self, migration: SlotMigration) -> Result<(), Error> {
        let mut connections = Connections::default();
        self.finish_with(&migration, &mut connections)?;
        self.wait_settled(
            &format!(
                "every node to see slot {} served by 127.0.0.1:{}",
                migration.slot, migration.to
            ),
            SETTLE_TIMEOUT,
            |_| Ok(()),
        )
    }

    /// `SETSLOT IMPORTING` / `MIGRATING`; `None` if `to` serves `slot` already.
    fn begin_with(
        &self,
        slot: u16,
        to: u16,
        connections: &mut Connections,
    ) -> Result<Option<SlotMigration>, Error> {
        let to_id = self.id_of(to)?;
        let target_is_master = view_of(to)?
            .iter()
            .any(|entry| entry.myself && entry.master);
        if !target_is_master {
            return Err(Error::invalid_request(
                format_args!("migrating slot {slot} to 127.0.0.1:{to}"),
                "that node is a replica: migrate slots to a master",
            ));
        }
        let from = self.master_for_slot(slot)?;
        if from == to {
            return Ok(None);
        }
        let from_id = self.id_of(from)?;
        let slot_text = slot.to_string();
        connections
            .get(to)?
            .request(&["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id])?;
        connections
            .get(from)?
            .request(&["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id])?;
        Ok(Some(SlotMigration {
            slot,
            from,
            to,
            from_id,
            to_id,
        }))
    }

    /// Every remaining key, then `SETSLOT NODE` on the target, the source and every other
    /// running master (the order the cluster spec gives, so no node answers for a slot it lost).
    fn finish_with(
        &self,
        migration: &SlotMigration,
        connections: &mut Connections,
    ) -> Result<(), Error> {
        let slot_text = migration.slot.to_string();
        let batch_text = MIGRATE_BATCH.to_string();
        loop {
            let source = connections.get(migration.from)?;
            let keys = source
                .request(&["CLUSTER", "GETKEYSINSLOT", &slot_text, &batch_text])?
                .to_text();
            let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            if migrate_batch(source, migration.to, &keys)? == 0 {
                return Err(Error::invalid_request(
                    format_args!(
                        "migrating slot {} from 127.0.0.1:{}: keys listed by GETKEYSINSLOT \
                         could not be moved",
                        migration.slot, migration.from
                    ),
                    "use text keys (this client sends keys as UTF-8)",
                ));
            }
        }
        let node = ["CLUSTER", "SETSLOT", &slot_text, "NODE", &migration.to_id];
        connections.get(migration.to)?.request(&node)?;
        connections.get(migration.from)?.request(&node)?;
        for (port, _, running, paused) in self.snapshot() {
            if !running || paused || port == migration.to || port == migration.from {
                continue;
            }
            let connection = connections.get(port)?;
            let is_master = connection
                .request(&["ROLE"])?
                .to_text()
                .starts_with("master");
            if is_master {
                connection.request(&node)?;
            }
        }
        Ok(())
    }
}

/// One connection per node, opened on first use, for the hundreds of commands of a slot move.
#[derive(Default)]
struct Connections(HashMap<u16, Connection>);

impl Connections {
    fn get(&mut self, port: u16) -> Result<&mut Connection, Error> {
        use std::collections::hash_map::Entry as Slot;
        match self.0.entry(port) {
            Slot::Occupied(entry) => Ok(entry.into_mut()),
            Slot::Vacant(entry) => Ok(entry.insert(Connection::open(port)?)),
        }
    }
}

/// `MIGRATE` of `keys` from the node behind `source` to `to`; how many existed and moved.
fn migrate_batch(source: &mut Connection, to: u16, keys: &[&str]) -> Result<usize, Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let to_text = to.to_string();
    let mut args = vec![
        "MIGRATE",
        "127.0.0.1",
        &to_text,
        "",
        "0",
        MIGRATE_TIMEOUT_MS,
        "REPLACE",
        "KEYS",
    ];
    args.extend_from_slice(keys);
    // `NOKEY` when none of them existed; MIGRATE says nothing about a partial batch, so count.
    match source.request(&args)? {
        Reply::Status(status) if status == "NOKEY" => Ok(0),
        _ => Ok(keys.len()),
    }
}
