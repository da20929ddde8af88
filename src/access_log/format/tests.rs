//! Byte-for-byte checks of the TEXT and JSON lines against what Envoy prints.

use super::*;
use crate::access_log::{Protocol, ResponseFlags};
use std::time::Duration;

/// 2018-06-14T11:46:23.596Z, the timestamp in Envoy's documentation example.
fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_528_976_783_596)
}

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().expect("test address"))
}

fn boxed(s: &str) -> Option<Box<str>> {
    Some(s.into())
}

fn http_301() -> AccessLogRecord {
    AccessLogRecord {
        method: boxed("GET"),
        path: boxed("/politics"),
        protocol: Some(Protocol::Http11),
        response_code: 301,
        response_code_details: Some("via_upstream".into()),
        duration_ms: 1,
        upstream_service_time_ms: Some(1),
        x_forwarded_for: boxed("192.0.2.2"),
        user_agent: boxed("curl/7.35.0"),
        request_id: boxed("901a"),
        authority: boxed("edition.cnn.com"),
        upstream_host: addr("127.0.0.1:18999"),
        upstream_cluster: Some("outbound|80||edition.cnn.com".into()),
        upstream_local_address: addr("127.0.0.1:56218"),
        downstream_local_address: addr("127.0.0.1:18080"),
        downstream_remote_address: addr("127.0.0.1:35154"),
        route_name: Some("cnn-route".into()),
        ..AccessLogRecord::new(start())
    }
}

fn tcp_no_filter_chain() -> AccessLogRecord {
    AccessLogRecord {
        response_flags: ResponseFlags::NR,
        response_code_details: Some("filter_chain_not_found".into()),
        downstream_local_address: addr("127.0.0.1:18443"),
        downstream_remote_address: addr("127.0.0.1:45168"),
        requested_server_name: boxed("other.com"),
        ..AccessLogRecord::new(start())
    }
}

fn tcp_passthrough() -> AccessLogRecord {
    AccessLogRecord {
        bytes_received: 736,
        bytes_sent: 2048,
        duration_ms: 6,
        upstream_host: addr("127.0.0.1:18998"),
        upstream_cluster: Some("outbound|443||edition.cnn.com".into()),
        upstream_local_address: addr("127.0.0.1:38286"),
        downstream_local_address: addr("127.0.0.1:18443"),
        downstream_remote_address: addr("127.0.0.1:45166"),
        requested_server_name: boxed("edition.cnn.com"),
        ..AccessLogRecord::new(start())
    }
}

fn render(format: Format, record: &AccessLogRecord) -> String {
    let mut out = Vec::new();
    format.write(record, &mut out);
    String::from_utf8(out).expect("log lines are UTF-8")
}

/// The lines real Envoy 1.40 printed with Istio's format (reference §1), time prefix restored.
#[test]
fn text_matches_envoy_byte_for_byte() {
    let cases = [
        (
            http_301(),
            r#""GET /politics HTTP/1.1" 301 - via_upstream - "-" 0 0 1 1 "192.0.2.2" "curl/7.35.0" "901a" "edition.cnn.com" "127.0.0.1:18999" outbound|80||edition.cnn.com 127.0.0.1:56218 127.0.0.1:18080 127.0.0.1:35154 - cnn-route"#,
        ),
        (
            tcp_no_filter_chain(),
            r#""- - -" 0 NR filter_chain_not_found - "-" 0 0 0 - "-" "-" "-" "-" "-" - - 127.0.0.1:18443 127.0.0.1:45168 other.com -"#,
        ),
        (
            tcp_passthrough(),
            r#""- - -" 0 - - - "-" 736 2048 6 - "-" "-" "-" "-" "127.0.0.1:18998" outbound|443||edition.cnn.com 127.0.0.1:38286 127.0.0.1:18443 127.0.0.1:45166 edition.cnn.com -"#,
        ),
    ];
    for (record, envoy) in cases {
        let expected = format!("[2018-06-14T11:46:23.596Z] {envoy}\n");
        assert_eq!(render(Format::Text, &record), expected);
    }
}

