//! Issue 16: gRPC through the gateway with real peers (Python `grpcio`, installed by `.ci/run`):
//! a client speaking h2c to the gateway, a ServiceEntry port of protocol GRPC, an h2c server.
//! `te: trailers` reaches the server (gRPC servers refuse requests without it: before this,
//! every call was `503 UC`), trailers come back with the status and trailing metadata, a
//! failed call keeps its code and message, and the JSON access log carries `grpc_status`.
//!
//! Loopback address 127.0.0.193 (server).

mod support;

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::egressd::{Egressd, EgressdOptions, LogFormat};
use support::tools::{free_port, run_with_timeout, stderr, stdout};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc/peer.py");

fn istio_yaml(ip: Ipv4Addr, port: u16) -> String {
    support::istio::gateway_to_static_host("grpc.example.com", "GRPC", ip, port)
}

/// Stops the Python server (only it, by its id) when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_keep_their_trailers_and_status_through_the_gateway() {
    let ip = Ipv4Addr::new(127, 0, 0, 193);
    let port = free_port();
    let mut child = Command::new("python3")
        .args([PEER, "server", &ip.to_string(), &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let out = child.stdout.take().unwrap();
    let server = Server(child);
    let mut ready = String::new();
    std::io::BufReader::new(out).read_line(&mut ready).unwrap();
    assert_eq!(
        ready.trim(),
        "ready",
        "the gRPC server did not start (is `grpcio` installed?)"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("istio.yaml"), istio_yaml(ip, port)).unwrap();
    let mut opts = EgressdOptions::new(dir.path());
    opts.port_mapping = vec![(80, 0)];
    opts.access_log = LogFormat::Json;
    let e = Egressd::start_async(opts).await;

    let gateway = e.gateway_addr(80).to_string();
    let client = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("python3");
        cmd.args([PEER, "client", &gateway, "grpc.example.com"]);
        run_with_timeout(cmd, None, Duration::from_secs(30))
    })
    .await
    .unwrap();
    drop(server);
    assert!(client.status.success(), "{}\n{}", stdout(&client), stderr(&client));
    let seen: serde_json::Value = serde_json::from_str(stdout(&client).trim()).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "unary": "hello grpc", "unary_trailer": "unary", "unary_code": "OK",
            "stream_messages": 5, "stream_bytes": 5000, "stream_trailer": "stream",
            "fail": "NOT_FOUND", "fail_details": "no such thing",
        })
    );

    let lines = e.wait_for_log_lines(3, Duration::from_secs(5));
    let logged: Vec<(String, u64, Option<u64>)> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap_or("").to_string(),
                v["response_code"].as_u64().unwrap_or(0),
                v["grpc_status"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        logged,
        [
            ("/egress.Echo/Unary".to_string(), 200, Some(0)),
            ("/egress.Echo/Stream".to_string(), 200, Some(0)),
            ("/egress.Echo/Fail".to_string(), 200, Some(5)),
        ],
        "{lines:#?}"
    );
}
