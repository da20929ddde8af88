//! Access log: one [`AccessLogRecord`] per HTTP request or TCP/TLS connection, rendered in Istio's
//! default TEXT format or its JSON variant (`format`) and written by a dedicated thread (`writer`).
//! Owns the record shape and Envoy's response-flag vocabulary. It must never block or do I/O on the
//! request path: callers hand a finished record to [`AccessLogger::log`] and move on.

mod format;
mod writer;

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::ops::{BitOr, BitOrAssign};
use std::sync::Arc;
use std::time::SystemTime;

pub use format::Format;
pub use writer::{AccessLogger, LogTarget, DEFAULT_CAPACITY};

/// Everything Istio's access-log formats print about one HTTP request or one TCP/TLS connection.
///
/// `None` prints as `-` in TEXT and `null` in JSON, as Envoy does. Strings that come from the
/// request (method, path, headers, SNI) are owned `Box<str>` because the request is gone by the
/// time the writer thread formats the record; names that live in the routing snapshot (cluster,
/// route) and the per-connection peer identity are `Arc<str>` so building a record only bumps a
/// reference count; details are `Cow<'static, str>` because they are almost always literals
/// (`via_upstream`, `route_not_found`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogRecord {
    /// `%START_TIME%`: when the first byte of the request (or the connection) arrived.
    pub start_time: SystemTime,
    /// `%REQ(:METHOD)%`.
    pub method: Option<Box<str>>,
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`: the path as the client sent it, before any rewrite.
    pub path: Option<Box<str>>,
    /// `%PROTOCOL%`; `None` for TCP.
    pub protocol: Option<Protocol>,
    /// `%RESPONSE_CODE%`; 0 for TCP and for requests that got no response.
    pub response_code: u16,
    /// `%RESPONSE_FLAGS%`.
    pub response_flags: ResponseFlags,
    /// `%RESPONSE_CODE_DETAILS%`, e.g. `via_upstream`; whitespace is printed as `_`.
    pub response_code_details: Option<Cow<'static, str>>,
    /// `%CONNECTION_TERMINATION_DETAILS%`.
    pub connection_termination_details: Option<Cow<'static, str>>,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`; spaces are printed as `_`.
    pub upstream_transport_failure_reason: Option<Cow<'static, str>>,
    /// `%BYTES_RECEIVED%`: body bytes (HTTP) or payload bytes (TCP) from downstream.
    pub bytes_received: u64,
    /// `%BYTES_SENT%`: body bytes (HTTP) or payload bytes (TCP) to downstream.
    pub bytes_sent: u64,
    /// `%DURATION%` in milliseconds.
    pub duration_ms: u64,
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%` in milliseconds.
    pub upstream_service_time_ms: Option<u64>,
    /// `%REQ(X-FORWARDED-FOR)%`.
    pub x_forwarded_for: Option<Box<str>>,
    /// `%REQ(USER-AGENT)%`.
    pub user_agent: Option<Box<str>>,
    /// `%REQ(X-REQUEST-ID)%`.
    pub request_id: Option<Box<str>>,
    /// `%REQ(:AUTHORITY)%`.
    pub authority: Option<Box<str>>,
    /// `%UPSTREAM_HOST%`: the endpoint chosen (or tried) for this request or connection.
    pub upstream_host: Option<SocketAddr>,
    /// `%UPSTREAM_CLUSTER_RAW%`, e.g. `outbound|443||edition.cnn.com` (no Istio `;` suffix).
    pub upstream_cluster: Option<Arc<str>>,
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    pub upstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: the address the client connected to (container port).
    pub downstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`.
    pub downstream_remote_address: Option<SocketAddr>,
    /// `%REQUESTED_SERVER_NAME%`: the TLS SNI; sanitized on output as Envoy does.
    pub requested_server_name: Option<Box<str>>,
    /// `%ROUTE_NAME%`: the VirtualService http route `name`.
    pub route_name: Option<Arc<str>>,
    /// `%DOWNSTREAM_PEER_URI_SAN%`: the caller's SPIFFE id on ISTIO_MUTUAL traffic. Printed only by
    /// [`Format::TextWithPeer`] and, when present, by [`Format::Json`] (egressd extensions).
    pub downstream_peer_uri_san: Option<Arc<str>>,
    /// `%GRPC_STATUS(NUMBER)%`: the `grpc-status` of a gRPC response (from its trailers, or its
    /// headers when it has no body). Printed, when present, by [`Format::Json`] (an egressd
    /// extension: Istio's formats have no such key).
    pub grpc_status: Option<u16>,
    /// What AuthorizationPolicies in dry-run would have done (`rbac_access_denied_matched_policy[...]`
    /// when they would have denied). Printed, when present, by [`Format::Json`] (an egressd
    /// extension; Envoy keeps it in dynamic metadata that Istio's formats do not print).
    pub rbac_dry_run: Option<Box<str>>,
}

