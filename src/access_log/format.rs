//! Renders an [`AccessLogRecord`] as one line of Istio's TEXT format, its JSON variant, or TEXT plus
//! the caller's identity. Pure and allocation-free per field: appends to a caller-owned buffer.
//! Must stay byte-for-byte with what Envoy prints for Istio's format strings.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::AccessLogRecord;

/// Which line format the access log writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Istio's default 24-field TEXT format (`EnvoyTextLogFormat`), byte for byte.
    #[default]
    Text,
    /// Istio's JSON format (`EnvoyJSONLogFormatIstio`): the 24 keys in Istio's order, absent values
    /// as `null` as Envoy prints them. egressd extension: a 25th key `downstream_peer_uri_san`
    /// follows, only when the caller presented a client certificate (ISTIO_MUTUAL), so a consumer
    /// that knows only Istio's keys sees Istio's object.
    Json,
    /// The 24 TEXT fields plus ` %DOWNSTREAM_PEER_URI_SAN%` (`-` when absent), so operators can see
    /// who called while the default stays Istio-compatible.
    TextWithPeer,
}

impl Format {
    /// Appends the record as one line, including the trailing `\n`.
    pub fn write(self, record: &AccessLogRecord, out: &mut Vec<u8>) {
        match self {
            Format::Text => {
                write_text_fields(record, out);
                out.push(b'\n');
            }
            Format::TextWithPeer => {
                write_text_fields(record, out);
                out.push(b' ');
                text_str(out, non_empty(record.downstream_peer_uri_san.as_deref()));
                out.push(b'\n');
            }
            Format::Json => write_json(record, out),
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "text_with_peer" | "text-with-peer" => Ok(Format::TextWithPeer),
            other => Err(format!(
                "unknown access log format {other:?}: expected text, json or text-with-peer"
            )),
        }
    }
}

/// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
/// %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
/// "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
/// %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
/// "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
/// %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
/// %REQUESTED_SERVER_NAME% %ROUTE_NAME%` (Istio `pilot/pkg/model/telemetry_logging.go`).
fn write_text_fields(r: &AccessLogRecord, out: &mut Vec<u8>) {
    out.push(b'[');
    write_start_time(r.start_time, out);
    out.extend_from_slice(b"] \"");
    text_str(out, r.method.as_deref());
    out.push(b' ');
    text_str(out, r.path.as_deref());
    out.push(b' ');
    text_str(out, r.protocol.map(|p| p.as_str()));
    out.extend_from_slice(b"\" ");
    push_u64(out, u64::from(r.response_code));
    out.push(b' ');
    r.response_flags.write_to(out);
    out.push(b' ');
    match r.response_code_details.as_deref() {
        Some(details) => push_details(out, details, text_raw),
        None => out.push(b'-'),
    }
    out.push(b' ');
    text_str(out, r.connection_termination_details.as_deref());
    out.extend_from_slice(b" \"");
    match non_empty(r.upstream_transport_failure_reason.as_deref()) {
        Some(reason) => push_failure_reason(out, reason, text_raw),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b"\" ");
    push_u64(out, r.bytes_received);
    out.push(b' ');
    push_u64(out, r.bytes_sent);
    out.push(b' ');
    push_u64(out, r.duration_ms);
    out.push(b' ');
    match r.upstream_service_time_ms {
        Some(ms) => push_u64(out, ms),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" \"");
    text_str(out, r.x_forwarded_for.as_deref());
    out.extend_from_slice(b"\" \"");
    text_str(out, r.user_agent.as_deref());
    out.extend_from_slice(b"\" \"");
    text_str(out, r.request_id.as_deref());
    out.extend_from_slice(b"\" \"");
    text_str(out, r.authority.as_deref());
    out.extend_from_slice(b"\" \"");
    text_addr(out, r.upstream_host);
    out.extend_from_slice(b"\" ");
    text_str(out, non_empty(r.upstream_cluster.as_deref()));
    out.push(b' ');
    text_addr(out, r.upstream_local_address);
    out.push(b' ');
    text_addr(out, r.downstream_local_address);
    out.push(b' ');
    text_addr(out, r.downstream_remote_address);
    out.push(b' ');
    match non_empty(r.requested_server_name.as_deref()) {
        Some(sni) => push_server_name(out, sni, text_raw),
        None => out.push(b'-'),
    }
    out.push(b' ');
    text_str(out, non_empty(r.route_name.as_deref()));
}

