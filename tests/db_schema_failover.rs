//! welcomedly-db through schema changes and a dead primary, against a real PostgreSQL primary
//! with streaming replicas: the example's migrations run once by many instances starting at
//! once, the schema floor (no read fails on a lagging replica after a migration, at start-up or
//! online), a write refused as read-only, a primary set read-only, failover with the old
//! primary stopped or still running (fenced), and a dead replica ejected while idle.
//! Each test prints what it measured (`cargo test --test db_schema_failover -- --nocapture`);
//! `FAILOVER_RUNS=10` repeats the failover and ejection measurements for p50/max figures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::Postgres;
use welcomedly_db::{Router, RouterConfig};
use welcomedly_testkit::{Node, PgCluster};

/// The example's migrations (examples/call_center/migrations/postgres).
static MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("examples/call_center/migrations/postgres");

fn cluster(replicas: usize) -> Option<Arc<PgCluster>> {
    match PgCluster::start(replicas) {
        Ok(pg) => Some(Arc::new(pg)),
        Err(e) if e.is_not_installed() => {
            eprintln!("{e}; skipping");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// A router on the defaults (probe every 500 ms, 3 s acquire timeout), as the example builds it.
async fn connect(pg: &PgCluster) -> Router<Postgres> {
    RouterConfig::new(pg.primary_url())
        .replicas(pg.replica_urls())
        .connect()
        .await
        .unwrap()
}

async fn blocking<T: Send + 'static>(
    pg: &Arc<PgCluster>,
    f: impl FnOnce(&PgCluster) -> T + Send + 'static,
) -> T {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || f(&pg)).await.unwrap()
}

async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// What the example does at start: the migrations on the primary, then the schema floor.
async fn migrate(router: &Router<Postgres>) {
    let mut conn = router.write_connection().await.unwrap();
    MIGRATIONS.run(&mut *conn).await.unwrap();
    drop(conn);
    router.publish_floor().await.unwrap();
}

fn runs() -> usize {
    std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn p50_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

/// Reads `sql` through `read_after(None)` (what the example's handlers do without a token)
/// until `stop`; returns (reads, failures, reads served by a replica).
async fn read_loop(
    router: Router<Postgres>,
    sql: &'static str,
    stop: Arc<AtomicBool>,
) -> (u64, u64, u64) {
    let (mut reads, mut failed, mut on_replica) = (0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        let routed = router.read_after(None).await;
        let replica = routed.is_replica();
        let out = sqlx::query(sql).fetch_all(&*routed).await;
        drop(routed);
        reads += 1;
        match out {
            Ok(_) => on_replica += u64::from(replica),
            Err(e) => {
                failed += 1;
                eprintln!("read failed (replica: {replica}): {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (reads, failed, on_replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_instances_starting_at_once_migrate_once_and_all_start() {
    let Some(pg) = cluster(1) else { return };
    // Four instances starting at once (concurrently on this task: the migrator's future is
    // not `Send` through `tokio::spawn`'s higher-ranked bounds).
    let start = || async {
        let router = connect(&pg).await;
        migrate(&router).await;
        router
    };
    let (r1, r2, r3, r4) = tokio::join!(start(), start(), start(), start());
    let routers = [r1, r2, r3, r4];
    let ran = pg
        .psql(
            Node::Primary,
            "SELECT count(*) FROM _sqlx_migrations WHERE success",
        )
        .unwrap();
    assert_eq!(ran, MIGRATIONS.iter().count().to_string());
    let floor = routers[0].floor();
    assert!(floor > 0);
    for r in &routers {
        assert!(r.floor() > 0);
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM campaigns")
            .fetch_one(&*r.read_after(None).await)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    // A fifth instance finds nothing to run and learns the floor at start-up.
    let late = connect(&pg).await;
    assert!(late.floor() >= floor, "{} < {floor}", late.floor());
    eprintln!("4 instances at once: each migration ran once, all started; floor {floor:#x}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_against_a_lagging_replica_fails_no_read() {
    let Some(pg) = cluster(1) else { return };
    blocking(&pg, |pg| {
        pg.set_replay_delay(0, Duration::from_secs(2)).unwrap()
    })
    .await;
    let router = connect(&pg).await;
    migrate(&router).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_loop(
        router.clone(),
        "SELECT id, name, status FROM campaigns",
        stop.clone(),
    ));
    // Long enough for the replica to replay the schema and serve reads again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let (reads, failed, on_replica) = reader.await.unwrap();
    assert_eq!(failed, 0, "{failed} of {reads} reads failed");
    assert!(
        on_replica > 0,
        "the replica never served a read again ({reads} reads)"
    );
    eprintln!(
        "start on an empty database, replica 2 s behind: {failed} of {reads} reads failed, {on_replica} served by the replica once it replayed the schema"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_migration_while_replicas_lag_fails_no_read() {
    let Some(pg) = cluster(2) else { return };
    let old = connect(&pg).await;
    migrate(&old).await;
    blocking(&pg, |pg| {
        pg.wait_replica_caught_up(0, Duration::from_secs(5))
            .unwrap();
        pg.wait_replica_caught_up(1, Duration::from_secs(5))
            .unwrap();
        pg.set_replay_delay(0, Duration::from_secs(1)).unwrap();
        pg.set_replay_delay(1, Duration::from_secs(1)).unwrap();
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    // Old code keeps reading the old columns through its instance.
    let old_reads = tokio::spawn(read_loop(
        old.clone(),
        "SELECT id, name FROM campaigns",
        stop.clone(),
    ));
    // The migration tool (another instance) adds a column, then publishes the floor.
    let tool = connect(&pg).await;
    let before = old.floor();
    let watched = old.clone();
    let learned_at = tokio::spawn(async move {
        while watched.floor() <= before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Instant::now()
    });
    tool.write_with(async |c| {
        sqlx::query("ALTER TABLE campaigns ADD COLUMN priority int NOT NULL DEFAULT 0")
            .execute(c)
            .await
    })
    .await
    .unwrap();
    let floor = tool.publish_floor().await.unwrap();
    let published = Instant::now();
    // The same instance reads the new column at once.
    let tool_reads = tokio::spawn(read_loop(
        tool.clone(),
        "SELECT id, priority FROM campaigns",
        stop.clone(),
    ));
    // New code starts (a deploy) and reads the new column from its first request.
    let new = connect(&pg).await;
    assert!(new.floor() >= floor);
    let new_reads = tokio::spawn(read_loop(
        new.clone(),
        "SELECT id, priority FROM campaigns",
        stop.clone(),
    ));
    // The old instance learns the floor from its probes of the primary.
    let learned = tokio::time::timeout(Duration::from_secs(3), learned_at)
        .await
        .expect("the old instance learns the floor within 3 s")
        .unwrap()
        .saturating_duration_since(published);
    assert!(old.floor() >= floor);
    // Told by a notification when the floor commits, not at its next probe (every 500 ms).
    assert!(
        learned < Duration::from_millis(200),
        "learned after {learned:?}"
    );
    let old_new_reads = tokio::spawn(read_loop(
        old.clone(),
        "SELECT id, priority FROM campaigns",
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut replica_reads = 0;
    for (what, task) in [
        ("old code", old_reads),
        ("the migrating instance", tool_reads),
        ("a new instance", new_reads),
        ("the old instance on the new column", old_new_reads),
    ] {
        let (reads, failed, on_replica) = task.await.unwrap();
        assert_eq!(failed, 0, "{what}: {failed} of {reads} reads failed");
        total += reads;
        replica_reads += on_replica;
    }
    assert!(replica_reads > 0, "no read was served by a replica");
    eprintln!(
        "online migration, 2 replicas 1 s behind: 0 of {total} reads failed ({replica_reads} on replicas); another instance learned the floor in {learned:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_read_only_moves_writes_at_once_and_a_read_only_primary_takes_none() {
    let Some(pg) = cluster(1) else { return };
    let mut config = RouterConfig::new(pg.primary_url()).replicas(pg.replica_urls());
    // Probes so rare that only the re-probe a refused write triggers can explain a quick change.
    config.probe_interval = Duration::from_secs(30);
    let router = config.connect().await.unwrap();
    router
        .write_with(async |c| sqlx::query("CREATE TABLE t (v int)").execute(c).await)
        .await
        .unwrap();
    assert!(router.has_writer());
    // The primary is set read-only (as a managed failover or an operator fences it).
    blocking(&pg, |pg| {
        pg.psql(
            Node::Primary,
            "ALTER SYSTEM SET default_transaction_read_only = on",
        )
        .unwrap();
        pg.psql(Node::Primary, "SELECT pg_reload_conf()").unwrap();
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = router
        .write_with(async |c| sqlx::query("INSERT INTO t VALUES (1)").execute(c).await)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("read-only"), "{refused}");
    let at = Instant::now();
    let moved = until(
        "the router stops writing to the read-only primary",
        Duration::from_secs(2),
        || !router.has_writer(),
    )
    .await;
    let next = router
        .write_with(async |c| sqlx::query("INSERT INTO t VALUES (2)").execute(c).await)
        .await
        .unwrap_err();
    assert!(next.is_no_writer(), "{next}");
    assert!(at.elapsed() < Duration::from_secs(2));
    // Back to read-write: the primary takes writes again.
    blocking(&pg, |pg| {
        pg.psql(
            Node::Primary,
            "ALTER SYSTEM RESET default_transaction_read_only",
        )
        .unwrap();
        pg.psql(Node::Primary, "SELECT pg_reload_conf()").unwrap();
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A write attempt while there is no writer makes every node be probed at once.
    let _ = router.write();
    until(
        "the primary takes writes again",
        Duration::from_secs(2),
        || router.has_writer(),
    )
    .await;
    router
        .write_with(async |c| sqlx::query("INSERT INTO t VALUES (3)").execute(c).await)
        .await
        .unwrap();
    eprintln!(
        "25006 on a write: writes left the read-only primary {moved:?} after the refusal (probe interval 30 s)"
    );
}

/// A write loop on one instance: inserts every ~5 ms through `write_with`, recording for each
/// accepted write the server port it landed on and when.
async fn write_loop(router: Router<Postgres>, stop: Arc<AtomicBool>) -> Vec<(Instant, i32)> {
    let mut landed = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let out = router
            .write_with(async |c| {
                sqlx::query_scalar::<_, i32>(
                    "INSERT INTO t VALUES (inet_server_port()) RETURNING v",
                )
                .fetch_one(c)
                .await
            })
            .await;
        if let Ok(port) = out {
            landed.push((Instant::now(), port));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    landed
}

/// One failover: the old primary killed (or left running), replica 0 promoted, two instances
/// writing throughout. Returns promotion-to-first-write per instance.
async fn failover(kill_old: bool) -> Option<Vec<Duration>> {
    let pg = cluster(2)?;
    let a = connect(&pg).await;
    let b = connect(&pg).await;
    a.write_with(async |c| sqlx::query("CREATE TABLE t (v int)").execute(c).await)
        .await
        .unwrap();
    let old_port = i32::from(pg.primary_port());
    let new_port = i32::from(pg.replica_port(0).unwrap());
    blocking(&pg, |pg| {
        pg.wait_replica_caught_up(0, Duration::from_secs(5))
            .unwrap();
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        tokio::spawn(write_loop(a.clone(), stop.clone())),
        tokio::spawn(write_loop(b.clone(), stop.clone())),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    if kill_old {
        blocking(&pg, |pg| pg.kill(Node::Primary).unwrap()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let called = Instant::now();
    blocking(&pg, |pg| pg.promote(0).unwrap()).await;
    let promoted = Instant::now();
    eprintln!("promote took {:?}", promoted - called);
    tokio::time::sleep(Duration::from_secs(2)).await;
    if !kill_old {
        // The new primary hangs long enough to be ejected: the old one, still running on an
        // older timeline, is fenced and must not take the writes back.
        blocking(&pg, |pg| pg.pause(Node::Replica(0)).unwrap()).await;
        until(
            "the hung new primary is ejected",
            Duration::from_secs(5),
            || !a.has_writer() && !b.has_writer(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !a.has_writer() && !b.has_writer(),
            "the fenced old primary took writes"
        );
        blocking(&pg, |pg| pg.resume(Node::Replica(0)).unwrap()).await;
        until("the new primary is back", Duration::from_secs(5), || {
            a.has_writer() && b.has_writer()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.writer_label(), Some("replica 0"));
    }
    stop.store(true, Ordering::Relaxed);
    let mut firsts = Vec::new();
    for (name, w) in ["a", "b"].into_iter().zip(writers) {
        let landed = w.await.unwrap();
        let first_new = landed
            .iter()
            .position(|(_, port)| *port == new_port)
            .unwrap_or_else(|| panic!("instance {name}: no write landed on the promoted replica"));
        // Never back on the old primary once the new one took a write.
        assert!(
            landed[first_new..]
                .iter()
                .all(|(_, port)| *port == new_port),
            "instance {name}: a write landed on the old primary {old_port} after the switch"
        );
        let at = landed[first_new].0;
        eprintln!(
            "instance {name}: first write on the new primary {:?} after promote was called, {:?} before it returned",
            at.saturating_duration_since(called),
            promoted.saturating_duration_since(at)
        );
        firsts.push(at.saturating_duration_since(promoted));
    }
    let stats = a.stats();
    assert!(stats.writer_changes >= 1);
    Some(firsts)
}

async fn failover_runs(kill_old: bool, what: &str) {
    let mut all = Vec::new();
    for _ in 0..runs() {
        let Some(firsts) = failover(kill_old).await else {
            return;
        };
        for f in &firsts {
            // Goal 0.5 s; generous slack for a loaded box.
            assert!(
                *f < Duration::from_millis(1500),
                "{what}: first write {f:?} after promotion"
            );
        }
        all.extend(firsts);
    }
    let (p50, max) = p50_max(all.clone());
    eprintln!(
        "{what}: promotion to first accepted write per instance over {} runs: p50 {p50:?}, max {max:?} ({all:?})",
        runs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_with_the_old_primary_stopped_takes_writes_at_once() {
    failover_runs(true, "old primary stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_with_the_old_primary_running_fences_it() {
    failover_runs(false, "old primary still running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_dead_replica_leaves_rotation_quickly() {
    let mut times = Vec::new();
    for _ in 0..runs() {
        let Some(pg) = cluster(2) else { return };
        let router = connect(&pg).await;
        until("both replicas in rotation", Duration::from_secs(5), || {
            router.nodes().iter().all(|n| n.healthy)
        })
        .await;
        // Idle: no request at all; somewhere within a probe interval.
        tokio::time::sleep(Duration::from_millis(fastrand_ms())).await;
        let t0 = Instant::now();
        blocking(&pg, |pg| pg.kill_replica(1).unwrap()).await;
        let kill_took = t0.elapsed();
        let r2 = router.clone();
        let watch = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut last = r2.nodes()[2].errors;
            while t0.elapsed() < Duration::from_secs(1) {
                let e = r2.nodes()[2].errors;
                if e != last {
                    seen.push((t0.elapsed(), e));
                    last = e;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen
        });
        let out = until(
            "the dead replica leaves rotation",
            Duration::from_secs(3),
            || !router.nodes()[2].healthy,
        )
        .await;
        eprintln!("kill took {kill_took:?}; errors {:?}", watch.await.unwrap());
        assert!(out < Duration::from_millis(1000), "ejected after {out:?}");
        times.push(out);
    }
    let (p50, max) = p50_max(times.clone());
    eprintln!(
        "idle dead replica (pg_ctl stop -m immediate) out of rotation after kill returned: p50 {p50:?}, max {max:?} over {} runs",
        times.len()
    );
}

fn fastrand_ms() -> u64 {
    u64::from(std::process::id() % 7) * 60 + 100
}

/// Turns the stopped old primary into a standby of replica `index` (as an operator rejoins a
/// demoted primary), files owned like the data directory.
fn rejoin_as_standby(pg: &PgCluster, index: usize) {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let dir = pg.dir().join("primary");
    let meta = std::fs::metadata(&dir).unwrap();
    let signal = dir.join("standby.signal");
    std::fs::write(&signal, "").unwrap();
    std::os::unix::fs::chown(&signal, Some(meta.uid()), Some(meta.gid())).unwrap();
    let port = pg.replica_port(index).unwrap();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("postgresql.auto.conf"))
        .unwrap();
    writeln!(
        conf,
        "primary_conninfo = 'host=127.0.0.1 port={port} user=postgres'\nrecovery_target_timeline = 'latest'"
    )
    .unwrap();
    pg.restart(Node::Primary).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_rejoining_as_a_standby_takes_no_writes() {
    let Some(pg) = cluster(1) else { return };
    let router = connect(&pg).await;
    router
        .write_with(async |c| sqlx::query("CREATE TABLE t (v int)").execute(c).await)
        .await
        .unwrap();
    let new_port = i32::from(pg.replica_port(0).unwrap());
    blocking(&pg, |pg| {
        pg.wait_replica_caught_up(0, Duration::from_secs(5))
            .unwrap();
        pg.stop(Node::Primary).unwrap();
        pg.promote(0).unwrap();
    })
    .await;
    let _ = router.write();
    until(
        "writes go to the promoted replica",
        Duration::from_secs(3),
        || router.writer_label() == Some("replica 0") && router.has_writer(),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn(write_loop(router.clone(), stop.clone()));
    blocking(&pg, |pg| rejoin_as_standby(pg, 0)).await;
    // The old primary is back, in recovery: in rotation as a replica, never the writer.
    let back = until(
        "the old primary serves as a replica",
        Duration::from_secs(10),
        || {
            let n = &router.nodes()[0];
            n.healthy && n.in_recovery && !n.writer
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let landed = writes.await.unwrap();
    assert!(!landed.is_empty());
    assert!(
        landed.iter().all(|(_, port)| *port == new_port),
        "a write landed on the demoted primary"
    );
    assert_eq!(router.writer_label(), Some("replica 0"));
    let on_old = router.read();
    assert_eq!(on_old.node(), "primary", "the demoted primary serves reads");
    drop(on_old);
    eprintln!(
        "demoted primary rejoined as a standby: in rotation as a replica {back:?} after its restart returned; {} writes, all on the new primary",
        landed.len()
    );
}
