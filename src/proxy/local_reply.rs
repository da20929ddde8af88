//! Every way a request can fail at the gateway, mapped in one place to what Envoy answers: the
//! status, the body, the response flags and the response code details of the access log.

use std::borrow::Cow;

use crate::access_log::ResponseFlags;
use crate::upstream::cluster::ConnectError;

/// A request the gateway answers itself.
#[derive(Debug, Clone)]
pub enum Failure {
    /// No virtual host or no route matched: 404 NR. Also a CONNECT, which no route of an
    /// Istio gateway takes (as Envoy answers it).
    NoRoute,
    /// `OPTIONS *`: no route serves the server itself (Envoy: 404 `absolute_path_rejected`).
    AsteriskTarget,
    /// The route names a cluster that does not exist: 503 NC.
    NoCluster,
    /// The cluster has no endpoints: 503 UH.
    NoHealthyUpstream,
    /// Connecting failed (after `retried` retries): 503 UF (URX,UF when retried).
    Connect { error: ConnectError, retried: bool },
    /// TLS origination failed (handshake, verification or config): 503 UF.
    Tls { reason: String, retried: bool },
    /// The upstream closed or reset before the response headers: 503 UC.
    ResetBeforeResponse { retried: bool },
    /// The upstream broke HTTP framing (both lengths, two lengths, a transfer coding other than
    /// chunked, obs-fold, too many interim answers): 502 UPE, as Envoy.
    UpstreamProtocol { retried: bool },
    /// The client's request body broke its framing (a malformed chunk) before a response
    /// started: 400 DPE `http1.codec_error`, as Envoy.
    DownstreamProtocol,
    /// An AuthorizationPolicy denied the request: 403 `RBAC: access denied`, no flag, the
    /// details naming the policy (`rbac_access_denied_matched_policy[...]`), as Envoy.
    AccessDenied { details: String },
    /// No response headers within the route (or per-try) timeout: 504 UT.
    Timeout,
    /// Connection pool limits reached: 503 UO.
    Overflow,
}

/// What the client gets and the access log says.
pub struct Reply {
    pub status: u16,
    pub body: &'static str,
    pub flags: ResponseFlags,
    pub details: Cow<'static, str>,
    pub transport_failure: Option<Cow<'static, str>>,
}

const RESET_PREFIX: &str = "upstream connect error or disconnect/reset before headers. ";

