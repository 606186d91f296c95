//! The Redis link's overhead per call (budget timer, generation check, counters) beside a bare
//! redis-rs `MultiplexedConnection` call, on the same Redis.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use welcomedly_redis::{Link, LinkConfig, Retry};

pub(crate) fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = match welcomedly_testkit::RedisServer::start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("redis_link skipped: {e}");
            return;
        }
    };
    let url = redis.url();
    let (bare, link) = rt.block_on(async {
        let client = redis::Client::open(url.as_str()).unwrap();
        let bare = client.get_multiplexed_async_connection().await.unwrap();
        let mut config = LinkConfig::new(url.clone());
        config.budget = Duration::from_secs(1);
        let link = Link::connect(config).await.unwrap();
        let _: () = link
            .query(redis::cmd("SET").arg("k").arg("v"), Retry::Never)
            .await
            .unwrap();
        (bare, link)
    });
    let get = redis::cmd("GET").arg("k").clone();

    let bare_get = |iters: u64| {
        let (mut conn, get) = (bare.clone(), get.clone());
        async move {
            let t = Instant::now();
            for _ in 0..iters {
                let v: Option<String> = get.query_async(&mut conn).await.unwrap();
                std::hint::black_box(v);
            }
            t.elapsed()
        }
    };
    let link_get = |iters: u64| {
        let (link, get) = (link.clone(), get.clone());
        async move {
            let t = Instant::now();
            for _ in 0..iters {
                let v: Option<String> = link.query(&get, Retry::Once).await.unwrap();
                std::hint::black_box(v);
            }
            t.elapsed()
        }
    };

    let mut g = c.benchmark_group("redis_link");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bare MultiplexedConnection GET", |b| {
        b.to_async(&rt).iter_custom(bare_get)
    });
    g.bench_function("link GET", |b| b.to_async(&rt).iter_custom(link_get));
    g.finish();

    let table: Vec<crate::Variant<'_>> = vec![
        (
            "bare MultiplexedConnection GET",
            Box::new(move |iters| Box::pin(bare_get(iters))),
        ),
        ("link GET", Box::new(move |iters| Box::pin(link_get(iters)))),
    ];
    crate::interleaved("redis_link (GET on one Redis)", &rt, &table, 50);
    drop(redis);
}
