//! Backups and restores with the real `users` binary: an online backup taken through the
//! admin port while writes keep coming, the database wiped, `users restore` from the
//! backup, and everything written before the backup read back (and nothing written
//! after it). Also: restores refused for a running service, another service's backup and
//! a corrupt file; scheduled and CLI backups keeping the last N; and a backup-restore
//! round trip of every service's schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod procs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use example_services::common::backup;
use example_services::common::ops::BackupArgs;
use example_services::common::{db, http::Metrics};
use example_services::{auth, catalog, notifications, orders, users};
use procs::{Service, free_port, wait_for};
use serde_json::{Value, json};

const USERS: &str = env!("CARGO_BIN_EXE_users");

fn args(db: &Path, backups: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--database".to_owned(),
        db.display().to_string(),
        "--backup-dir".to_owned(),
        backups.display().to_string(),
    ];
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

async fn put_profile(c: &reqwest::Client, svc: &Service, user: &str) -> reqwest::StatusCode {
    c.put(svc.url("/v1/users/me"))
        .header("x-user-id", user)
        .json(&json!({"display_name": format!("name of {user}"), "email": "x@example.com"}))
        .send()
        .await
        .unwrap()
        .status()
}

async fn has_profile(c: &reqwest::Client, svc: &Service, user: &str) -> bool {
    let r = c
        .get(svc.url("/v1/users/me"))
        .header("x-user-id", user)
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        200 => {
            assert_eq!(
                r.json::<Value>().await.unwrap()["display_name"],
                format!("name of {user}")
            );
            true
        }
        404 => false,
        other => panic!("GET profile of {user}: {other}"),
    }
}

