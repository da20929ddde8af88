//! DestinationRule checks: every problem reported with its field path, before clusters are
//! built from the rule.

use crate::config::destination_rule::{ClientTls, DestinationRuleSpec, TrafficPolicy};
use crate::config::Resource;

use super::super::{duration, port, Cx};

pub(super) fn validate_rule(cx: &mut Cx<'_>, r: &Resource, dr: &DestinationRuleSpec) {
    let mut names = Vec::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        match s.name.as_deref() {
            None | Some("") => cx.error(
                r,
                &format!("spec.subsets[{i}].name"),
                "subset has no name",
                "name the subset",
            ),
            Some(name) if names.contains(&name) => cx.error(
                r,
                &format!("spec.subsets[{i}].name"),
                format!("subset `{name}` is defined twice"),
                "give each subset a distinct name",
            ),
            Some(name) => names.push(name),
        }
        if let Some(tp) = &s.traffic_policy {
            validate_policy(cx, r, &format!("spec.subsets[{i}].trafficPolicy"), tp);
        }
        if !s.labels.is_empty() {
            cx.not_enforced(
                r,
                &format!("spec.subsets[{i}].labels"),
                "subset labels (ServiceEntry endpoints are not filtered by label)",
            );
        }
    }
    if let Some(tp) = &dr.traffic_policy {
        validate_policy(cx, r, "spec.trafficPolicy", tp);
    }
    if !dr.export_to.is_empty() {
        cx.not_enforced(r, "spec.exportTo", "exportTo (a gateway sees every namespace)");
    }
    if dr.workload_selector.is_some() {
        cx.not_enforced(r, "spec.workloadSelector", "workloadSelector");
    }
}

fn validate_policy(cx: &mut Cx<'_>, r: &Resource, field: &str, tp: &TrafficPolicy) {
    check_tls(cx, r, &format!("{field}.tls"), tp.tls.as_ref());
    check_lb(cx, r, &format!("{field}.loadBalancer"), tp.load_balancer.as_ref());
    check_pool(cx, r, &format!("{field}.connectionPool"), tp.connection_pool.as_ref());
    if tp.outlier_detection.is_some() {
        cx.not_enforced(r, &format!("{field}.outlierDetection"), "outlierDetection");
    }
    if tp.tunnel.is_some() {
        cx.not_enforced(r, &format!("{field}.tunnel"), "tunnel");
    }
    if tp.proxy_protocol.is_some() {
        cx.not_enforced(r, &format!("{field}.proxyProtocol"), "proxyProtocol");
    }
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let pf = format!("{field}.portLevelSettings[{i}]");
        port(
            cx,
            r,
            &format!("{pf}.port.number"),
            p.port.as_ref().and_then(|p| p.number),
        );
        check_tls(cx, r, &format!("{pf}.tls"), p.tls.as_ref());
        check_lb(cx, r, &format!("{pf}.loadBalancer"), p.load_balancer.as_ref());
        check_pool(cx, r, &format!("{pf}.connectionPool"), p.connection_pool.as_ref());
        if p.outlier_detection.is_some() {
            cx.not_enforced(r, &format!("{pf}.outlierDetection"), "outlierDetection");
        }
    }
}

fn check_tls(cx: &mut Cx<'_>, r: &Resource, field: &str, tls: Option<&ClientTls>) {
    let Some(tls) = tls else { return };
    match tls.mode.as_deref().unwrap_or("DISABLE") {
        "DISABLE" | "SIMPLE" | "ISTIO_MUTUAL" => {}
        "MUTUAL" => {
            if tls.credential_name.is_none() && (tls.client_certificate.is_none() || tls.private_key.is_none()) {
                cx.error(
                    r,
                    &format!("{field}.mode"),
                    "MUTUAL needs clientCertificate and privateKey",
                    "set both file paths, or credentialName",
                );
            }
        }
        other => cx.error(
            r,
            &format!("{field}.mode"),
            format!("unknown TLS mode `{other}`"),
            "use DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL",
        ),
    }
    if tls.credential_name.is_some() {
        cx.not_enforced(
            r,
            &format!("{field}.credentialName"),
            "credentialName (Kubernetes secrets are not read; use file paths)",
        );
    }
    if tls.ca_crl.is_some() {
        cx.not_enforced(r, &format!("{field}.caCrl"), "caCrl");
    }
}

fn check_lb(cx: &mut Cx<'_>, r: &Resource, field: &str, lb: Option<&crate::config::destination_rule::LoadBalancer>) {
    let Some(lb) = lb else { return };
    if let Some(simple) = lb.simple.as_deref() {
        if !matches!(
            simple,
            "ROUND_ROBIN" | "RANDOM" | "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" | "PASSTHROUGH"
        ) {
            cx.error(
                r,
                &format!("{field}.simple"),
                format!("unknown load balancer `{simple}`"),
                "use ROUND_ROBIN, RANDOM or LEAST_REQUEST",
            );
        } else if simple == "PASSTHROUGH" {
            cx.not_enforced(r, &format!("{field}.simple"), "PASSTHROUGH load balancing");
        }
    }
    if lb.consistent_hash.is_some() {
        cx.not_enforced(r, &format!("{field}.consistentHash"), "consistentHash");
    }
    if lb.locality_lb_setting.is_some() {
        cx.not_enforced(r, &format!("{field}.localityLbSetting"), "localityLbSetting");
    }
    if lb.warmup_duration_secs.is_some() {
        cx.not_enforced(r, &format!("{field}.warmupDurationSecs"), "warmupDurationSecs");
    }
}

fn check_pool(
    cx: &mut Cx<'_>,
    r: &Resource,
    field: &str,
    pool: Option<&crate::config::destination_rule::ConnectionPool>,
) {
    let Some(pool) = pool else { return };
    if let Some(tcp) = &pool.tcp {
        duration(
            cx,
            r,
            &format!("{field}.tcp.connectTimeout"),
            tcp.connect_timeout.as_ref(),
        );
        duration(cx, r, &format!("{field}.tcp.idleTimeout"), tcp.idle_timeout.as_ref());
        if tcp.tcp_keepalive.is_some() {
            cx.not_enforced(r, &format!("{field}.tcp.tcpKeepalive"), "tcpKeepalive");
        }
        if tcp.max_connection_duration.is_some() {
            cx.not_enforced(
                r,
                &format!("{field}.tcp.maxConnectionDuration"),
                "maxConnectionDuration",
            );
        }
    }
    if let Some(http) = &pool.http {
        duration(cx, r, &format!("{field}.http.idleTimeout"), http.idle_timeout.as_ref());
        if http.h2_upgrade_policy.is_some() {
            cx.not_enforced(r, &format!("{field}.http.h2UpgradePolicy"), "h2UpgradePolicy");
        }
        if http.use_client_protocol.is_some() {
            cx.not_enforced(r, &format!("{field}.http.useClientProtocol"), "useClientProtocol");
        }
        if http.max_concurrent_streams.is_some() {
            cx.not_enforced(r, &format!("{field}.http.maxConcurrentStreams"), "maxConcurrentStreams");
        }
    }
}