impl Failure {
    pub fn reply(&self) -> Reply {
        match self {
            Failure::NoRoute => Reply {
                status: 404,
                body: "",
                flags: ResponseFlags::NR,
                details: "route_not_found".into(),
                transport_failure: None,
            },
            Failure::AsteriskTarget => Reply {
                status: 404,
                body: "",
                flags: ResponseFlags::NONE,
                details: "absolute_path_rejected".into(),
                transport_failure: None,
            },
            Failure::NoCluster => Reply {
                status: 503,
                body: "",
                flags: ResponseFlags::NC,
                details: "cluster_not_found".into(),
                transport_failure: None,
            },
            Failure::NoHealthyUpstream => Reply {
                status: 503,
                body: "no healthy upstream",
                flags: ResponseFlags::UH,
                details: "no_healthy_upstream".into(),
                transport_failure: None,
            },
            Failure::Connect { error, retried } => {
                let (reason, detail) = match error {
                    ConnectError::Overflow => return Failure::Overflow.reply(),
                    ConnectError::Timeout => ("connection timeout", "connection_timeout".to_string()),
                    ConnectError::Refused(_) => (
                        "remote connection failure",
                        format!("remote_connection_failure|{}", error.transport_failure_reason()),
                    ),
                };
                let mut flags = ResponseFlags::UF;
                if *retried {
                    flags.insert(ResponseFlags::URX);
                }
                Reply {
                    status: 503,
                    body: reset_body(reason, *retried),
                    flags,
                    details: format!("upstream_reset_before_response_started{{{detail}}}").into(),
                    transport_failure: Some(error.transport_failure_reason().into()),
                }
            }
            Failure::Tls { reason, retried } => {
                let mut flags = ResponseFlags::UF;
                if *retried {
                    flags.insert(ResponseFlags::URX);
                }
                // Envoy 1.40 reports a failed upstream handshake as a remote connection failure
                // with the TLS error as the transport failure reason.
                Reply {
                    status: 503,
                    body: reset_body("remote connection failure", *retried),
                    flags,
                    details: format!(
                        "upstream_reset_before_response_started{{remote_connection_failure|TLS_error:_{reason}}}"
                    )
                    .into(),
                    transport_failure: Some(format!("TLS_error: {reason}").into()),
                }
            }
            Failure::ResetBeforeResponse { retried } => reset_reply(
                503,
                ResponseFlags::UC,
                "connection termination",
                "upstream_reset_before_response_started{connection_termination}",
                *retried,
            ),
            Failure::UpstreamProtocol { retried } => reset_reply(
                502,
                ResponseFlags::UPE,
                "protocol error",
                "upstream_reset_before_response_started{protocol_error}",
                *retried,
            ),
            Failure::AccessDenied { details } => Reply {
                status: 403,
                body: "RBAC: access denied",
                flags: ResponseFlags::NONE,
                details: details.clone().into(),
                transport_failure: None,
            },
            Failure::DownstreamProtocol => Reply {
                status: 400,
                body: "Bad Request",
                flags: ResponseFlags::DPE,
                details: "http1.codec_error".into(),
                transport_failure: None,
            },
            Failure::Timeout => Reply {
                status: 504,
                body: "upstream request timeout",
                flags: ResponseFlags::UT,
                details: "upstream_response_timeout".into(),
                transport_failure: None,
            },
            Failure::Overflow => Reply {
                status: 503,
                body: reset_body("overflow", false),
                flags: ResponseFlags::UO,
                details: "upstream_reset_before_response_started{overflow}".into(),
                transport_failure: None,
            },
        }
    }
}

/// A reset before the response: Envoy's body for `reason`, `URX` added when it was retried.
fn reset_reply(status: u16, flag: ResponseFlags, reason: &str, details: &'static str, retried: bool) -> Reply {
    let mut flags = flag;
    if retried {
        flags.insert(ResponseFlags::URX);
    }
    Reply {
        status,
        body: reset_body(reason, retried),
        flags,
        details: details.into(),
        transport_failure: None,
    }
}

/// Envoy's reset bodies, e.g. the 98-byte
/// `upstream connect error or disconnect/reset before headers. reset reason: remote connection failure`.
fn reset_body(reason: &str, retried: bool) -> &'static str {
    // A handful of fixed strings: build them once.
    macro_rules! body {
        ($reason:literal) => {
            if retried {
                concat!(
                    "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: ",
                    $reason
                )
            } else {
                concat!(
                    "upstream connect error or disconnect/reset before headers. reset reason: ",
                    $reason
                )
            }
        };
    }
    debug_assert!(RESET_PREFIX.ends_with(". "));
    match reason {
        "remote connection failure" => body!("remote connection failure"),
        "connection timeout" => body!("connection timeout"),
        "connection termination" => body!("connection termination"),
        "protocol error" => body!("protocol error"),
        _ => body!("overflow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_match_envoy_byte_for_byte() {
        let refused = ConnectError::Refused("Connection refused".into());
        let once = Failure::Connect {
            error: refused.clone(),
            retried: false,
        }
        .reply();
        assert_eq!(once.body.len(), 98, "{}", once.body);
        let retried = Failure::Connect {
            error: refused,
            retried: true,
        }
        .reply();
        assert_eq!(retried.body.len(), 121, "{}", retried.body);
        assert_eq!(
            retried.details,
            "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error: Connection refused}"
        );
        assert_eq!(Failure::NoHealthyUpstream.reply().body, "no healthy upstream");
        // Envoy 1.40's 110-byte answer to an upstream framing error after a retry.
        let upe = Failure::UpstreamProtocol { retried: true }.reply();
        assert_eq!((upe.status, upe.body.len()), (502, 110), "{}", upe.body);
        assert_eq!(upe.flags.to_string(), "URX,UPE");
        assert_eq!(Failure::NoRoute.reply().status, 404);
    }
}