/// Istio's JSON keys in `EnvoyJSONLogFormatIstio` order. Envoy prints numbers for the stream-info
/// counters and a string for `upstream_service_time`, because that one is a response header.
fn write_json(r: &AccessLogRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"start_time\":\"");
    write_start_time(r.start_time, out);
    out.push(b'"');
    json_key(out, "route_name");
    json_str(out, non_empty(r.route_name.as_deref()));
    json_key(out, "method");
    json_str(out, r.method.as_deref());
    json_key(out, "path");
    json_str(out, r.path.as_deref());
    json_key(out, "protocol");
    json_str(out, r.protocol.map(|p| p.as_str()));
    json_key(out, "response_code");
    push_u64(out, u64::from(r.response_code));
    json_key(out, "response_flags");
    out.push(b'"');
    r.response_flags.write_to(out);
    out.push(b'"');
    json_key(out, "response_code_details");
    match r.response_code_details.as_deref() {
        Some(details) => {
            out.push(b'"');
            push_details(out, details, json_escaped);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, "connection_termination_details");
    json_str(out, r.connection_termination_details.as_deref());
    json_key(out, "bytes_received");
    push_u64(out, r.bytes_received);
    json_key(out, "bytes_sent");
    push_u64(out, r.bytes_sent);
    json_key(out, "duration");
    push_u64(out, r.duration_ms);
    json_key(out, "upstream_service_time");
    match r.upstream_service_time_ms {
        Some(ms) => {
            out.push(b'"');
            push_u64(out, ms);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, "x_forwarded_for");
    json_str(out, r.x_forwarded_for.as_deref());
    json_key(out, "user_agent");
    json_str(out, r.user_agent.as_deref());
    json_key(out, "request_id");
    json_str(out, r.request_id.as_deref());
    json_key(out, "authority");
    json_str(out, r.authority.as_deref());
    json_key(out, "upstream_host");
    json_addr(out, r.upstream_host);
    json_key(out, "upstream_cluster");
    json_str(out, non_empty(r.upstream_cluster.as_deref()));
    json_key(out, "upstream_local_address");
    json_addr(out, r.upstream_local_address);
    json_key(out, "downstream_local_address");
    json_addr(out, r.downstream_local_address);
    json_key(out, "downstream_remote_address");
    json_addr(out, r.downstream_remote_address);
    json_key(out, "requested_server_name");
    match non_empty(r.requested_server_name.as_deref()) {
        Some(sni) => {
            out.push(b'"');
            push_server_name(out, sni, json_escaped);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, "upstream_transport_failure_reason");
    match non_empty(r.upstream_transport_failure_reason.as_deref()) {
        Some(reason) => {
            out.push(b'"');
            push_failure_reason(out, reason, json_escaped);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    if let Some(san) = non_empty(r.downstream_peer_uri_san.as_deref()) {
        json_key(out, "downstream_peer_uri_san");
        json_str(out, Some(san));
    }
    if let Some(dry_run) = r.rbac_dry_run.as_deref() {
        json_key(out, "rbac_dry_run");
        json_str(out, Some(dry_run));
    }
    if let Some(status) = r.grpc_status {
        json_key(out, "grpc_status");
        let _ = std::io::Write::write_fmt(out, format_args!("{status}"));
    }
    out.extend_from_slice(b"}\n");
}

/// Envoy turns an empty route name, SNI, cluster name, failure reason or SAN list into "absent".
fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

/// A TEXT field: the value as is, or `-`. Envoy does no escaping here; HTTP codecs already refuse
/// CR and LF in the request line and headers. egressd still replaces them with `_`, because a value
/// from elsewhere (a certificate SAN) must not be able to forge a second log line.
fn text_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => text_raw(out, v),
        None => out.push(b'-'),
    }
}

fn text_raw(out: &mut Vec<u8>, value: &str) {
    let breaks_line = |b: u8| b == b'\n' || b == b'\r';
    if value.bytes().any(breaks_line) {
        out.extend(value.bytes().map(|b| if breaks_line(b) { b'_' } else { b }));
    } else {
        out.extend_from_slice(value.as_bytes());
    }
}

fn text_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(addr) => push_addr(out, addr),
        None => out.push(b'-'),
    }
}

