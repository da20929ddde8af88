//! Issue 16: downstream HTTP/2 answers four protocol violations with the RFC 9113 error code, as
//! h2spec-style probes expect. hyper's HTTP/2 codec (the `h2` crate, 0.4.20) answered all four
//! with GOAWAY PROTOCOL_ERROR; egressd builds a patched copy (vendor/h2, see its EGRESSD.md).
//! Each test sends one violation as raw frames after the h2c preface to the gateway's HTTP port;
//! h2 over TLS runs the same codec.
//!
//! Envoy 1.40 (HCM on 127.0.0.1, `codec_type: AUTO`, a route to an origin that never answers),
//! given the same bytes:
//! - (a) SETTINGS of 7 octets, and SETTINGS ACK with a payload: GOAWAY FRAME_SIZE_ERROR.
//! - (b) SETTINGS_INITIAL_WINDOW_SIZE 2^31: no GOAWAY, only a FIN after its 1 s delayed close
//!   (debug log: "invalid frame: Flow control error on stream 0").
//! - (c) DATA after END_STREAM: GOAWAY STREAM_CLOSED, "DATA: stream in half-closed(remote)", a
//!   connection error where RFC 9113 §5.1 asks for a stream error: this test expects RST_STREAM
//!   STREAM_CLOSED and the connection kept.
//! - (d) HPACK table size update to 4097 (limit 4096), or one after a field: GOAWAY
//!   COMPRESSION_ERROR.
//!
//! Loopback address 127.0.0.200 (origin).

mod support;

use std::net::{Ipv4Addr, SocketAddr};

use support::egressd::{Egressd, EgressdOptions};
use support::h2frames::{
    frame, hpack_size_update, request_block, settings_payload, ErrorCode, H2Conn, ACK, DATA, DEFAULT_HEADER_TABLE_SIZE,
    END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, RST_STREAM, SETTINGS, SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS,
};
use support::origin::Origin;
use support::tools::{curl_async, stderr, stdout};

const HOST: &str = "h2strict.example.com";
const ORIGIN_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 200);

/// A Gateway on 80 for every host, and `HOST` routed to `ip:port`.
fn istio_yaml(ip: Ipv4Addr, port: u16) -> String {
    support::istio::gateway_to_static_host(HOST, "HTTP", ip, port)
}

struct Gateway {
    e: Egressd,
    _origin: Origin,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start() -> Gateway {
        let origin = Origin::start(SocketAddr::new(ORIGIN_IP.into(), 0), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("istio.yaml"),
            istio_yaml(ORIGIN_IP, origin.addr().port()),
        )
        .unwrap();
        let mut opts = EgressdOptions::new(dir.path());
        opts.port_mapping = vec![(80, 0)];
        let e = Egressd::start_async(opts).await;
        Gateway {
            e,
            _origin: origin,
            _dir: dir,
        }
    }

    async fn connect(&self) -> H2Conn {
        H2Conn::open(self.e.gateway_addr(80)).await
    }

    /// The end of every test: egressd still serves h2c.
    async fn assert_serves_h2c(mut self) {
        let url = format!("http://127.0.0.1:{}/", self.e.bound_port(80));
        let out = curl_async(&[
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "-H",
            &format!("host: {HOST}"),
            &url,
        ])
        .await;
        assert_eq!(stdout(&out), "200 2", "{}", stderr(&out));
        assert!(self.e.try_wait().is_none(), "egressd exited\n{}", self.e.stderr());
    }
}

/// Sends `frames` on `conn` and expects a connection error: one GOAWAY, then the close. Returns
/// its error code.
async fn connection_error(mut conn: H2Conn, frames: &[u8]) -> ErrorCode {
    conn.send(frames).await;
    let received = conn.read_to_close().await;
    let goaways: Vec<_> = received.iter().filter(|f| f.kind == GOAWAY).collect();
    assert_eq!(goaways.len(), 1, "one GOAWAY, then the close: {received:?}");
    goaways[0].goaway().expect("GOAWAY error code")
}

