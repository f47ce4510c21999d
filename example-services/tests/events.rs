//! Order events end to end with the real `orders` and `notifications` binaries and a real
//! `redis-server`: every order yields exactly one stored notification, also when the
//! relay is killed after `XADD` but before marking the row sent (the duplicate is
//! absorbed), when Redis is down for a while (rows wait in the outbox, then flow), and
//! when the consumer dies between reading and acknowledging (`XAUTOCLAIM` on another
//! consumer takes over). The crash points are reached without hooks in the services: a
//! test-held SQLite write lock parks the process right after the step before.
//!
//! Also, without Redis: the in-process relay with a sink that fails for a while.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod procs;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use example_services::catalog::{self, CatalogState};
use example_services::common::{db, http::Metrics};
use example_services::events::outbox::{self, Publisher, Relay, RelayConfig};
use example_services::events::{Delivery, Event, EventSink, ORDER_CREATED, SinkError, SinkFuture};
use example_services::notifications::{self, Store};
use procs::{RedisServer, Service, wait_for};
use redis::AsyncCommands;
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection, SqliteConnection};

const STREAM: &str = "orders.events";

async fn catalog_url() -> String {
    let pool = db::open("sqlite::memory:", catalog::SCHEMA).await.unwrap();
    catalog::seed(&pool).await.unwrap();
    let app = catalog::app(
        CatalogState { db: pool },
        Arc::new(Metrics::new("catalog").unwrap()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

struct World {
    dir: tempfile::TempDir,
    catalog: String,
    redis: RedisServer,
}

impl World {
    async fn new(redis: RedisServer) -> World {
        World {
            dir: tempfile::tempdir().unwrap(),
            catalog: catalog_url().await,
            redis,
        }
    }

    fn db(&self, name: &str) -> String {
        self.dir
            .path()
            .join(format!("{name}.db"))
            .display()
            .to_string()
    }

    async fn orders(&self) -> Service {
        let args = [
            "--database".into(),
            self.db("orders"),
            "--catalog-url".into(),
            self.catalog.clone(),
            "--redis-url".into(),
            self.redis.url(),
            "--outbox-poll".into(),
            "200ms".into(),
            "--redis-timeout".into(),
            "1s".into(),
        ];
        Service::start(
            "orders",
            env!("CARGO_BIN_EXE_orders"),
            &args,
            self.dir.path(),
        )
        .await
    }

    async fn notifications(&self, consumer: &str) -> Service {
        let args = [
            "--database".into(),
            self.db("notifications"),
            "--redis-url".into(),
            self.redis.url(),
            "--consumer".into(),
            consumer.into(),
            "--claim-idle".into(),
            "1s".into(),
            "--read-block".into(),
            "500ms".into(),
        ];
        Service::start(
            "notifications",
            env!("CARGO_BIN_EXE_notifications"),
            &args,
            self.dir.path(),
        )
        .await
    }
}

async fn place_order(orders: &Service, user: &str) -> i64 {
    let r = reqwest::Client::new()
        .post(orders.url("/v1/orders"))
        .header("x-user-id", user)
        .json(&json!({"items": [{"product_id": 1, "quantity": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

/// The order ids of `user`'s notifications, one entry per stored notification.
async fn notified(notifications: &Service, user: &str) -> Vec<i64> {
    let r: Value = reqwest::Client::new()
        .get(notifications.url("/v1/notifications?limit=200"))
        .header("x-user-id", user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<i64> = r["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["data"]["order_id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

/// Wait until exactly `want` are stored for `user`, then make sure no more arrive.
async fn expect_notified(notifications: &Service, user: &str, want: &[i64]) {
    wait_for("the notifications", || async {
        (notified(notifications, user).await.len() >= want.len()).then_some(())
    })
    .await;
    assert_eq!(notified(notifications, user).await, want);
}

/// Stream entries per event id.
async fn entries_per_event(redis: &RedisServer) -> HashMap<String, usize> {
    let mut conn = redis.conn().await;
    let range: redis::streams::StreamRangeReply = conn.xrange_all(STREAM).await.unwrap();
    let mut out = HashMap::new();
    for e in range.ids {
        *out.entry(e.get::<String>("id").unwrap()).or_default() += 1;
    }
    out
}

/// A connection holding SQLite's write lock on `path` until dropped or rolled back.
async fn write_lock(path: &str) -> SqliteConnection {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn release(mut conn: SqliteConnection) {
    sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_after_xadd_before_marking_sent() {
    // Redis is not up yet: the order's event waits in the outbox.
    let w = World::new(RedisServer::reserved()).await;
    let notifications = w.notifications("n1").await;
    let mut orders = w.orders().await;
    let order = place_order(&orders, "ada").await;
    wait_for("the event to wait in the outbox", || async {
        (orders.metric("orders_outbox_backlog").await == Some(1.0)).then_some(())
    })
    .await;

    // Hold the orders database's write lock: the relay can read the row and XADD it,
    // but not mark it sent. Then let Redis come up.
    let lock = write_lock(&w.db("orders")).await;
    let mut redis = w.redis;
    redis.start();
    wait_for("the XADD", || async {
        (!entries_per_event(&redis).await.is_empty()).then_some(())
    })
    .await;
    // Published, not marked: crash now.
    orders.kill();
    release(lock).await;
    let w = World { redis, ..w };

    // The restarted relay finds the row unsent and publishes it again.
    let orders = w.orders().await;
    let published = wait_for("the second XADD of the same event", || async {
        let per = entries_per_event(&w.redis).await;
        (per.len() == 1 && per.values().all(|n| *n >= 2)).then_some(per)
    })
    .await;
    assert_eq!(
        published.len(),
        1,
        "one event, published twice: {published:?}"
    );
    wait_for("the outbox to drain", || async {
        (orders.metric("orders_outbox_backlog").await == Some(0.0)).then_some(())
    })
    .await;
    expect_notified(&notifications, "ada", &[order]).await;
    wait_for("the duplicate to be seen", || async {
        (notifications
            .metric("notifications_events_total{result=\"duplicate\"}")
            .await
            >= Some(1.0))
        .then_some(())
    })
    .await;
    assert_eq!(notified(&notifications, "ada").await, [order]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_a_while_rows_wait_then_flow() {
    let mut w = World::new(RedisServer::started()).await;
    let notifications = w.notifications("n1").await;
    let orders = w.orders().await;
    let first = place_order(&orders, "bob").await;
    expect_notified(&notifications, "bob", &[first]).await;

    w.redis.kill();
    // Orders keep being accepted; their events wait.
    let second = place_order(&orders, "bob").await;
    let third = place_order(&orders, "bob").await;
    wait_for("two events waiting", || async {
        (orders.metric("orders_outbox_backlog").await == Some(2.0)).then_some(())
    })
    .await;
    assert!(orders.metric("orders_outbox_publish_failures_total").await >= Some(1.0));
    assert_eq!(notified(&notifications, "bob").await, [first]);

    // Redis comes back empty (no persistence): the group is made again, rows flow.
    w.redis.start();
    wait_for("the outbox to drain", || async {
        (orders.metric("orders_outbox_backlog").await == Some(0.0)).then_some(())
    })
    .await;
    expect_notified(&notifications, "bob", &[first, second, third]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_dies_between_read_and_ack() {
    let w = World::new(RedisServer::started()).await;
    let mut first = w.notifications("first").await;
    let orders = w.orders().await;

    // The consumer can read but not store (its database is locked), so never ack.
    let lock = write_lock(&w.db("notifications")).await;
    let order = place_order(&orders, "cy").await;
    let mut conn = w.redis.conn().await;
    wait_for("the entry to be read and left pending", || {
        let mut conn = conn.clone();
        async move {
            let p: redis::streams::StreamPendingReply =
                conn.xpending(STREAM, "notifications").await.ok()?;
            (p.count() == 1).then_some(())
        }
    })
    .await;
    first.kill();
    release(lock).await;

    // Another replica takes the entry over once it has been idle for --claim-idle.
    let second = w.notifications("second").await;
    expect_notified(&second, "cy", &[order]).await;
    wait_for("the entry to be acknowledged", || {
        let mut conn = conn.clone();
        async move {
            let p: redis::streams::StreamPendingReply =
                conn.xpending(STREAM, "notifications").await.ok()?;
            (p.count() == 0).then_some(())
        }
    })
    .await;
    assert!(
        second
            .metric("notifications_stream_redeliveries_total")
            .await
            >= Some(1.0),
        "{}",
        second.logs()
    );
    // And it was the second consumer that holds nothing now: the first is gone.
    let info: redis::streams::StreamInfoConsumersReply =
        conn.xinfo_consumers(STREAM, "notifications").await.unwrap();
    assert!(info.consumers.iter().all(|c| c.pending == 0));
    assert_eq!(notified(&second, "cy").await, [order]);
}

/// A malformed entry (not an event) goes to the dead-letter stream and does not block
/// the events behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_dead_lettered() {
    let w = World::new(RedisServer::started()).await;
    let notifications = w.notifications("n1").await;
    let mut conn = w.redis.conn().await;
    let _: String = conn
        .xadd(STREAM, "*", &[("id", "x"), ("type", ORDER_CREATED)])
        .await
        .unwrap();
    let orders = w.orders().await;
    let order = place_order(&orders, "di").await;
    expect_notified(&notifications, "di", &[order]).await;
    let dead: redis::streams::StreamRangeReply =
        conn.xrange_all(format!("{STREAM}.dead")).await.unwrap();
    assert_eq!(dead.ids.len(), 1);
    assert!(
        dead.ids[0]
            .get::<String>("dead_reason")
            .unwrap()
            .contains("no occurred_at field")
    );
}

/// Fails the first `failures` deliveries, then stores.
struct Flaky {
    store: Store,
    failures: AtomicUsize,
}

impl EventSink for Flaky {
    fn deliver<'a>(&'a self, event: &'a Event) -> SinkFuture<'a> {
        Box::pin(async move {
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(SinkError("down".into()));
            }
            self.store
                .store(event)
                .await
                .map_err(|e| SinkError(e.to_string()))
        })
    }
}

async fn enqueue(db: &sqlx::SqlitePool, order: i64) -> Event {
    let event = Event::new(
        ORDER_CREATED,
        json!({"order_id": order, "user_id": "eve", "total_cents": 100, "items": []}),
    );
    let mut tx = db.begin().await.unwrap();
    outbox::enqueue(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    event
}

/// Without Redis the relay delivers in-process with the same contract: a failing sink
/// keeps rows waiting, in order; a second delivery is a duplicate.
#[tokio::test]
async fn in_process_relay_waits_and_absorbs_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let orders_db = db::open(
        &dir.path().join("o.db").display().to_string(),
        outbox::SCHEMA,
    )
    .await
    .unwrap();
    let notes_db = db::open(
        &dir.path().join("n.db").display().to_string(),
        notifications::SCHEMA,
    )
    .await
    .unwrap();
    let metrics = Metrics::new("t").unwrap();
    let sink = Arc::new(Flaky {
        store: Store::new(notes_db.clone(), &metrics).unwrap(),
        failures: AtomicUsize::new(1),
    });
    let mut relay = Relay::new(
        orders_db.clone(),
        Publisher::InProcess(sink.clone()),
        Arc::default(),
        &metrics,
        RelayConfig::default(),
    )
    .unwrap();
    let one = enqueue(&orders_db, 1).await;
    enqueue(&orders_db, 2).await;
    assert!(relay.drain().await.is_err(), "the sink is down");
    let unsent: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&orders_db)
        .await
        .unwrap();
    assert_eq!(unsent, 2, "both wait");
    assert_eq!(relay.drain().await.unwrap(), 2);
    assert_eq!(relay.drain().await.unwrap(), 0, "nothing left");
    // A crash between publishing and marking: the same event again.
    assert_eq!(sink.store.store(&one).await.unwrap(), Delivery::Duplicate);
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notifications")
        .fetch_one(&notes_db)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}
