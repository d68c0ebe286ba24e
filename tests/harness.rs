//! Proves the test harness works: both servers start, answer through the real drivers, and a
//! dropped server is gone.

mod support;

use mongodb::bson::doc;
use support::{shared_mongo, shared_redis, unique_name, MongoServer, RedisServer};

#[tokio::test]
async fn shared_redis_answers_ping_through_deadpool_redis() {
    let redis = shared_redis();
    let pool = deadpool_redis::Config::from_url(redis.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("create pool");
    let mut conn = pool.get().await.expect("connect to redis");
    let pong: String = deadpool_redis::redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");

    // Isolation is by key prefix, never FLUSHDB.
    let key = format!("{}:k", unique_name("harness"));
    let _: () = deadpool_redis::redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let value: String = deadpool_redis::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(value, "v");
}

#[test]
fn shared_redis_is_started_once() {
    assert_eq!(shared_redis().port(), shared_redis().port());
}

#[test]
fn dropped_redis_stops_listening() {
    let mut redis = RedisServer::start();
    assert!(redis.is_running());
    let port = redis.port();
    drop(redis);
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
    assert!(
        refused,
        "redis on port {port} still accepts connections after drop"
    );
}

#[tokio::test]
async fn shared_mongo_answers_ping_and_runs_a_transaction() {
    let mongo = shared_mongo();
    let client = mongodb::Client::with_uri_str(mongo.url())
        .await
        .expect("parse url");
    let db = client.database(&unique_name("harness"));
    let reply = db.run_command(doc! { "ping": 1 }).await.expect("ping");
    assert_eq!(
        reply
            .get_f64("ok")
            .ok()
            .or(reply.get_i32("ok").ok().map(f64::from)),
        Some(1.0)
    );

    // The store needs multi-document transactions; prove the URL gives us a topology that
    // supports them.
    let collection = db.collection::<mongodb::bson::Document>("things");
    collection
        .insert_one(doc! { "_id": 0 })
        .await
        .expect("create collection");
    let mut session = client.start_session().await.expect("start session");
    session
        .start_transaction()
        .await
        .expect("start transaction");
    collection
        .insert_one(doc! { "_id": 1 })
        .session(&mut session)
        .await
        .expect("insert in transaction");
    session.commit_transaction().await.expect("commit");
    let count = collection.count_documents(doc! {}).await.expect("count");
    assert_eq!(count, 2);
}

#[tokio::test]
async fn mongo_direct_connection_url_also_works() {
    let mongo = shared_mongo();
    if !mongo.is_spawned() {
        // An external server's URL is used as given; there is no alternative form to test.
        return;
    }
    let direct = mongo
        .url()
        .replace("?replicaSet=secantus", "?directConnection=true");
    let client = mongodb::Client::with_uri_str(&direct)
        .await
        .expect("parse url");
    let reply = client
        .database(&unique_name("harness"))
        .run_command(doc! { "ping": 1 })
        .await
        .expect("ping with directConnection=true");
    assert!(reply.contains_key("ok"));
}

#[test]
fn dropped_mongo_stops_listening() {
    let mongo = MongoServer::start();
    if !mongo.is_spawned() {
        return;
    }
    let port: u16 = mongo
        .url()
        .trim_start_matches("mongodb://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in url");
    drop(mongo);
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
    assert!(
        refused,
        "secantusd on port {port} still accepts connections after drop"
    );
}