#[test]
fn text_replaces_whitespace_in_details_and_failure_reason() {
    let record = AccessLogRecord {
        method: boxed("GET"),
        path: boxed("/"),
        protocol: Some(Protocol::Http11),
        response_code: 503,
        response_flags: ResponseFlags::UF,
        response_code_details: Some(
            "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error: Connection refused}".into(),
        ),
        upstream_transport_failure_reason: Some("delayed_connect_error: Connection refused".into()),
        bytes_sent: 98,
        ..AccessLogRecord::new(start())
    };
    let line = render(Format::Text, &record);
    let envoy = r#"[2018-06-14T11:46:23.596Z] "GET / HTTP/1.1" 503 UF upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused} - "delayed_connect_error:_Connection_refused" 0 98 0 - "#;
    assert!(line.starts_with(envoy), "{line}");
}

#[test]
fn text_with_peer_appends_the_caller_identity() {
    let mut record = http_301();
    let istio = render(Format::Text, &record);
    assert_eq!(render(Format::TextWithPeer, &record), istio.replace('\n', " -\n"));
    record.downstream_peer_uri_san = Some("spiffe://cluster.local/ns/default/sa/sleep".into());
    assert_eq!(
        render(Format::TextWithPeer, &record),
        istio.replace('\n', " spiffe://cluster.local/ns/default/sa/sleep\n")
    );
    // The default format stays Istio's 24 fields whatever the record holds.
    assert_eq!(render(Format::Text, &record), istio);
}

#[test]
fn text_cannot_be_split_into_two_lines() {
    let record = AccessLogRecord {
        downstream_peer_uri_san: Some("spiffe://a\n[2018] forged".into()),
        ..tcp_passthrough()
    };
    let line = render(Format::TextWithPeer, &record);
    assert_eq!(line.matches('\n').count(), 1);
    assert!(line.ends_with(" spiffe://a_[2018] forged\n"));
}

#[test]
fn invalid_server_name_is_sanitized_like_envoy() {
    let record = AccessLogRecord {
        requested_server_name: boxed("bad_name.com"),
        ..tcp_passthrough()
    };
    assert!(render(Format::Text, &record).contains(" invalid:bad_name.com -\n"));
    let record = AccessLogRecord {
        requested_server_name: boxed("a\"b"),
        ..tcp_passthrough()
    };
    assert!(render(Format::Json, &record).contains(r#""requested_server_name":"invalid:a_b""#));
}

const ISTIO_KEYS: [&str; 24] = [
    "start_time",
    "route_name",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "upstream_transport_failure_reason",
];

/// Keys of a JSON object in document order (serde_json's `Map` would sort them).
fn keys_in_order(line: &str) -> Vec<String> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(key);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(Visitor)
        }
    }
    serde_json::from_str::<Keys>(line).expect("valid JSON object").0
}

#[test]
fn json_http_line_is_exact_and_ordered() {
    let line = render(Format::Json, &http_301());
    let expected = concat!(
        r#"{"start_time":"2018-06-14T11:46:23.596Z","route_name":"cnn-route","method":"GET","#,
        r#""path":"/politics","protocol":"HTTP/1.1","response_code":301,"response_flags":"-","#,
        r#""response_code_details":"via_upstream","connection_termination_details":null,"#,
        r#""bytes_received":0,"bytes_sent":0,"duration":1,"upstream_service_time":"1","#,
        r#""x_forwarded_for":"192.0.2.2","user_agent":"curl/7.35.0","request_id":"901a","#,
        r#""authority":"edition.cnn.com","upstream_host":"127.0.0.1:18999","#,
        r#""upstream_cluster":"outbound|80||edition.cnn.com","#,
        r#""upstream_local_address":"127.0.0.1:56218","#,
        r#""downstream_local_address":"127.0.0.1:18080","#,
        r#""downstream_remote_address":"127.0.0.1:35154","requested_server_name":null,"#,
        r#""upstream_transport_failure_reason":null}"#,
        "\n"
    );
    assert_eq!(line, expected);
    assert_eq!(keys_in_order(&line), ISTIO_KEYS);
    let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
    assert_eq!(value["response_code"], 301);
    assert_eq!(value["route_name"], "cnn-route");
}

