//! The link on a Sentinel group (welcomedly-testkit's `RedisSentinel`: a primary, a replica,
//! three Sentinels): calls succeed; a SIGKILLed primary and a graceful `SENTINEL FAILOVER` are
//! followed (figures printed: failed calls, worst latency, time from the announcement to the
//! first successful call); the subscriber keeps receiving after a failover; an unreachable
//! Sentinel is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use welcomedly_redis::redis::{self, ErrorKind, ServerErrorKind};
use welcomedly_redis::{Delivery, Link, LinkConfig, Retry};
use welcomedly_testkit::RedisSentinel;

/// The link's budget in these tests (the default).
const BUDGET: Duration = Duration::from_millis(50);
/// Slack for a loaded 2-core test machine over a call's budget: not a speed check.
const SLACK: Duration = Duration::from_millis(200);

/// The test kit's deployment, started off the runtime's threads (it blocks).
async fn start() -> Arc<RedisSentinel> {
    Arc::new(
        tokio::task::spawn_blocking(RedisSentinel::start)
            .await
            .unwrap()
            .unwrap(),
    )
}

/// Runs a (blocking) fault of the test kit on another thread while the test goes on.
fn fault_in_background(
    group: &Arc<RedisSentinel>,
    fault: impl FnOnce(&RedisSentinel) -> Result<(), welcomedly_testkit::Error> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let group = group.clone();
    tokio::task::spawn_blocking(move || fault(&group).unwrap())
}

fn config(group: &RedisSentinel) -> LinkConfig {
    let mut c = LinkConfig::sentinel(group.sentinel_addrs(), group.master_name(), "redis://");
    c.budget = BUDGET;
    c
}

