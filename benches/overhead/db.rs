//! The database router: the routing decision (pick a node) and the cookie check on their own,
//! then `SELECT 1` through a plain `sqlx::PgPool`, through the router over that one node, over
//! a primary + 2 replicas, and with a read-your-writes token already replayed. The PostgreSQL
//! part starts its own cluster and is skipped when PostgreSQL is not installed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use sqlx::postgres::PgPoolOptions;
use welcomedly_db::{Router, RouterConfig, Token, TokenSigner};

pub(crate) fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("db_route");
    g.throughput(Throughput::Elements(1));
    let (one, three) = rt.block_on(async {
        let lazy = || {
            sqlx::sqlite::SqlitePoolOptions::new()
                .connect_lazy("sqlite::memory:")
                .unwrap()
        };
        (
            Router::single(lazy()),
            Router::from_pools(lazy(), [lazy(), lazy(), lazy()]),
        )
    });
    g.bench_function("pick a node, 1 node", |b| b.iter(|| black_box(one.read())));
    g.bench_function("pick a node, primary + 3 replicas", |b| {
        b.iter(|| black_box(three.read()))
    });
    let signer = TokenSigner::new(b"bench secret");
    let cookie = signer.sign(&Token::new(1, 0x0300_0148), u64::MAX / 2);
    g.bench_function("check a token cookie", |b| {
        b.iter(|| black_box(signer.verify(black_box(&cookie), 1)))
    });
    g.finish();

    let pg = match welcomedly_testkit::PgCluster::start(2) {
        Ok(pg) => pg,
        Err(e) => {
            eprintln!("db_pg skipped: {e}");
            return;
        }
    };
    let (plain, single, router, token) = rt.block_on(async {
        let pool = || {
            PgPoolOptions::new()
                .max_connections(4)
                .connect_lazy(&pg.primary_url())
                .unwrap()
        };
        let router = RouterConfig::new(pg.primary_url())
            .replicas(pg.replica_urls())
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE IF NOT EXISTS bench (v int)")
            .execute(&*router.write().unwrap())
            .await
            .unwrap();
        let token = router.token().await.unwrap();
        // Let both replicas replay it, so read_after takes its cached path.
        let _ = router.read_after(Some(&token)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        (pool(), Router::single(pool()), router, token)
    });
    let select = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT 1").execute(&pool).await.unwrap();
        }
    };
    let mut g = c.benchmark_group("db_pg");
    g.throughput(Throughput::Elements(1));
    g.bench_function("plain PgPool acquire", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(plain.acquire().await.unwrap()) })
    });
    g.bench_function("plain PgPool SELECT 1", |b| {
        b.to_async(&rt).iter(|| select(&plain))
    });
    g.bench_function("router over one node SELECT 1", |b| {
        b.to_async(&rt).iter(|| select(&single.read()))
    });
    g.bench_function("router, 2 replicas SELECT 1", |b| {
        b.to_async(&rt).iter(|| select(&router.read()))
    });
    g.bench_function("router read_after(token) SELECT 1", |b| {
        b.to_async(&rt)
            .iter(|| async { select(&*router.read_after(Some(&token)).await).await })
    });
    g.finish();

    let table: Vec<crate::Variant<'_>> = vec![
        (
            "plain PgPool SELECT 1",
            Box::new(|iters| {
                let plain = plain.clone();
                Box::pin(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        sqlx::query("SELECT 1").execute(&plain).await.unwrap();
                    }
                    start.elapsed()
                })
            }),
        ),
        (
            "router over one node SELECT 1",
            Box::new(|iters| {
                let single = single.clone();
                Box::pin(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        sqlx::query("SELECT 1")
                            .execute(&*single.read())
                            .await
                            .unwrap();
                    }
                    start.elapsed()
                })
            }),
        ),
        (
            "router, 2 replicas SELECT 1",
            Box::new(|iters| {
                let router = router.clone();
                Box::pin(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        sqlx::query("SELECT 1")
                            .execute(&*router.read())
                            .await
                            .unwrap();
                    }
                    start.elapsed()
                })
            }),
        ),
        (
            "router read_after(token) SELECT 1",
            Box::new(|iters| {
                let router = router.clone();
                Box::pin(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        sqlx::query("SELECT 1")
                            .execute(&*router.read_after(Some(&token)).await)
                            .await
                            .unwrap();
                    }
                    start.elapsed()
                })
            }),
        ),
    ];
    crate::interleaved("db_pg (SELECT 1 round trips)", &rt, &table, 50);
    let nodes = router.nodes();
    let replica_reads: Vec<u64> = nodes.iter().skip(1).map(|n| n.reads).collect();
    let total: u64 = nodes.iter().map(|n| n.reads).sum();
    eprintln!(
        "  reads per node of the 2-replica router: primary {}, replicas {replica_reads:?} ({} of {total} on replicas)",
        nodes[0].reads,
        replica_reads.iter().sum::<u64>()
    );
}
