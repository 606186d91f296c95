//! The faults: a master killed, a graceful failover, a node frozen, killed or restarted, a
//! master added.

use std::time::Instant;

use crate::Error;
use crate::resp;

use super::topology::{owner_in, view_of};
use super::{Failover, RedisCluster, SETTLE_TIMEOUT, no_live_node, spawn_member};

impl RedisCluster {
    /// SIGKILLs the master serving `slot` and returns once one of its replicas was promoted,
    /// serves the slot, and every running node says `cluster_state:ok` and agrees on the slot
    /// map. With the default 1 s node timeout this takes 2–4 s.
    ///
    /// # Errors
    ///
    /// The master has no running replica ([`Error::is_invalid_request`]; nothing is killed), or
    /// the cluster did not settle within 30 s.
    pub fn kill_master(&self, slot: u16) -> Result<Failover, Error> {
        let master = self.master_for_slot(slot)?;
        let replica = self.first_replica(master, slot)?;
        let replica_id = self.id_of(replica)?;
        let started = Instant::now();
        self.kill(master)?;
        self.wait_settled(
            &format!("the replica 127.0.0.1:{replica} to take over slot {slot}"),
            SETTLE_TIMEOUT,
            |table| {
                if owner_in(table, slot) == Some(replica_id.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "slot {slot} is not served by 127.0.0.1:{replica} yet"
                    ))
                }
            },
        )?;
        Ok(Failover {
            from: master,
            to: replica,
            took: started.elapsed(),
        })
    }

    /// `CLUSTER FAILOVER` on a replica of the master serving `slot`: the roles swap without data
    /// loss. Returns once the replica serves the slot, the old master replicates it with its link
    /// up, and no node is flagged failing.
    ///
    /// # Errors
    ///
    /// The master has no running replica ([`Error::is_invalid_request`]), the replica refused
    /// the command, or the cluster did not settle within 30 s.
    pub fn failover(&self, slot: u16) -> Result<Failover, Error> {
        let master = self.master_for_slot(slot)?;
        let replica = self.first_replica(master, slot)?;
        let replica_id = self.id_of(replica)?;
        let started = Instant::now();
        resp::request(replica, &["CLUSTER", "FAILOVER"])?;
        self.wait_settled(
            &format!("the replica 127.0.0.1:{replica} to take over slot {slot}"),
            SETTLE_TIMEOUT,
            |table| {
                if owner_in(table, slot) != Some(replica_id.as_str()) {
                    return Err(format!(
                        "slot {slot} is not served by 127.0.0.1:{replica} yet"
                    ));
                }
                let old = view_of(master).map_err(|error| error.to_string())?;
                match old.iter().find(|entry| entry.myself) {
                    Some(me) if me.master_id.as_deref() == Some(replica_id.as_str()) => Ok(()),
                    _ => Err(format!(
                        "127.0.0.1:{master} does not replicate 127.0.0.1:{replica} yet"
                    )),
                }
            },
        )?;
        Ok(Failover {
            from: master,
            to: replica,
            took: started.elapsed(),
        })
    }

    fn first_replica(&self, master: u16, slot: u16) -> Result<u16, Error> {
        self.replicas_of(master)?.into_iter().next().ok_or_else(|| {
            Error::invalid_request(
                format_args!("failing over slot {slot} of 127.0.0.1:{master}"),
                "that master has no running replica to promote: start the cluster with \
                 replicas_per_master(1) or more, or restart its replica",
            )
        })
    }

    /// SIGKILLs the node at `node` without waiting for anything (a replica, or a master whose
    /// failover the test wants to watch itself). Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// `node` is not a node of the cluster.
    pub fn kill(&self, node: u16) -> Result<(), Error> {
        let index = self.index_of(node)?;
        if let Some(member) = self.lock().get_mut(index) {
            member.process.kill();
        }
        Ok(())
    }

    /// Freezes the node at `node` (SIGSTOP): it accepts connections and answers nothing. After
    /// the node timeout the others flag it failing and, for a master with a replica, promote
    /// the replica. Nothing is awaited.
    ///
    /// # Errors
    ///
    /// `node` is not a node of the cluster or is not running, or `kill -STOP` failed.
    pub fn pause(&self, node: u16) -> Result<(), Error> {
        let index = self.index_of(node)?;
        match self.lock().get_mut(index) {
            Some(member) => member.process.pause(),
            None => Ok(()),
        }
    }

    /// Lets a [paused](Self::pause) node run again (SIGCONT). Nothing is awaited: a master that
    /// was replaced meanwhile turns itself into a replica within a moment.
    ///
    /// # Errors
    ///
    /// `node` is not a node of the cluster, or `kill -CONT` failed.
    pub fn resume(&self, node: u16) -> Result<(), Error> {
        let index = self.index_of(node)?;
        match self.lock().get_mut(index) {
            Some(member) => member.process.resume(),
            None => Ok(()),
        }
    }

    /// Starts a [killed](Self::kill) node again on its ports (a running one is killed first). It
    /// keeps its node id and cluster view (`nodes.conf`), not its data: a master that was
    /// replaced rejoins as a replica of its successor and syncs from it. Returns once every
    /// running node agrees and every replica's link is up.
    ///
    /// # Errors
    ///
    /// `node` is not a node of the cluster, its ports stayed taken, it did not come up, or the
    /// cluster did not settle within 30 s.
    pub fn restart(&self, node: u16) -> Result<(), Error> {
        let index = self.index_of(node)?;
        if let Some(member) = self.lock().get_mut(index) {
            member.process.restart()?;
        }
        self.wait_settled(
            &format!("127.0.0.1:{node} to rejoin"),
            SETTLE_TIMEOUT,
            |_| Ok(()),
        )
    }

    /// Starts a new master, empty (no slots, no replica), introduces it with `CLUSTER MEET` and
    /// returns its port once every running node knows it. Move slots to it with
    /// [`move_slots`](Self::move_slots).
    ///
    /// # Errors
    ///
    /// The new node did not come up, or the cluster did not settle within 30 s.
    pub fn add_master(&self) -> Result<u16, Error> {
        let index = self.lock().len();
        let member = spawn_member(&self.binary, &self.dir, &self.config, index)?;
        let port = member.process.port();
        self.lock().push(member);
        let bus = self.bus_ports().get(&port).copied().unwrap_or_default();
        let hub = self
            .seed_ports()
            .into_iter()
            .find(|seed| *seed != port)
            .ok_or_else(no_live_node)?;
        resp::request(
            hub,
            &[
                "CLUSTER",
                "MEET",
                "127.0.0.1",
                &port.to_string(),
                &bus.to_string(),
            ],
        )?;
        self.wait_settled(
            &format!("the new master 127.0.0.1:{port} to join"),
            SETTLE_TIMEOUT,
            |_| Ok(()),
        )?;
        Ok(port)
    }
}