/// (a) RFC 9113 §6.5: "A SETTINGS frame with a length other than a multiple of 6 octets MUST be
/// treated as a connection error of type FRAME_SIZE_ERROR", and so must a SETTINGS ACK with a
/// payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_of_a_wrong_length_is_frame_size_error() {
    let g = Gateway::start().await;
    let mut seven = settings_payload(&[(SETTINGS_MAX_CONCURRENT_STREAMS, 100)]);
    seven.push(0);
    let code = connection_error(g.connect().await, &frame(SETTINGS, 0, 0, &seven)).await;
    assert_eq!(code, ErrorCode::FrameSizeError, "SETTINGS of 7 octets");

    let ack_with_payload = frame(
        SETTINGS,
        ACK,
        0,
        &settings_payload(&[(SETTINGS_MAX_CONCURRENT_STREAMS, 100)]),
    );
    let code = connection_error(g.connect().await, &ack_with_payload).await;
    assert_eq!(code, ErrorCode::FrameSizeError, "SETTINGS ACK with 6 octets");
    g.assert_serves_h2c().await;
}

/// (b) RFC 9113 §6.5.2: "Values above the maximum flow-control window size of 2^31-1 MUST be
/// treated as a connection error of type FLOW_CONTROL_ERROR."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_window_size_above_2_31_minus_1_is_flow_control_error() {
    let g = Gateway::start().await;
    let settings = settings_payload(&[(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 31)]);
    let code = connection_error(g.connect().await, &frame(SETTINGS, 0, 0, &settings)).await;
    assert_eq!(code, ErrorCode::FlowControlError);
    g.assert_serves_h2c().await;
}

/// (c) RFC 9113 §5.1, half-closed (remote): "If an endpoint receives additional frames, other
/// than WINDOW_UPDATE, PRIORITY, or RST_STREAM, for a stream that is in this state, it MUST
/// respond with a stream error (Section 5.4.2) of type STREAM_CLOSED." The request goes to the
/// origin's `/hang`, so the stream is still half-closed (remote) when the DATA arrives; the
/// connection outlives the stream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_after_end_stream_is_stream_closed() {
    let g = Gateway::start().await;
    let mut conn = g.connect().await;
    let mut frames = frame(HEADERS, END_STREAM | END_HEADERS, 1, &request_block(HOST, "/hang"));
    frames.extend(frame(DATA, END_STREAM, 1, b"abcd"));
    conn.send(&frames).await;
    let answer = conn
        .read_until(|f| matches!(f.kind, RST_STREAM | GOAWAY))
        .await
        .unwrap_or_else(|| panic!("closed without RST_STREAM: {:?}", conn.received));
    assert_eq!(
        (answer.kind, answer.stream, answer.rst_stream()),
        (RST_STREAM, 1, Some(ErrorCode::StreamClosed)),
        "{answer:?}, GOAWAY code {:?}",
        answer.goaway()
    );

    conn.send(&frame(PING, 0, 0, b"stillopn")).await;
    let pong = conn.read_until(|f| f.kind == PING || f.kind == GOAWAY).await;
    assert_eq!(
        pong.map(|f| (f.kind, f.flags, f.payload)),
        Some((PING, ACK, b"stillopn".to_vec())),
        "the connection outlives the stream error: {:?}",
        conn.received
    );
    g.assert_serves_h2c().await;
}

/// (d) RFC 7541 §4.2 and §6.3: a dynamic table size update above the limit the decoder set
/// (SETTINGS_HEADER_TABLE_SIZE), or anywhere but at the start of a field block, "MUST be treated
/// as a decoding error", which RFC 9113 §4.3 makes a connection error of type COMPRESSION_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_table_size_update_above_the_setting_is_compression_error() {
    let g = Gateway::start().await;
    let conn = g.connect().await;
    let limit = conn
        .server_settings()
        .setting(SETTINGS_HEADER_TABLE_SIZE)
        .unwrap_or(DEFAULT_HEADER_TABLE_SIZE);
    let mut block = hpack_size_update(limit + 1);
    block.extend(request_block(HOST, "/"));
    let code = connection_error(conn, &frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)).await;
    assert_eq!(code, ErrorCode::CompressionError, "size update to {}", limit + 1);

    // `:method GET` (static index 2), then a size update within the limit.
    let mut block = vec![0x82];
    block.extend(hpack_size_update(100));
    block.extend_from_slice(&request_block(HOST, "/")[1..]);
    let frames = frame(HEADERS, END_STREAM | END_HEADERS, 1, &block);
    let code = connection_error(g.connect().await, &frames).await;
    assert_eq!(code, ErrorCode::CompressionError, "size update after a field");
    g.assert_serves_h2c().await;
}