impl AccessLogRecord {
    /// An empty record (everything absent, counters zero) started at `start_time`; fill in the
    /// fields that apply with struct-update syntax or by assignment.
    pub fn new(start_time: SystemTime) -> Self {
        Self {
            start_time,
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_flags: ResponseFlags::NONE,
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration_ms: 0,
            upstream_service_time_ms: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: None,
            route_name: None,
            downstream_peer_uri_san: None,
            grpc_status: None,
            rbac_dry_run: None,
        }
    }
}

/// `%PROTOCOL%` as Envoy spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http10,
    Http11,
    Http2,
    Http3,
}

impl Protocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Http10 => "HTTP/1.0",
            Protocol::Http11 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Http3 => "HTTP/3",
        }
    }

    /// The protocol of a request as hyper reports it; `None` for HTTP/0.9, which Envoy rejects.
    pub fn from_version(version: http::Version) -> Option<Self> {
        match version {
            http::Version::HTTP_10 => Some(Protocol::Http10),
            http::Version::HTTP_11 => Some(Protocol::Http11),
            http::Version::HTTP_2 => Some(Protocol::Http2),
            http::Version::HTTP_3 => Some(Protocol::Http3),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Envoy's short names, indexed by bit: the order of `ResponseFlagUtils::ALL_RESPONSE_STRINGS_FLAGS`
/// and of the `ResponseFlag` enum (envoyproxy/envoy `source/common/stream_info/utility.h`).
const SHORT_NAMES: [&str; 28] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX", "SI", "IH",
    "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO",
];

/// The set of Envoy response flags (`%RESPONSE_FLAGS%`) on one record.
///
/// Printed as Envoy's short names joined by `,`, or `-` when empty. Envoy ≤ 1.29 kept a bitmask
/// and printed in enum order; Envoy ≥ 1.30 keeps the flags in the order they were set
/// (`StreamInfoImpl::setResponseFlag` pushes onto a vector), which for retries running out gives
/// `URX,UF` (see `short_names`). A set keeps equality order-free.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $bit:expr;)*) => {
        impl ResponseFlags {
            $($(#[$doc])* pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)*
        }
    };
}

flags! {
    /// FailedLocalHealthCheck.
    LH = 0;
    /// NoHealthyUpstream: the cluster has no endpoint (e.g. DNS gave no address).
    UH = 1;
    /// UpstreamRequestTimeout.
    UT = 2;
    /// LocalReset.
    LR = 3;
    /// UpstreamRemoteReset.
    UR = 4;
    /// UpstreamConnectionFailure.
    UF = 5;
    /// UpstreamConnectionTermination.
    UC = 6;
    /// UpstreamOverflow: circuit breaker.
    UO = 7;
    /// NoRouteFound (also a listener's `filter_chain_not_found`).
    NR = 8;
    /// DelayInjected.
    DI = 9;
    /// FaultInjected.
    FI = 10;
    /// RateLimited.
    RL = 11;
    /// UnauthorizedExternalService.
    UAEX = 12;
    /// RateLimitServiceError.
    RLSE = 13;
    /// DownstreamConnectionTermination.
    DC = 14;
    /// UpstreamRetryLimitExceeded.
    URX = 15;
    /// StreamIdleTimeout.
    SI = 16;
    /// InvalidEnvoyRequestHeaders.
    IH = 17;
    /// DownstreamProtocolError.
    DPE = 18;
    /// UpstreamMaxStreamDurationReached.
    UMSDR = 19;
    /// ResponseFromCacheFilter.
    RFCF = 20;
    /// NoFilterConfigFound.
    NFCF = 21;
    /// DurationTimeout.
    DT = 22;
    /// UpstreamProtocolError.
    UPE = 23;
    /// NoClusterFound.
    NC = 24;
    /// OverloadManagerTerminated.
    OM = 25;
    /// DnsResolutionFailed.
    DF = 26;
    /// DropOverload.
    DO = 27;
}

impl ResponseFlags {
    pub const NONE: ResponseFlags = ResponseFlags(0);

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when every flag in `other` is set here.
    pub const fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: ResponseFlags) -> ResponseFlags {
        ResponseFlags(self.0 | other.0)
    }

    pub fn insert(&mut self, other: ResponseFlags) {
        self.0 |= other.0;
    }

    /// The short names of the set flags, in Envoy's printing order.
    ///
    /// Envoy ≥ 1.30 prints flags in the order they were set. When retries run out, the router
    /// sets URX before the final connection failure or reset flag, so Envoy 1.40 logs a refused
    /// connection after Istio's default retries as `503 URX,UF` (verified, reference §5; older
    /// Envoys and envoyproxy/envoy#30706 show the enum order `UF,URX`). URX therefore leads;
    /// every other flag keeps the enum order.
    pub fn short_names(self) -> impl Iterator<Item = &'static str> {
        let urx = self.contains(ResponseFlags::URX).then_some("URX");
        let rest = ResponseFlags(self.0 & !ResponseFlags::URX.0);
        urx.into_iter().chain(
            SHORT_NAMES
                .iter()
                .enumerate()
                .filter(move |(bit, _)| rest.0 & (1 << bit) != 0)
                .map(|(_, name)| *name),
        )
    }

    /// The flag with this short name (`"UF"`), for parsing filters and tests.
    pub fn from_short_name(name: &str) -> Option<ResponseFlags> {
        SHORT_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|bit| ResponseFlags(1 << bit))
    }

    /// Appends `URX,UF` (or `-`) without allocating.
    pub fn write_to(self, out: &mut Vec<u8>) {
        if self.is_empty() {
            out.push(b'-');
            return;
        }
        for (i, name) in self.short_names().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name.as_bytes());
        }
    }
}