/// The port of the node `ROLE` calls master among the group's two, through `link`'s own
/// connection (`CLIENT INFO` would say the same: the link talks to the node it names).
async fn link_port(link: &Link) -> u16 {
    let info: String = link
        .query(redis::cmd("INFO").arg("server"), Retry::Once)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("tcp_port:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Records when any of the group's Sentinels announces `+switch-master` (the test's own
/// subscriptions, one per Sentinel: the earliest announcement counts).
struct Announcements {
    first: Arc<tokio::sync::Mutex<Option<(Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Announcements {
    async fn start(group: &RedisSentinel) -> Self {
        let first = Arc::new(tokio::sync::Mutex::new(None));
        let mut tasks = Vec::new();
        for addr in group.sentinel_addrs() {
            let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
            let mut pubsub = client.get_async_pubsub().await.unwrap();
            pubsub.subscribe("+switch-master").await.unwrap();
            let first = first.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = pubsub.into_on_message();
                while let Some(msg) = stream.next().await {
                    let now = Instant::now();
                    let text: String = msg.get_payload().unwrap();
                    let mut first = first.lock().await;
                    if first.is_none() {
                        *first = Some((now, text));
                    }
                }
            }));
        }
        Self { first, tasks }
    }

    /// The first announcement, waiting for it up to 30 s (a bound for a hung test).
    async fn wait(&self) -> (Instant, String) {
        for _ in 0..3000 {
            if let Some(first) = self.first.lock().await.clone() {
                return first;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no +switch-master within 30 s");
    }
}

impl Drop for Announcements {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One call of the steady stream.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    took: Duration,
    /// `None`: succeeded.
    error: Option<String>,
    readonly: bool,
}

/// Runs `INCR` (or `SET`) in a loop every 2 ms until `stop`, recording every call.
fn steady_writes(link: Link, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Call>> {
    tokio::spawn(async move {
        let mut calls = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let at = Instant::now();
            let result: Result<(), _> = link
                .query(redis::cmd("SET").arg("last").arg(i), Retry::Never)
                .await;
            let took = at.elapsed();
            let (error, readonly) = match &result {
                Ok(()) => (None, false),
                Err(e) => (
                    Some(e.to_string()),
                    e.redis_error()
                        .is_some_and(|r| r.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)),
                ),
            };
            if let Err(e) = &result {
                assert!(
                    e.is_unavailable() || readonly,
                    "a call failed other than unavailable or READONLY: {e:?}"
                );
            }
            calls.push(Call {
                at,
                took,
                error,
                readonly,
            });
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        calls
    })
}

/// The figures of one failover run, printed for the README.
fn report(what: &str, calls: &[Call], fault: Instant, announced: Instant) -> Duration {
    let failed = calls.iter().filter(|c| c.error.is_some()).count();
    let worst = calls.iter().map(|c| c.took).max().unwrap_or_default();
    let first_ok = calls
        .iter()
        .find(|c| c.error.is_none() && c.at + c.took >= announced)
        .expect("a call succeeded after the announcement");
    let after = (first_ok.at + first_ok.took).saturating_duration_since(announced);
    let readonly = calls.iter().filter(|c| c.readonly).count();
    eprintln!(
        "{what}: {} calls, {failed} failed ({readonly} READONLY), worst latency {worst:?}; announced {:?} after the fault; first successful call {after:?} after the announcement",
        calls.len(),
        announced.saturating_duration_since(fault),
    );
    for c in calls {
        assert!(
            c.took < BUDGET + SLACK,
            "a call took {:?}, past its {BUDGET:?} budget: {c:?}",
            c.took
        );
    }
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_succeed_and_an_unreachable_sentinel_is_skipped() {
    let group = start().await;
    // A Sentinel that is not there, first in the list.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut sentinels = vec![format!("127.0.0.1:{dead}")];
    sentinels.extend(group.sentinel_addrs().into_iter().skip(1));
    let mut c = LinkConfig::sentinel(sentinels, group.master_name(), "redis://");
    c.budget = BUDGET;
    let link = Link::connect(c).await.unwrap();
    assert!(link.is_connected(), "{link:?}");
    let _: () = link
        .query(redis::cmd("SET").arg("k").arg("v"), Retry::Never)
        .await
        .unwrap();
    let v: String = link
        .query(redis::cmd("GET").arg("k"), Retry::Once)
        .await
        .unwrap();
    assert_eq!(v, "v");
    let primary = group.primary().unwrap();
    assert_eq!(link_port(&link).await, primary);
    assert_eq!(group.command_on(primary, &["GET", "k"]).unwrap(), "v");

    // A master name no Sentinel knows: the error names the Sentinels and what they said.
    let mut c = LinkConfig::sentinel(
        group.sentinel_addrs(),
        "nosuchmaster",
        "redis://:hunter2@/0",
    );
    c.connect_timeout = Duration::from_millis(500);
    let link = Link::connect(c).await.unwrap();
    let e = link
        .query::<()>(&redis::cmd("PING"), Retry::Never)
        .await
        .unwrap_err();
    assert!(e.is_not_connected(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_followed_to_the_promoted_replica() {
    let group = start().await;
    let link = Link::connect(config(&group)).await.unwrap();
    let old = link_port(&link).await;
    let announcements = Announcements::start(&group).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = steady_writes(link.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let fault = Instant::now();
    let killing = fault_in_background(&group, |g| g.kill_primary().map(drop));
    let (announced, text) = announcements.wait().await;
    // Run on for a while after the switch: every call there must succeed.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let calls = writer.await.unwrap();
    killing.await.unwrap();

    let new = link_port(&link).await;
    assert_ne!(new, old, "the link is still on the killed primary");
    assert!(text.ends_with(&new.to_string()), "{text}");
    report("SIGKILL of the primary", &calls, fault, announced);
    // After the first success following the announcement, nothing fails.
    let first_ok = calls
        .iter()
        .position(|c| c.error.is_none() && c.at >= announced)
        .unwrap();
    let later_failures: Vec<_> = calls[first_ok..]
        .iter()
        .filter(|c| c.error.is_some())
        .collect();
    assert!(later_failures.is_empty(), "{later_failures:?}");
    // The last write is on the new primary.
    let last: String = link
        .query(redis::cmd("GET").arg("last"), Retry::Once)
        .await
        .unwrap();
    let ok_writes = calls.iter().filter(|c| c.error.is_none()).count();
    assert!(ok_writes > 0 && !last.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_moves_writes_to_the_new_primary() {
    let group = start().await;
    let link = Link::connect(config(&group)).await.unwrap();
    let old = link_port(&link).await;
    let announcements = Announcements::start(&group).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = steady_writes(link.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let fault = Instant::now();
    let failing_over = fault_in_background(&group, |g| g.failover().map(drop));
    let (announced, _) = announcements.wait().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let calls = writer.await.unwrap();
    report("SENTINEL FAILOVER", &calls, fault, announced);
    failing_over.await.unwrap();

    let new = link_port(&link).await;
    assert_ne!(new, old, "the link is still on the demoted primary");
    let after: Vec<_> = calls.iter().filter(|c| c.at >= announced).collect();
    let readonly = after.iter().filter(|c| c.readonly).count();
    assert!(readonly <= 1, "{readonly} READONLY errors after the switch");
    // Writes made after the switch are on the new primary.
    let i = (calls.iter().rposition(|c| c.error.is_none()).unwrap() + 1).to_string();
    let last: String = link
        .query(redis::cmd("GET").arg("last"), Retry::Once)
        .await
        .unwrap();
    assert_eq!(last, i, "the last write is not on the node the link uses");
    let new_role: Vec<redis::Value> = link.query(&redis::cmd("ROLE"), Retry::Once).await.unwrap();
    assert_eq!(
        redis::from_redis_value::<String>(new_role[0].clone()).unwrap(),
        "master"
    );
    // A dedicated connection reaches the new primary too.
    let mut dedicated = link.dedicated().await.unwrap();
    let port: String = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query_async::<Vec<String>>(&mut *dedicated)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(port, new.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_keeps_receiving_after_a_failover() {
    let group = start().await;
    let link = Link::connect(config(&group)).await.unwrap();
    let mut sub = link.subscriber().subscribe("news", 64);
    assert_eq!(
        sub.recv().await,
        Some(Delivery::Subscribed { outage: None })
    );
    let announcements = Announcements::start(&group).await;
    let failing_over = fault_in_background(&group, |g| g.failover().map(drop));
    let (announced, text) = announcements.wait().await;
    // `<name> <old ip> <old port> <new ip> <new port>`
    let new: u16 = text.rsplit(' ').next().unwrap().parse().unwrap();

    // Published on the new primary after the switch (not through the link: a subscriber left on
    // the old primary would receive what the link, left there too, published): received.
    let mut got = None;
    for i in 0..300 {
        let g = group.clone();
        let _ = tokio::task::spawn_blocking(move || {
            g.command_on(new, &["PUBLISH", "news", &i.to_string()])
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        while let Some(Some(d)) = sub.try_recv() {
            if let Delivery::Message(m) = d {
                got = Some((Instant::now(), m));
            }
        }
        if got.is_some() {
            break;
        }
    }
    let (at, _) = got.expect("no message published after the failover was received");
    failing_over.await.unwrap();
    eprintln!(
        "SENTINEL FAILOVER: the subscriber received a message {:?} after the announcement",
        at.saturating_duration_since(announced)
    );
}

/// Pub/sub clients on the Sentinel at `port` (the link's `+switch-master` watch is one).
async fn subscribers_on(group: &Arc<RedisSentinel>, port: u16) -> usize {
    let g = group.clone();
    let list = tokio::task::spawn_blocking(move || g.command_on(port, &["CLIENT", "LIST"]))
        .await
        .unwrap()
        .unwrap_or_default();
    list.lines().filter(|l| l.contains(" sub=1 ")).count()
}

/// Polls `cond` every 50 ms for up to `bound` (a bound for a hung test, not a speed check).
async fn within<F, Fut>(bound: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < bound {
        if cond().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within {bound:?}: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_watch_leaves_a_frozen_sentinel_for_another() {
    let group = start().await;
    let ports = group.sentinel_ports();
    let link = Link::connect(config(&group)).await.unwrap();
    let old = link_port(&link).await;
    // The watch subscribes on the Sentinel that answered (the first listed).
    within(
        Duration::from_secs(5),
        "the watch on the first Sentinel",
        || async { subscribers_on(&group, ports[0]).await == 1 },
    )
    .await;
    assert_eq!(link.stats().master_switches, 0);

    // Frozen: it accepts connections and answers nothing; the watch's pings go unanswered.
    group.pause(ports[0]).unwrap();
    let moved = within(
        Duration::from_secs(15),
        "the watch on another Sentinel",
        || async {
            subscribers_on(&group, ports[1]).await + subscribers_on(&group, ports[2]).await == 1
        },
    )
    .await;
    eprintln!("a frozen Sentinel: the failover watch moved to another in {moved:?}");

    // A failover (through a live Sentinel) is followed through the new watch.
    let g = group.clone();
    let (master, live) = (group.master_name().to_owned(), ports[1]);
    tokio::task::spawn_blocking(move || g.command_on(live, &["SENTINEL", "FAILOVER", &master]))
        .await
        .unwrap()
        .unwrap();
    within(
        Duration::from_secs(30),
        "the link on the new primary",
        || async {
            link.stats().master_switches >= 1
                && link
                    .query::<String>(redis::cmd("INFO").arg("server"), Retry::Once)
                    .await
                    .is_ok_and(|info| !info.contains(&format!("tcp_port:{old}\r\n")))
        },
    )
    .await;
    group.resume(ports[0]).unwrap();
}

/// A master demoted behind the Sentinels' back (`REPLICAOF`: their view is stale): the first
/// write meets `READONLY`, the connection is replaced and the node, which says it is not
/// master, is not used again; when it is master again the link is back on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_master_is_not_used() {
    let group = start().await;
    let link = Link::connect(config(&group)).await.unwrap();
    let primary = group.primary().unwrap();
    let replica = *group.data_ports().iter().find(|p| **p != primary).unwrap();
    let on_primary = |args: Vec<String>| {
        let g = group.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                g.command_on(primary, &args)
            })
            .await
            .unwrap()
            .unwrap()
        }
    };
    let set = || async {
        link.query::<()>(redis::cmd("SET").arg("k").arg("v"), Retry::Never)
            .await
    };
    set().await.unwrap();

    on_primary(vec![
        "REPLICAOF".into(),
        "127.0.0.1".into(),
        replica.to_string(),
    ])
    .await;
    let mut readonly = 0;
    let mut refused = 0;
    for _ in 0..50 {
        match set().await {
            Ok(()) => panic!("a write succeeded on a replica"),
            Err(e)
                if e.redis_error()
                    .is_some_and(|r| r.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)) =>
            {
                readonly += 1;
            }
            Err(e) => {
                assert!(e.is_unavailable(), "{e:?}");
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("demoted master: {readonly} READONLY, {refused} refused of 50 writes");
    assert!(readonly <= 1, "{readonly} writes reached the demoted node");

    on_primary(vec!["REPLICAOF".into(), "NO".into(), "ONE".into()]).await;
    within(Duration::from_secs(10), "writes succeed again", || async {
        set().await.is_ok()
    })
    .await;
    assert_eq!(link_port(&link).await, primary);
}

/// What the link logged, for checks that no password reaches a log line.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Sentinels that require a password (an ACL user, the default user switched off) and a
/// master reached as its own ACL user: the link authenticates to both with the credentials
/// from the topology (`redis://user:password@host:port` Sentinels, `REDIS_SENTINEL_MASTER_URL`);
/// without them, or with a wrong password, calls fail as "not connected" and no password shows
/// in an error, a `Debug` or a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_a_master_that_require_passwords() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // Global: the link logs from its own tasks, on any of the runtime's threads. Only this test
    // of the binary sets it.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let group = start().await;
    for port in group.data_ports() {
        group
            .command_on(
                port,
                &[
                    "ACL",
                    "SETUSER",
                    "app",
                    "on",
                    ">m4ster-pw",
                    "~*",
                    "&*",
                    "+@all",
                ],
            )
            .unwrap();
    }
    let primary = group.primary().unwrap();
    let sentinel_ports = group.sentinel_ports();
    for &port in &sentinel_ports {
        group
            .command_on(
                port,
                &["ACL", "SETUSER", "watcher", "on", ">s3ntinel-pw", "+@all"],
            )
            .unwrap();
    }
    // The Sentinels refuse anyone else from now on (the kit cannot reach them either: this test
    // causes no fault).
    for &port in &sentinel_ports {
        group
            .command_on(port, &["ACL", "SETUSER", "default", "off"])
            .unwrap();
    }
    let sentinels_with = |password: &str| -> Vec<String> {
        sentinel_ports
            .iter()
            .map(|port| format!("redis://watcher:{password}@127.0.0.1:{port}"))
            .collect()
    };

    // The right credentials: the link resolves the master through the Sentinels and talks to it
    // as `app`.
    let mut c = LinkConfig::sentinel(
        sentinels_with("s3ntinel-pw"),
        group.master_name(),
        "redis://app:m4ster-pw@master/0",
    );
    c.budget = BUDGET;
    assert!(!format!("{c:?}").contains("pw"), "{c:?}");
    let link = Link::connect(c).await.unwrap();
    assert!(link.is_connected(), "{link:?}");
    let who: String = link
        .query(redis::cmd("ACL").arg("WHOAMI"), Retry::Once)
        .await
        .unwrap();
    assert_eq!(who, "app");
    assert_eq!(link_port(&link).await, primary);
    drop(link);

    // Wrong Sentinel password, and no Sentinel credentials at all: nothing resolves.
    for sentinels in [
        sentinels_with("wrong-pw"),
        sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect(),
    ] {
        let mut c = LinkConfig::sentinel(
            sentinels,
            group.master_name(),
            "redis://app:m4ster-pw@master/0",
        );
        c.budget = BUDGET;
        c.connect_timeout = Duration::from_millis(500);
        let link = Link::connect(c).await.unwrap();
        let e = link
            .query::<()>(&redis::cmd("PING"), Retry::Never)
            .await
            .unwrap_err();
        assert!(e.is_not_connected(), "{e:?}");
        for shown in [e.to_string(), format!("{e:?}"), format!("{link:?}")] {
            assert!(!shown.contains("-pw"), "{shown}");
        }
    }
    // A wrong master password: the Sentinels answer, the master refuses.
    let mut c = LinkConfig::sentinel(
        sentinels_with("s3ntinel-pw"),
        group.master_name(),
        "redis://app:wrong-pw@master/0",
    );
    c.budget = BUDGET;
    c.connect_timeout = Duration::from_millis(500);
    let link = Link::connect(c).await.unwrap();
    let e = link
        .query::<()>(&redis::cmd("PING"), Retry::Never)
        .await
        .unwrap_err();
    assert!(e.is_not_connected(), "{e:?}");
    assert!(!e.to_string().contains("-pw"), "{e}");
    drop(link);

    let text = logs.text();
    assert!(
        text.contains("watcher") || text.contains("Sentinel") || text.contains("sentinel"),
        "the failed attempts were logged: {text}"
    );
    assert!(!text.contains("-pw"), "a password reached the log:\n{text}");
}
