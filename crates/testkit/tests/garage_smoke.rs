//! Proves the Garage harness: start, S3 PUT/GET with the settings the archive crate
//! uses, stop (port closed, data kept), restart, and cleanup on drop.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use slackline_testkit::{free_port, garage_bin, unique_name, Garage};

/// The S3 client settings the archive crate uses against Garage.
fn s3_client(garage: &Garage) -> aws_sdk_s3::Client {
    s3_client_as(garage, garage)
}

/// A client for `server` that signs with `creds`' key.
fn s3_client_as(server: &Garage, creds: &Garage) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&server.endpoint)
        .region(Region::new(server.region.clone()))
        .credentials_provider(Credentials::new(
            &creds.access_key_id,
            &creds.secret_access_key,
            None,
            None,
            "slackline-testkit",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn s3_addr(garage: &Garage) -> SocketAddr {
    garage
        .endpoint
        .strip_prefix("http://")
        .expect("endpoint is http://")
        .parse()
        .expect("endpoint is host:port")
}

fn accepts_connections(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

async fn put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &[u8]) {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {key}: {e:?}"));
}

async fn get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
    out.body.collect().await.expect("read body").to_vec()
}

#[tokio::test]
async fn start_put_get_stop_restart_drop() {
    let t0 = Instant::now();
    let mut garage = Garage::start().expect("start garage");
    eprintln!("garage ready in {:?} at {}", t0.elapsed(), garage.endpoint);

    assert!(garage.endpoint.starts_with("http://127.0.0.1:"));
    assert_eq!(garage.region, "garage");
    assert!(garage.access_key_id.starts_with("GK") && garage.access_key_id.len() == 26);
    assert_eq!(garage.secret_access_key.len(), 64);
    assert_eq!(
        garage.archive_url("raw/2024"),
        format!("s3://{}/raw/2024", garage.bucket)
    );
    let addr = s3_addr(&garage);
    assert!(accepts_connections(addr));

    let client = s3_client(&garage);
    let body = br#"{"event_id":"Ev1"}"#;
    put(&client, &garage.bucket, "raw/Ev1.json", body).await;
    assert_eq!(get(&client, &garage.bucket, "raw/Ev1.json").await, body);

    garage.stop().expect("stop garage");
    assert!(!accepts_connections(addr), "S3 port still open after stop");
    garage.stop().expect("stopping twice is a no-op");

    let t1 = Instant::now();
    garage.restart().expect("restart garage");
    eprintln!("garage restarted in {:?}", t1.elapsed());
    assert!(accepts_connections(addr));
    // Data survived the kill, and the same key and bucket still work.
    let client = s3_client(&garage);
    assert_eq!(get(&client, &garage.bucket, "raw/Ev1.json").await, body);
    put(&client, &garage.bucket, "raw/Ev2.json", b"second").await;
    assert_eq!(
        get(&client, &garage.bucket, "raw/Ev2.json").await,
        b"second"
    );

    let dir = garage.dir().to_owned();
    assert!(garage.log_path().is_file());
    drop(garage);
    assert!(!dir.exists(), "{} not removed on drop", dir.display());
    assert!(!accepts_connections(addr), "S3 port still open after drop");
}

#[tokio::test]
async fn parallel_instances_are_isolated() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(Garage::start);
        let b = s.spawn(Garage::start);
        (
            a.join().expect("thread a").expect("start garage a"),
            b.join().expect("thread b").expect("start garage b"),
        )
    });
    assert_ne!(a.endpoint, b.endpoint);
    assert_ne!(a.bucket, b.bucket);
    assert_ne!(a.access_key_id, b.access_key_id);
    assert_ne!(a.dir(), b.dir());

    let (ca, cb) = (s3_client(&a), s3_client(&b));
    put(&ca, &a.bucket, "k", b"from a").await;
    put(&cb, &b.bucket, "k", b"from b").await;
    assert_eq!(get(&ca, &a.bucket, "k").await, b"from a");
    assert_eq!(get(&cb, &b.bucket, "k").await, b"from b");
    // B's server does not know A's key.
    let a_on_b = s3_client_as(&b, &a);
    assert!(a_on_b
        .get_object()
        .bucket(&b.bucket)
        .key("k")
        .send()
        .await
        .is_err());
}

#[test]
fn helpers_work() {
    assert!(garage_bin().expect("garage binary").is_file());
    assert_ne!(unique_name("t"), unique_name("t"));
    assert_ne!(free_port(), 0);
}
