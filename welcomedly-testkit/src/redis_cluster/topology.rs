//! What the nodes say about the cluster (`CLUSTER NODES`, `CLUSTER INFO`, `INFO replication`)
//! and when they agree: the "settled" state every start and fault control waits for.

use std::collections::{HashMap, HashSet};

use crate::Error;
use crate::resp;

use super::SLOTS;

/// `(first, last, owner id)` of every served slot range, sorted.
pub(super) type SlotTable = Vec<(u16, u16, String)>;

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) myself: bool,
    pub(super) master: bool,
    /// Flagged `fail` or `fail?` by the node whose view this is.
    pub(super) failing: bool,
    pub(super) handshake: bool,
    pub(super) master_id: Option<String>,
    /// Served slot ranges (a migration's `[slot->-id]` markers are not ownership).
    pub(super) slots: Vec<(u16, u16)>,
}

pub(super) fn view_of(port: u16) -> Result<Vec<Entry>, Error> {
    Ok(parse_nodes(
        &resp::request(port, &["CLUSTER", "NODES"])?.to_text(),
    ))
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch>
/// <link> <slot>...`; lines that do not look like that are skipped.
pub(super) fn parse_nodes(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.to_owned();
            let _addr = fields.next()?;
            let flags: Vec<&str> = fields.next()?.split(',').collect();
            let master_id = fields.next()?;
            let slots = fields
                .skip(4)
                .filter(|slot| !slot.starts_with('['))
                .filter_map(|slot| match slot.split_once('-') {
                    Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
                    None => {
                        let only = slot.parse().ok()?;
                        Some((only, only))
                    }
                })
                .collect();
            Some(Entry {
                id,
                myself: flags.contains(&"myself"),
                master: flags.contains(&"master"),
                failing: flags.contains(&"fail") || flags.contains(&"fail?"),
                handshake: flags.contains(&"handshake"),
                master_id: (master_id != "-").then(|| master_id.to_owned()),
                slots,
            })
        })
        .collect()
}

/// `(first, last, owner id)` of every served range, sorted.
pub(super) fn slot_table(view: &[Entry]) -> SlotTable {
    let mut table: SlotTable = view
        .iter()
        .filter(|entry| entry.master)
        .flat_map(|entry| {
            entry
                .slots
                .iter()
                .map(move |&(first, last)| (first, last, entry.id.clone()))
        })
        .collect();
    table.sort_unstable();
    table
}

pub(super) fn owner_in(table: &[(u16, u16, String)], slot: u16) -> Option<&str> {
    table
        .iter()
        .find(|(first, last, _)| (*first..=*last).contains(&slot))
        .map(|(_, _, owner)| owner.as_str())
}

pub(super) fn owner_of(view: &[Entry], slot: u16) -> Option<String> {
    owner_in(&slot_table(view), slot).map(str::to_owned)
}

/// One probe of the settled state over the live nodes `(port, id)`; the agreed slot table, or
/// what is not settled yet.
pub(super) fn settled(live: &[(u16, String)]) -> Result<SlotTable, String> {
    if live.is_empty() {
        return Err("no node is running".to_owned());
    }
    let mut views = Vec::with_capacity(live.len());
    for (port, _) in live {
        let info = resp::request(*port, &["CLUSTER", "INFO"])
            .map_err(|error| error.to_string())?
            .to_text();
        if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
            return Err(format!("127.0.0.1:{port} does not say cluster_state:ok"));
        }
        views.push((*port, view_of(*port).map_err(|error| error.to_string())?));
    }
    let selves: HashMap<&str, &Entry> = views
        .iter()
        .filter_map(|(_, view)| view.iter().find(|entry| entry.myself))
        .map(|entry| (entry.id.as_str(), entry))
        .collect();
    let mut agreed: Option<(u16, SlotTable)> = None;
    for (port, view) in &views {
        let table = slot_table(view);
        let covered: usize = table
            .iter()
            .map(|(first, last, _)| usize::from(last.saturating_sub(*first)) + 1)
            .sum();
        if covered != usize::from(SLOTS) {
            return Err(format!(
                "127.0.0.1:{port} sees {covered} of 16384 slots served"
            ));
        }
        match &agreed {
            Some((first_port, first)) if *first != table => {
                return Err(format!(
                    "127.0.0.1:{first_port} and 127.0.0.1:{port} disagree on the slot map"
                ));
            }
            Some(_) => {}
            None => agreed = Some((*port, table)),
        }
        for (other_port, id) in live {
            let Some(entry) = view.iter().find(|entry| entry.id == *id) else {
                return Err(format!(
                    "127.0.0.1:{port} does not know 127.0.0.1:{other_port}"
                ));
            };
            if entry.failing || entry.handshake {
                return Err(format!(
                    "127.0.0.1:{port} flags 127.0.0.1:{other_port} as failing"
                ));
            }
            let Some(own) = selves.get(id.as_str()) else {
                return Err(format!("127.0.0.1:{other_port} does not list itself"));
            };
            if entry.master != own.master || entry.master_id != own.master_id {
                return Err(format!(
                    "127.0.0.1:{port} has an old view of the role of 127.0.0.1:{other_port}"
                ));
            }
        }
    }
    let live_ids: HashSet<&str> = live.iter().map(|(_, id)| id.as_str()).collect();
    for (port, id) in live {
        let Some(own) = selves.get(id.as_str()) else {
            continue;
        };
        let Some(master) = own.master_id.as_deref() else {
            continue;
        };
        if !live_ids.contains(master) {
            continue;
        }
        let info = resp::request(*port, &["INFO", "replication"])
            .map_err(|error| error.to_string())?
            .to_text();
        if !info
            .lines()
            .any(|line| line.trim() == "master_link_status:up")
        {
            return Err(format!(
                "the replica 127.0.0.1:{port} has no link to its master yet"
            ));
        }
    }
    Ok(agreed.map(|(_, table)| table).unwrap_or_default())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [93->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 1426238316232 1426238316232 3 connected 10923 12000-16383
garbage";
        let view = parse_nodes(text);
        assert_eq!(view.len(), 3);
        let replica = &view[0];
        assert!(!replica.master && !replica.myself);
        assert_eq!(
            replica.master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert!(view[1].myself && view[1].master);
        assert_eq!(view[1].slots, vec![(0, 5460)]);
        assert!(view[2].failing);
        assert_eq!(view[2].slots, vec![(10923, 10923), (12000, 16383)]);
        assert_eq!(
            owner_of(&view, 13000).as_deref(),
            Some("292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f")
        );
        assert_eq!(owner_of(&view, 6000), None);
    }
}