/// Envoy's `StringUtil::replaceAllEmptySpace`: every ASCII whitespace byte becomes `_`.
/// `escape` writes the runs between them (`text_raw` for TEXT, `json_escaped` for JSON).
fn push_details(out: &mut Vec<u8>, details: &str, escape: fn(&mut Vec<u8>, &str)) {
    push_replacing(
        out,
        details,
        |c| matches!(c, ' ' | '\t' | '\x0c' | '\x0b' | '\n' | '\r'),
        escape,
    );
}

/// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` replaces only spaces (`std::replace(' ', '_')`).
fn push_failure_reason(out: &mut Vec<u8>, reason: &str, escape: fn(&mut Vec<u8>, &str)) {
    push_replacing(out, reason, |c| c == ' ', escape);
}

/// Envoy's `StringUtil::sanitizeInvalidHostname`: an SNI with any byte other than ASCII
/// alphanumerics, `.` and `-` is printed as `invalid:` followed by the name with those bytes as `_`.
fn push_server_name(out: &mut Vec<u8>, sni: &str, escape: fn(&mut Vec<u8>, &str)) {
    let valid = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
    if sni.bytes().all(valid) {
        escape(out, sni);
        return;
    }
    // The sanitized name holds only `[A-Za-z0-9._:-]`, so it needs no JSON escaping. Envoy replaces
    // byte by byte, so a multi-byte character becomes several `_`.
    out.extend_from_slice(b"invalid:");
    out.extend(sni.bytes().map(|b| if valid(b) { b } else { b'_' }));
}

fn push_replacing(out: &mut Vec<u8>, value: &str, replace: impl Fn(char) -> bool, escape: fn(&mut Vec<u8>, &str)) {
    let mut rest = value;
    while let Some(at) = rest.find(&replace) {
        escape(out, &rest[..at]);
        out.push(b'_');
        // Every replaced character is one ASCII byte.
        rest = &rest[at + 1..];
    }
    escape(out, rest);
}

fn json_key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn json_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => {
            out.push(b'"');
            json_escaped(out, v);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn json_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(addr) => {
            out.push(b'"');
            push_addr(out, addr);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// JSON string body as Envoy's sanitizer (nlohmann::json `dump`) writes it: `"` `\` and the short
/// escapes `\b \f \n \r \t`, other control bytes as `\u00xx` (lower-case hex), UTF-8 as is.
fn json_escaped(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// `ip:port`, IPv6 in brackets, as Envoy's `Address::asString()`.
fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        // By hand: four addresses per line made `fmt` the largest cost of a TEXT line.
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
            out.push(b':');
            push_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            use std::io::Write as _;
            // Writing into a Vec cannot fail; `write!` formats without allocating.
            let _ = write!(out, "{addr}");
        }
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_2(out: &mut Vec<u8>, n: u64) {
    out.push(b'0' + (n / 10 % 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// `%START_TIME%`'s default `%Y-%m-%dT%H:%M:%E3SZ`: UTC, milliseconds truncated, e.g.
/// `2018-06-14T11:46:23.596Z`. Computed by hand (no allocation, no panic for any `SystemTime`);
/// a time before 1970 prints as the epoch.
pub(super) fn write_start_time(time: SystemTime, out: &mut Vec<u8>) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let millis = u64::from(since_epoch.subsec_millis());
    let (year, month, day) = civil_from_days(secs / 86_400);
    let secs_of_day = secs % 86_400;
    push_u64(out, year);
    out.push(b'-');
    push_2(out, month);
    out.push(b'-');
    push_2(out, day);
    out.push(b'T');
    push_2(out, secs_of_day / 3600);
    out.push(b':');
    push_2(out, secs_of_day / 60 % 60);
    out.push(b':');
    push_2(out, secs_of_day % 60);
    out.push(b'.');
    out.push(b'0' + (millis / 100) as u8);
    push_2(out, millis % 100);
    out.push(b'Z');
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, restricted to non-negative days so it stays unsigned).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
