//! `mcpd::daemon::run` as a library: the shutdown future stops it cleanly.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use mcpd::config::Config;
use support::{free_port, temp_dir};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

#[actix_web::test]
async fn run_serves_until_the_shutdown_future_completes() {
    let http_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let data_dir = temp_dir("daemon_run").join("data");
    let env = vec![
        ("MCPD__SERVER__HTTP_ADDR".to_owned(), http_addr.to_string()),
        (
            "MCPD__STORE__DATA_DIR".to_owned(),
            data_dir.display().to_string(),
        ),
    ];
    let config = Config::load_from(None, env).expect("valid config");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = actix_web::rt::spawn(mcpd::daemon::run(config, async {
        let _ = stop_rx.await;
    }));

    let mut status = None;
    for _ in 0..400 {
        status = get_status(http_addr, "/healthz").await;
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, Some(200), "daemon never answered /healthz");
    assert_eq!(get_status(http_addr, "/readyz").await, Some(200));

    stop_tx.send(()).expect("daemon still waiting");
    let result = tokio::time::timeout(Duration::from_secs(5), daemon)
        .await
        .expect("run returned within 5 s of shutdown")
        .expect("run task did not panic");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        tokio::net::TcpStream::connect(http_addr).await.is_err(),
        "listener still open after run returned"
    );
    let _ = std::fs::remove_dir_all(data_dir.parent().unwrap());
}