impl BitOr for ResponseFlags {
    type Output = ResponseFlags;
    fn bitor(self, rhs: ResponseFlags) -> ResponseFlags {
        self.union(rhs)
    }
}

impl BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, rhs: ResponseFlags) {
        self.insert(rhs);
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, name) in self.short_names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_in_envoy_order() {
        // Envoy 1.40 sets URX before the final failure flag and prints in insertion order:
        // `503 URX,UF` (verified against Envoy 1.40, reference §5). Other flags: enum order.
        assert_eq!((ResponseFlags::URX | ResponseFlags::UF).to_string(), "URX,UF");
        assert_eq!((ResponseFlags::DC | ResponseFlags::UH).to_string(), "UH,DC");
        assert_eq!((ResponseFlags::NC | ResponseFlags::NR).to_string(), "NR,NC");
        let all = [
            ResponseFlags::UMSDR,
            ResponseFlags::UPE,
            ResponseFlags::DPE,
            ResponseFlags::LR,
            ResponseFlags::UT,
            ResponseFlags::UC,
            ResponseFlags::DC,
            ResponseFlags::NC,
            ResponseFlags::URX,
            ResponseFlags::NR,
            ResponseFlags::UO,
            ResponseFlags::UF,
            ResponseFlags::UH,
        ]
        .into_iter()
        .fold(ResponseFlags::NONE, |acc, f| acc | f);
        assert_eq!(all.to_string(), "URX,UH,UT,LR,UF,UC,UO,NR,DC,DPE,UMSDR,UPE,NC");
        let mut out = Vec::new();
        all.write_to(&mut out);
        assert_eq!(out, all.to_string().as_bytes());
    }

    #[test]
    fn empty_flags_print_dash() {
        assert_eq!(ResponseFlags::NONE.to_string(), "-");
        let mut out = Vec::new();
        ResponseFlags::default().write_to(&mut out);
        assert_eq!(out, b"-");
    }

    #[test]
    fn flag_names_round_trip() {
        for name in SHORT_NAMES {
            let flag = ResponseFlags::from_short_name(name).expect("known name");
            assert_eq!(flag.to_string(), name);
        }
        assert_eq!(ResponseFlags::from_short_name("XX"), None);
        let mut flags = ResponseFlags::UF;
        flags |= ResponseFlags::URX;
        assert!(flags.contains(ResponseFlags::UF | ResponseFlags::URX));
        assert!(!flags.contains(ResponseFlags::UH));
    }

    #[test]
    fn protocol_names() {
        assert_eq!(Protocol::from_version(http::Version::HTTP_11), Some(Protocol::Http11));
        assert_eq!(Protocol::Http2.to_string(), "HTTP/2");
        assert_eq!(Protocol::from_version(http::Version::HTTP_09), None);
    }
}
