//! Event bus: publish on one bus instance → receive on another (each on its own Redis link, as
//! two processes would have), for both tiers, beside a bare Redis round trip.
//! Target: fan-out p99 ≤ 2 ms on loopback. Skipped when no `redis-server` is installed.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use serde::{Deserialize, Serialize};
use welcomedly_cluster::bus::{Bus, BusConfig, Delivery, Subscription, Topic};

#[derive(Debug, Serialize, Deserialize)]
struct StatusChanged {
    agent: String,
    status: String,
}

type Call = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()>>>>;

fn round_trip(
    publisher: Bus,
    topic: Topic<StatusChanged>,
    sub: Subscription<StatusChanged>,
) -> Call {
    let sub = Rc::new(tokio::sync::Mutex::new(sub));
    let event = Rc::new(StatusChanged {
        agent: "agent-0042".to_owned(),
        status: "on_call".to_owned(),
    });
    Box::new(move || {
        let (publisher, topic, sub, event) =
            (publisher.clone(), topic.clone(), sub.clone(), event.clone());
        Box::pin(async move {
            publisher.publish(&topic, &*event).await.unwrap();
            match sub.lock().await.recv().await {
                Some(Delivery::Event(e)) => {
                    black_box(e);
                }
                other => panic!("unexpected {other:?}"),
            }
        })
    })
}

pub(crate) fn bench(c: &mut Criterion) {
    // Skipped entirely (no Redis started) when a criterion filter names another group.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|f| "bus".contains(f.as_str()) || f.starts_with("bus"))
    {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = match welcomedly_testkit::RedisServer::start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bus skipped: {e}");
            return;
        }
    };
    let url = redis.url();
    let variants: Vec<(&str, Call)> = rt.block_on(async {
        // Two links, as two processes would have.
        let mut link = welcomedly_redis::LinkConfig::new(url.clone());
        link.budget = Duration::from_secs(1);
        let (link_a, link_b) = (
            welcomedly_redis::Link::connect(link.clone()).await.unwrap(),
            welcomedly_redis::Link::connect(link).await.unwrap(),
        );
        let (a, b) = (
            BusConfig::new().build(&link_a).await.unwrap(),
            BusConfig::new().build(&link_b).await.unwrap(),
        );
        let client = redis::Client::open(url.as_str()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        let ping: Call = Box::new(move || {
            let mut conn = conn.clone();
            Box::pin(async move {
                let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                black_box(pong);
            })
        });
        let ephemeral = Topic::<StatusChanged>::ephemeral("bench.ephemeral").unwrap();
        let durable = Topic::<StatusChanged>::durable("bench.durable").unwrap();
        let sub_e = a.subscribe(&ephemeral).await;
        let sub_d = a.subscribe(&durable).await;
        vec![
            ("redis PING round trip", ping),
            (
                "ephemeral: publish on B -> receive on A",
                round_trip(b.clone(), ephemeral, sub_e),
            ),
            (
                "durable: publish on B -> receive on A",
                round_trip(b, durable, sub_d),
            ),
        ]
    });

    let mut g = c.benchmark_group("bus");
    g.throughput(Throughput::Elements(1));
    for (name, call) in &variants {
        g.bench_function(*name, |b| b.to_async(&rt).iter(call));
    }
    g.finish();

    // Latency percentiles, the variants alternating in short slices within one process.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    rt.block_on(async {
        for _ in 0..200 {
            for (i, (_, call)) in variants.iter().enumerate() {
                for _ in 0..25 {
                    let t = Instant::now();
                    call().await;
                    samples[i].push(t.elapsed());
                }
            }
        }
    });
    eprintln!("\nbus, interleaved (5000 calls each): p50 / p90 / p99 / max");
    for ((name, _), s) in variants.iter().zip(&mut samples) {
        s.sort();
        let p = |q: usize| s[(s.len() * q / 100).min(s.len() - 1)];
        eprintln!(
            "  {name:<42} {:>9.1?} {:>9.1?} {:>9.1?} {:>9.1?}",
            p(50),
            p(90),
            p(99),
            s[s.len() - 1]
        );
    }
    drop(variants);
    drop(redis);
}