#[test]
fn json_tcp_line_prints_null_for_absent_values() {
    let line = render(Format::Json, &tcp_no_filter_chain());
    assert_eq!(keys_in_order(&line), ISTIO_KEYS);
    let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
    for key in [
        "method",
        "path",
        "protocol",
        "upstream_host",
        "upstream_cluster",
        "route_name",
    ] {
        assert!(value[key].is_null(), "{key} in {line}");
    }
    assert_eq!(value["response_code"], 0);
    assert_eq!(value["response_flags"], "NR");
    assert_eq!(value["response_code_details"], "filter_chain_not_found");
    assert_eq!(value["requested_server_name"], "other.com");
    assert_eq!(value["downstream_remote_address"], "127.0.0.1:45168");
    assert!(value["upstream_service_time"].is_null());
}

#[test]
fn json_adds_peer_identity_last_and_only_when_present() {
    let mut record = tcp_passthrough();
    record.downstream_peer_uri_san = Some("spiffe://cluster.local/ns/default/sa/sleep".into());
    let line = render(Format::Json, &record);
    let keys = keys_in_order(&line);
    assert_eq!(keys[..24], ISTIO_KEYS);
    assert_eq!(keys[24..], ["downstream_peer_uri_san"]);
    assert!(line.ends_with("\"downstream_peer_uri_san\":\"spiffe://cluster.local/ns/default/sa/sleep\"}\n"));
    let without = render(Format::Json, &tcp_passthrough());
    assert_eq!(keys_in_order(&without), ISTIO_KEYS);
}

#[test]
fn json_escapes_strings() {
    let nasty = "a\"b\\c\nd\te\u{1}f\u{7f}é/";
    let record = AccessLogRecord {
        user_agent: Some(nasty.into()),
        path: boxed("/p?q=\"x\""),
        ..http_301()
    };
    let line = render(Format::Json, &record);
    assert!(line.contains(r#""user_agent":"a\"b\\c\nd\te\u0001f"#), "{line}");
    assert_eq!(line.matches('\n').count(), 1);
    let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
    assert_eq!(value["user_agent"], nasty);
    assert_eq!(value["path"], "/p?q=\"x\"");
}

#[test]
fn start_time_matches_the_time_crate() {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    // Every 997_331 seconds (about 11.5 days) from 1970 to 2400, plus leap-year edges.
    let mut samples: Vec<u64> = (0..13_600).map(|i| i * 997_331_123).collect();
    samples.extend([951_782_400_000, 951_868_799_999, 4_107_542_400_000, 1_709_164_800_123]);
    for millis in samples {
        let t = UNIX_EPOCH + Duration::from_millis(millis);
        let mut ours = Vec::new();
        write_start_time(t, &mut ours);
        let theirs = time::OffsetDateTime::from(t).format(format).expect("formattable");
        assert_eq!(String::from_utf8(ours).expect("ASCII"), theirs, "at {millis} ms");
    }
    let mut before_epoch = Vec::new();
    write_start_time(UNIX_EPOCH - Duration::from_secs(5), &mut before_epoch);
    assert_eq!(before_epoch, b"1970-01-01T00:00:00.000Z");
}

#[test]
fn ipv6_addresses_are_bracketed() {
    let record = AccessLogRecord {
        upstream_host: addr("[2001:db8::1]:443"),
        ..tcp_passthrough()
    };
    assert!(render(Format::Text, &record).contains(r#""[2001:db8::1]:443""#));
}

#[test]
fn format_names_parse() {
    assert_eq!("text".parse::<Format>(), Ok(Format::Text));
    assert_eq!("JSON".parse::<Format>(), Ok(Format::Json));
    assert_eq!("text-with-peer".parse::<Format>(), Ok(Format::TextWithPeer));
    assert!("yaml".parse::<Format>().is_err());
}

#[test]
fn addresses_print_like_envoy_as_string() {
    for text in ["0.0.0.0:0", "10.0.0.1:8080", "255.255.255.255:65535", "[::1]:15001"] {
        let addr: SocketAddr = text.parse().expect("test address");
        let mut out = Vec::new();
        push_addr(&mut out, addr);
        assert_eq!(out, text.as_bytes());
    }
}
