//! The admin API (Envoy's paths on 127.0.0.1:15000), the readiness listener (15021) and the
//! Prometheus listener (15090). It reads the snapshot and the stat store; it never changes
//! routing.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::state::AppState;
use crate::stats::{render, RenderOptions};

/// Which listener a request came in on: each serves a subset of paths, like istio-proxy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Admin,
    Health,
    Prometheus,
}

pub async fn serve(listener: TcpListener, state: Arc<AppState>, surface: Surface) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, surface, req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Brings counters kept outside the store up to date before a render.
fn refresh(state: &AppState) {
    state.server_stats.refresh();
    let logger = state
        .shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|s| s.logger.clone());
    if let Some(logger) = logger {
        let counter = &state.server_stats.access_log_dropped;
        counter.add(logger.dropped().saturating_sub(counter.value()));
    }
}

fn handle(state: &AppState, surface: Surface, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match (surface, path) {
        (_, "/healthz/ready") | (Surface::Admin, "/ready") => ready(state),
        (Surface::Admin | Surface::Prometheus, "/stats/prometheus") => match options(query) {
            Ok(opts) => {
                refresh(state);
                let body = render::prometheus(&state.stats.snapshot(), &opts);
                reply(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", e),
        },
        (Surface::Admin, "/stats") => match options(query) {
            Ok(opts) => {
                refresh(state);
                let snapshot = state.stats.snapshot();
                if param(query, "format").as_deref() == Some("json") {
                    reply(StatusCode::OK, "application/json", render::json(&snapshot, &opts))
                } else if param(query, "format").as_deref() == Some("prometheus") {
                    reply(
                        StatusCode::OK,
                        "text/plain; version=0.0.4",
                        render::prometheus(&snapshot, &opts),
                    )
                } else {
                    reply(StatusCode::OK, "text/plain", render::text(&snapshot, &opts))
                }
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", e),
        },
        (Surface::Admin, "/config_dump") => config_dump(state),
        (Surface::Admin, "/authz/explain") => authz_explain(state, query),
        (Surface::Admin, "/server_info") => server_info(state),
        (Surface::Admin, "/listeners") => listeners(state),
        (Surface::Admin, "/clusters") => clusters(state),
        (Surface::Admin, "/drain_listeners") if req.method() == Method::POST => {
            // pilot-agent's SIGTERM step: stop accepting and drain; the process keeps running
            // until it is told to quit or killed.
            state.drain.start();
            state.server_stats.set_state(crate::stats::ServerState::Draining);
            reply(StatusCode::OK, "text/plain", "OK\n".into())
        }
        (Surface::Admin, "/quitquitquit") if req.method() == Method::POST => {
            state.request_shutdown();
            reply(StatusCode::OK, "text/plain", "OK\n".into())
        }
        (Surface::Admin, "/quitquitquit") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n".into()),
        (Surface::Admin, "/") => reply(StatusCode::OK, "text/plain", INDEX.into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

const INDEX: &str = "egressd admin\n  /ready\n  /stats[?filter=REGEX&usedonly&format=json|prometheus]\n  /stats/prometheus\n  /listeners\n  /clusters\n  /config_dump\n  /authz/explain?port=SERVER_PORT&sni=..&principal=..[&host=..&method=..&path=..&source_ip=..]\n  /server_info\n  /drain_listeners?graceful (POST)\n  /quitquitquit (POST)\n";

/// `egressd check --explain` for the running config: the AuthorizationPolicy decision for a
/// request or connection described by the query (400 on bad input).
fn authz_explain(state: &AppState, query: &str) -> Response<Full<Bytes>> {
    let port = match param(query, "port").map(|p| p.parse::<u16>()) {
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => return reply(StatusCode::BAD_REQUEST, "text/plain", "port must be a number\n".into()),
        None => None,
    };
    let source_ip = match param(query, "source_ip").map(|ip| ip.parse()) {
        Some(Ok(ip)) => Some(ip),
        Some(Err(_)) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "source_ip must be an address\n".into(),
            )
        }
        None => None,
    };
    let q = crate::cli::authz::ExplainQuery {
        principal: param(query, "principal"),
        sni: param(query, "sni"),
        port,
        host: param(query, "host"),
        method: param(query, "method"),
        path: param(query, "path"),
        source_ip,
    };
    let snapshot = state.snapshot.load();
    match crate::cli::authz::explain(&snapshot, &state.bootstrap, &q) {
        Ok(text) => reply(StatusCode::OK, "text/plain", text),
        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

fn ready(state: &AppState) -> Response<Full<Bytes>> {
    if *state.shutdown.borrow() || state.drain.is_draining() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n".into());
    }
    reply(StatusCode::OK, "text/plain", "LIVE\n".into())
}

fn config_dump(state: &AppState) -> Response<Full<Bytes>> {
    let snapshot = state.snapshot.load();
    let last_error = state
        .last_reload_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let snapshot_value = match serde_json::to_value(&**snapshot) {
        Ok(v) => v,
        Err(e) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("cannot render the snapshot: {e}\n"),
            )
        }
    };
    let dump = serde_json::json!({
        "bootstrap": serde_json::to_value(&state.bootstrap).unwrap_or_default(),
        "config_paths": &state.config_paths,
        "snapshot": snapshot_value,
        "last_reload_error": last_error,
    });
    match serde_json::to_string_pretty(&dump) {
        Ok(body) => reply(StatusCode::OK, "application/json", body + "\n"),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e.to_string()),
    }
}

fn server_info(state: &AppState) -> Response<Full<Bytes>> {
    let info = serde_json::json!({
        "version": format!("egressd/{}", env!("CARGO_PKG_VERSION")),
        "state": if state.drain.is_draining() { "DRAINING" } else { "LIVE" },
        "uptime_current_epoch": format!("{}s", state.started.elapsed().as_secs()),
        "uptime_all_epochs": format!("{}s", state.started.elapsed().as_secs()),
        "command_line_options": {
            "concurrency": state.concurrency,
            "drain_time_s": state.bootstrap.drain_duration.as_secs(),
        },
        "node": {
            "id": format!("router~{}~{}", state.bootstrap.service_name, state.bootstrap.namespace),
            "cluster": format!("{}.{}", state.bootstrap.service_name, state.bootstrap.namespace),
        },
    });
    reply(StatusCode::OK, "application/json", format!("{info:#}\n"))
}

fn listeners(state: &AppState) -> Response<Full<Bytes>> {
    let snapshot = state.snapshot.load();
    let mut body = String::new();
    for l in &snapshot.listeners {
        body.push_str(&format!("{}::{}\n", l.name, l.address));
    }
    reply(StatusCode::OK, "text/plain", body)
}

/// Envoy's `/clusters` text: per-cluster settings and per-host counters
/// (`outbound|443||edition.cnn.com::127.0.0.1:443::cx_total::2`).
fn clusters(state: &AppState) -> Response<Full<Bytes>> {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let snapshot = state.snapshot.load();
    let shared = state.shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut out = String::new();
    for (name, cluster) in &snapshot.clusters {
        let _ = writeln!(out, "{name}::observability_name::{name}");
        let _ = writeln!(
            out,
            "{name}::default_priority::max_connections::{}",
            cluster.limits.max_connections
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_pending_requests::{}",
            cluster.limits.max_pending_requests
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_requests::{}",
            cluster.limits.max_requests
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_retries::{}",
            cluster.limits.max_retries
        );
        let _ = writeln!(out, "{name}::added_via_api::true");
        let Some(rt) = shared.as_ref().and_then(|s| s.clusters.existing(name)) else {
            continue;
        };
        let mut hosts: Vec<std::net::SocketAddr> = rt.current_endpoints().to_vec();
        for (addr, _) in rt.hosts() {
            if !hosts.contains(&addr) {
                hosts.push(addr);
            }
        }
        hosts.sort();
        for addr in hosts {
            let h = rt.host_stats(addr);
            for (stat, value) in [
                ("cx_active", h.cx_active.load(Relaxed)),
                ("cx_connect_fail", h.cx_connect_fail.load(Relaxed)),
                ("cx_total", h.cx_total.load(Relaxed)),
                ("rq_active", h.rq_active.load(Relaxed)),
                ("rq_error", h.rq_error.load(Relaxed)),
                ("rq_success", h.rq_success.load(Relaxed)),
                ("rq_timeout", h.rq_timeout.load(Relaxed)),
                ("rq_total", h.rq_total.load(Relaxed)),
            ] {
                let _ = writeln!(out, "{name}::{addr}::{stat}::{value}");
            }
            let _ = writeln!(out, "{name}::{addr}::hostname::{}", rt.hostname().unwrap_or(""));
            let _ = writeln!(out, "{name}::{addr}::health_flags::healthy");
            let _ = writeln!(out, "{name}::{addr}::weight::1");
            let _ = writeln!(out, "{name}::{addr}::region::");
            let _ = writeln!(out, "{name}::{addr}::zone::");
            let _ = writeln!(out, "{name}::{addr}::sub_zone::");
            let _ = writeln!(out, "{name}::{addr}::canary::false");
            let _ = writeln!(out, "{name}::{addr}::priority::0");
            let _ = writeln!(out, "{name}::{addr}::success_rate::-1");
            let _ = writeln!(out, "{name}::{addr}::local_origin_success_rate::-1");
        }
    }
    reply(StatusCode::OK, "text/plain", out)
}

fn options(query: &str) -> Result<RenderOptions, String> {
    let filter = match param(query, "filter") {
        Some(f) if !f.is_empty() => Some(
            regex::RegexBuilder::new(&f)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("invalid filter regex: {e}\n"))?,
        ),
        _ => None,
    };
    let used_only = query.split('&').any(|p| p == "usedonly" || p.starts_with("usedonly="));
    Ok(RenderOptions { filter, used_only })
}

/// A query parameter, percent-decoded.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_decode() {
        assert_eq!(
            param("filter=edition%2Ecnn.com&usedonly", "filter").as_deref(),
            Some("edition.cnn.com")
        );
        assert_eq!(param("a=1", "filter"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        let opts = options("usedonly&filter=upstream_cx_total%24").unwrap();
        assert!(opts.used_only);
        assert_eq!(opts.filter.unwrap().as_str(), "upstream_cx_total$");
    }
}