/// Run `users <args>`: (success, stdout + stderr).
fn users_cli(args: &[String]) -> (bool, String) {
    let out = Command::new(USERS).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn backup_files(dir: &Path) -> Vec<PathBuf> {
    backup::list(dir, "users")
        .unwrap()
        .into_iter()
        .map(|b| b.path)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_write_load_then_wipe_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let backups = dir.path().join("backups");
    let admin = format!("127.0.0.1:{}", free_port());
    let run_args = args(&db, &backups, &["--admin-listen", &admin]);
    let mut svc = Service::start("users", USERS, &run_args, dir.path()).await;
    let c = reqwest::Client::new();
    for i in 0..100 {
        assert_eq!(put_profile(&c, &svc, &format!("u{i}")).await, 200);
    }

    // A writer that keeps going; `acked` holds what the service confirmed, in order.
    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let url = svc.url("");
    let writer = {
        let (acked, stop, c) = (Arc::clone(&acked), Arc::clone(&stop), c.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let r = c
                    .put(format!("{url}/v1/users/me"))
                    .header("x-user-id", format!("load{n}"))
                    .json(&json!({"display_name": format!("name of load{n}"), "email": "x@example.com"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                acked.lock().unwrap().push(n);
                n += 1;
            }
        })
    };
    let len = || acked.lock().unwrap().len();
    wait_for("writes under way", || async { (len() >= 20).then_some(()) }).await;

    let before = len();
    let r = c
        .post(format!("http://{admin}/admin/backup"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let done: Value = r.json().await.unwrap();
    // Writes numbered from here on started after the backup had finished.
    let started_after = len() + 1;
    let taken = &done["backups"][0];
    assert_eq!(taken["integrity"], "ok");
    assert_eq!(taken["database"], "users");
    let file = PathBuf::from(taken["path"].as_str().unwrap());
    assert!(file.starts_with(&backups));
    wait_for("more writes after the backup", || async {
        (len() >= started_after + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    svc.stop();

    // The node's disk is gone.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let (ok, out) = users_cli(&[
        "restore".into(),
        "--database".into(),
        db.display().to_string(),
        "--from".into(),
        file.display().to_string(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("restored"), "{out}");

    let svc = Service::start("users", USERS, &run_args, dir.path()).await;
    for i in 0..100 {
        assert!(has_profile(&c, &svc, &format!("u{i}")).await, "u{i}");
    }
    for n in 0..before {
        assert!(has_profile(&c, &svc, &format!("load{n}")).await, "load{n}");
    }
    assert!(
        !has_profile(&c, &svc, &format!("load{started_after}")).await,
        "the restore is the backup's moment, not the wiped file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_that_would_do_harm_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let backups = dir.path().join("backups");
    let svc = Service::start("users", USERS, &args(&db, &backups, &[]), dir.path()).await;
    let c = reqwest::Client::new();
    assert_eq!(put_profile(&c, &svc, "keep-me").await, 200);
    let (ok, out) = users_cli(&args(&db, &backups, &["backup"]));
    assert!(ok, "the CLI backs up a running service: {out}");
    let good = backup_files(&backups).pop().unwrap();
    let restore = |from: &Path| {
        users_cli(&[
            "restore".into(),
            "--database".into(),
            db.display().to_string(),
            "--from".into(),
            from.display().to_string(),
        ])
    };

    let (ok, out) = restore(&good);
    assert!(!ok && out.contains("in use"), "{out}");

    let orders_db = dir.path().join("orders.db");
    let pool = db::open(&orders_db.display().to_string(), orders::SCHEMA)
        .await
        .unwrap();
    let other = backup::backup(&pool, &dir.path().join("elsewhere"), "orders", 1)
        .await
        .unwrap();
    let (ok, out) = restore(&other.path);
    assert!(
        !ok && out.contains("does not look like a backup of the users database"),
        "{out}"
    );

    let corrupt = dir.path().join("corrupt.db");
    let mut bytes = std::fs::read(&good).unwrap();
    bytes.truncate(bytes.len() / 2);
    bytes[100..200].fill(0xAB);
    std::fs::write(&corrupt, bytes).unwrap();
    let (ok, out) = restore(&corrupt);
    assert!(!ok, "{out}");
    let (ok, out) = restore(&dir.path().join("missing.db"));
    assert!(!ok && out.contains("no such backup file"), "{out}");

    // Nothing was harmed.
    assert!(has_profile(&c, &svc, "keep-me").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_and_on_demand_backups_keep_the_last_n() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let backups = dir.path().join("backups");
    let admin = format!("127.0.0.1:{}", free_port());
    let run = args(
        &db,
        &backups,
        &[
            "--backup-interval",
            "1s",
            "--backup-keep",
            "2",
            "--admin-listen",
            &admin,
        ],
    );
    let mut svc = Service::start("users", USERS, &run, dir.path()).await;
    wait_for("three scheduled backups", || async {
        (svc.metric("users_backups_total{result=\"ok\"}").await >= Some(3.0)).then_some(())
    })
    .await;
    assert!(
        svc.metric("users_last_backup_success_timestamp_seconds")
            .await
            > Some(0.0)
    );
    let c = reqwest::Client::new();
    let r = c
        .post(format!("http://{admin}/admin/backup?database=orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "not this service's database");
    let listed: Value = c
        .get(format!("http://{admin}/admin/backups"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["keep"], 2);
    svc.stop();
    // Stopped cleanly, so no backup is half-pruned: exactly the newest two, each sound.
    let files = backup_files(&backups);
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        backup::integrity_check(f).await.unwrap();
    }
}

#[test]
fn the_admin_port_is_loopback_only() {
    let with = |admin: &str| BackupArgs {
        backup_dir: Some("b".into()),
        admin_listen: Some(admin.parse::<SocketAddr>().unwrap()),
        backup_keep: 3,
        ..BackupArgs::default()
    };
    assert!(with("127.0.0.1:9000").check().is_ok());
    assert!(with("[::1]:9000").check().is_ok());
    let err = with("0.0.0.0:9000").check().unwrap_err().to_string();
    assert!(err.contains("loopback"), "{err}");
    let no_dir = BackupArgs {
        backup_dir: None,
        ..with("127.0.0.1:9000")
    };
    assert!(no_dir.check().is_err());
}

/// Every service's database backs up and restores the same way.
#[tokio::test]
async fn every_service_database_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = [
        ("auth", auth::SCHEMA),
        ("users", users::SCHEMA),
        ("catalog", catalog::SCHEMA),
        ("orders", orders::SCHEMA),
        ("notifications", notifications::SCHEMA),
    ];
    for (name, schema) in schemas {
        let live = dir.path().join(format!("{name}.db")).display().to_string();
        let pool = db::open(&live, schema).await.unwrap();
        if name == "auth" {
            auth::ensure_keys(&pool, None).await.unwrap();
        }
        if name == "catalog" {
            catalog::seed(&pool).await.unwrap();
        }
        let metrics = Metrics::new(name).unwrap();
        let target = backup::Target::new(name, pool.clone(), &metrics).unwrap();
        let set = backup::Backups::new(dir.path().join("b"), 3, vec![target]);
        let done = set.run(None).await.unwrap();
        pool.close().await;
        let restored = dir.path().join(format!("{name}-restored.db"));
        let r = backup::restore(&done[0].path, &restored.display().to_string(), name, schema)
            .await
            .unwrap();
        assert!(r.kept.is_none());
        let again = db::open(&restored.display().to_string(), schema)
            .await
            .unwrap();
        let tables: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
                .fetch_one(&again)
                .await
                .unwrap();
        assert!(tables >= 1, "{name}");
        if name == "catalog" {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
                .fetch_one(&again)
                .await
                .unwrap();
            assert_eq!(n, 3);
        }
        if name == "auth" {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM signing_keys")
                .fetch_one(&again)
                .await
                .unwrap();
            assert_eq!(n, 2, "the signing keys come back with the accounts");
        }
        // Restoring over an existing database keeps the old one aside.
        again.close().await;
        let r = backup::restore(&done[0].path, &restored.display().to_string(), name, schema)
            .await
            .unwrap();
        assert!(r.kept.unwrap().exists());
    }
}
