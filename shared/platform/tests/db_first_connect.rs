//! The first PostgreSQL connection of a process (issue 18, defects 6 and 7): a server that is
//! not up yet is waited for with backoff instead of the process exiting; a refused password
//! fails at once, saying that POSTGRES_PASSWORD applies only when the volume is first created.
//! Needs the PostgreSQL on 127.0.0.1 (scripts/ci/ensure-services.sh; FTSHOP_TEST_POSTGRES_URL).

use std::time::{Duration, Instant};

use ftshop_platform::db::testing::{admin_url, fresh_postgres_database};
use ftshop_platform::db::{Db, first_postgres_connection};
use sqlx::Executor;
use sqlx::any::AnyPoolOptions;

/// The PostgreSQL server's address, from the admin URL (`host:port`).
fn server_addr() -> String {
    let admin = admin_url();
    let rest = admin.split_once('@').map_or(admin.as_str(), |(_, r)| r);
    rest.split('/')
        .next()
        .unwrap_or("127.0.0.1:5432")
        .to_owned()
}

/// A TCP forwarder from `port` to the server, started only after `delay`: until then the port
/// refuses connections, as a database container that is still initialising does over TCP.
fn forward_later(port: u16, delay: Duration) {
    let target = server_addr();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the delayed port");
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_comes_up_later_is_waited_for() {
    let url = fresh_postgres_database().await.expect("fresh database");
    // A port nothing listens on now (bound to learn a free one, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let late_url = url.replacen(&server_addr(), &format!("127.0.0.1:{port}"), 1);
    assert_ne!(late_url, url, "the URL names the server address");
    // Longer than one connect attempt (sqlx retries a refused connection for its 5 s acquire
    // timeout by itself): only a retry across attempts reaches the server.
    forward_later(port, Duration::from_secs(7));

    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::connect(Some(&late_url), dir.path(), "firstconnect")
        .await
        .expect("the service waits for its database instead of exiting");
    assert!(
        started.elapsed() >= Duration::from_millis(6900),
        "connected before the server was reachable?"
    );
    let one: i64 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&db.pool)
        .await
        .expect("query");
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_server_that_never_comes_gives_up_after_the_patience() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let started = Instant::now();
    let err = first_postgres_connection(
        &format!("postgres://nobody@127.0.0.1:{port}/none"),
        Duration::from_secs(2),
    )
    .await
    .expect_err("nothing listens there");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "gave up after {elapsed:?}"
    );
    assert!(
        format!("{err:#}").contains("cannot connect to PostgreSQL"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_refused_password_fails_at_once_and_says_why() {
    sqlx::any::install_default_drivers();
    let admin = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url())
        .await
        .expect("admin connection");
    let role = format!("ftshop_pw_{}", std::process::id());
    let _ = admin
        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS {role}"
        ))))
        .await;
    admin
        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'the-first-one'"
        ))))
        .await
        .expect("create role");

    let url = format!("postgres://{role}:a-later-one@{}/postgres", server_addr());
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let err = Db::connect(Some(&url), dir.path(), "pwtest")
        .await
        .expect_err("a wrong password must fail");
    let elapsed = started.elapsed();
    let message = format!("{err:#}");
    let _ = admin
        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS {role}"
        ))))
        .await;

    assert!(
        elapsed < Duration::from_secs(5),
        "a refused login is not retried: {elapsed:?}"
    );
    assert!(message.contains("28P01"), "{message}");
    assert!(
        message.contains(
            "POSTGRES_PASSWORD applies only when the postgres-data volume is first created"
        ),
        "{message}"
    );
    assert!(
        !message.contains("a-later-one"),
        "the password leaked: {message}"
    );
}
