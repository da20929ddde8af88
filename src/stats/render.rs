//! Renders a stat `Snapshot` the way Envoy's admin API does: `/stats` text, `/stats?format=json`
//! and `/stats/prometheus`. Pure functions from snapshot to string; they never create or change
//! a stat, and parsing the query string is the admin API's job.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use regex::Regex;

use super::{Kind, Sample, Snapshot};

/// Envoy's `?filter=REGEX` and `?usedonly`.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Searched (not anchored, as Envoy's `std::regex_search`) in the `/stats` name, also for
    /// Prometheus output.
    pub filter: Option<Regex>,
    /// Only stats ever written.
    pub used_only: bool,
}

impl RenderOptions {
    fn shows(&self, sample: &Sample) -> bool {
        (!self.used_only || sample.used()) && self.filter.as_ref().is_none_or(|re| re.is_match(sample.name()))
    }
}

fn shown<'a>(snapshot: &'a Snapshot, opts: &'a RenderOptions) -> impl Iterator<Item = &'a Sample> {
    snapshot.samples().iter().filter(|s| opts.shows(s))
}

/// `/stats`: `name: value` lines sorted by name.
pub fn text(snapshot: &Snapshot, opts: &RenderOptions) -> String {
    let mut out = String::new();
    for sample in shown(snapshot, opts) {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{}: {}", sample.name(), sample.value());
    }
    out
}

/// `/stats?format=json`: `{"stats":[{"name":"...","value":N},...]}` sorted by name.
pub fn json(snapshot: &Snapshot, opts: &RenderOptions) -> String {
    let mut out = String::from("{\"stats\":[");
    for (i, sample) in shown(snapshot, opts).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        push_json_string(&mut out, sample.name());
        let _ = write!(out, ",\"value\":{}}}", sample.value());
    }
    out.push_str("]}");
    out
}

/// `/stats/prometheus`, as Envoy lays it out: counter families, then gauge families, each sorted
/// by name, a `# TYPE` line, its samples sorted by `/stats` name, then a blank line. Envoy's
/// counters already end in `_total` where they should, so no suffix is added.
pub fn prometheus(snapshot: &Snapshot, opts: &RenderOptions) -> String {
    // The snapshot is sorted by name, so each family's samples arrive already in order.
    let mut families: BTreeMap<(Kind, &str), Vec<&Sample>> = BTreeMap::new();
    for sample in shown(snapshot, opts) {
        families
            .entry((sample.kind(), sample.desc().prom_family()))
            .or_default()
            .push(sample);
    }
    let mut out = String::new();
    for ((kind, family), samples) in families {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for sample in samples {
            out.push_str(family);
            out.push('{');
            for (i, (label, value)) in sample.desc().labels().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(label);
                out.push_str("=\"");
                push_label_value(&mut out, value);
                out.push('"');
            }
            let _ = writeln!(out, "}} {}", sample.value());
        }
        out.push('\n');
    }
    out
}

/// The exposition format escapes `\`, `"` and newline in label values, nothing else.
fn push_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A JSON string literal (RFC 8259 escapes).
fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::names::{cluster, EGRESSD_PROM_PREFIX};
    use crate::stats::{
        ClusterStats, HttpConnManagerStats, ListenerStats, ServerStats, SniStats, StatDesc, Store, TcpProxyStats,
    };

    const CNN_443: &str = "outbound|443||edition.cnn.com";
    const CNN_80: &str = "outbound|80||edition.cnn.com";

    fn all() -> RenderOptions {
        RenderOptions::default()
    }

    fn filtered(re: &str, used_only: bool) -> RenderOptions {
        RenderOptions {
            filter: Some(Regex::new(re).expect("test regex is valid")),
            used_only,
        }
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    #[test]
    fn text_shows_the_seed_line() {
        let store = Store::new();
        let stats = ClusterStats::new(&store, CNN_443);
        stats.upstream_cx_total.inc();
        stats.upstream_cx_total.inc();
        let out = text(&store.snapshot(), &all());
        assert!(
            lines(&out).contains(&"cluster.outbound|443||edition.cnn.com.upstream_cx_total: 2"),
            "{out}"
        );
        assert!(
            lines(&out).contains(&"cluster.outbound|443||edition.cnn.com.upstream_cx_active: 0"),
            "{out}"
        );
    }

    #[test]
    fn text_is_sorted_by_name() {
        let store = Store::new();
        TcpProxyStats::new(&store, CNN_443);
        ListenerStats::new(&store, "0.0.0.0_8080");
        ClusterStats::new(&store, CNN_443);
        let out = text(&store.snapshot(), &all());
        let names: Vec<&str> = out.lines().filter_map(|l| l.split(": ").next()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn prometheus_shows_the_reference_samples() {
        let store = Store::new();
        let tls = ClusterStats::new(&store, CNN_443);
        tls.upstream_cx_total.add(2);
        ClusterStats::new(&store, CNN_80).rq_completed(301);
        HttpConnManagerStats::new(&store, "outbound_0.0.0.0_8080")
            .downstream_rq_total
            .add(2);
        ListenerStats::new(&store, "0.0.0.0_8080").downstream_cx_total.add(2);
        TcpProxyStats::new(&store, CNN_443).downstream_cx_total.inc();
        let out = prometheus(&store.snapshot(), &all());
        let lines = lines(&out);
        for expected in [
            r#"envoy_cluster_upstream_cx_total{cluster_name="outbound|443||edition.cnn.com"} 2"#,
            r#"envoy_cluster_upstream_rq{cluster_name="outbound|80||edition.cnn.com",response_code="301"} 1"#,
            r#"envoy_cluster_upstream_rq{cluster_name="outbound|80||edition.cnn.com",response_code_class="3xx"} 1"#,
            r#"envoy_http_downstream_rq_total{http_conn_manager_prefix="outbound_0.0.0.0_8080"} 2"#,
            r#"envoy_http_downstream_rq{http_conn_manager_prefix="outbound_0.0.0.0_8080",response_code_class="2xx"} 0"#,
            r#"envoy_listener_downstream_cx_total{listener_address="0.0.0.0_8080"} 2"#,
            r#"envoy_tcp_downstream_cx_total{tcp_prefix="outbound|443||edition.cnn.com"} 1"#,
            r#"envoy_cluster_ssl_handshake{cluster_name="outbound|443||edition.cnn.com"} 0"#,
            "# TYPE envoy_cluster_upstream_cx_total counter",
            "# TYPE envoy_cluster_upstream_cx_active gauge",
        ] {
            assert!(lines.contains(&expected), "missing {expected}\n{out}");
        }
        let text = text(&store.snapshot(), &all());
        assert!(text.contains("cluster.outbound|80||edition.cnn.com.upstream_rq_301: 1\n"));
        assert!(text.contains("cluster.outbound|80||edition.cnn.com.upstream_rq_3xx: 1\n"));
    }

    #[test]
    fn prometheus_groups_one_type_line_per_family() {
        let store = Store::new();
        let a = ClusterStats::new(&store, CNN_80);
        a.rq_completed(301);
        a.rq_completed(200);
        ClusterStats::new(&store, CNN_443).rq_completed(503);
        let out = prometheus(&store.snapshot(), &filtered(r"upstream_rq_\d", false));
        let expected = "# TYPE envoy_cluster_upstream_rq counter\n\
            envoy_cluster_upstream_rq{cluster_name=\"outbound|443||edition.cnn.com\",response_code=\"503\"} 1\n\
            envoy_cluster_upstream_rq{cluster_name=\"outbound|443||edition.cnn.com\",response_code_class=\"5xx\"} 1\n\
            envoy_cluster_upstream_rq{cluster_name=\"outbound|80||edition.cnn.com\",response_code=\"200\"} 1\n\
            envoy_cluster_upstream_rq{cluster_name=\"outbound|80||edition.cnn.com\",response_code_class=\"2xx\"} 1\n\
            envoy_cluster_upstream_rq{cluster_name=\"outbound|80||edition.cnn.com\",response_code=\"301\"} 1\n\
            envoy_cluster_upstream_rq{cluster_name=\"outbound|80||edition.cnn.com\",response_code_class=\"3xx\"} 1\n\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn prometheus_puts_counters_before_gauges_and_unscoped_stats_get_empty_braces() {
        let store = Store::new();
        let server = ServerStats::new(&store, 2, "0.1.0");
        server.config_reload.inc();
        let out = prometheus(&store.snapshot(), &filtered("^(server|listener_manager)", false));
        let expected = "# TYPE egressd_server_config_reload counter\n\
            egressd_server_config_reload{} 1\n\n\
            # TYPE egressd_server_config_reload_failed counter\n\
            egressd_server_config_reload_failed{} 0\n\n";
        assert!(out.starts_with(expected), "{out}");
        assert!(
            out.contains("# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n\n"),
            "{out}"
        );
        assert!(out.contains("envoy_listener_manager_workers_started{} 1\n"), "{out}");
    }

    #[test]
    fn prometheus_escapes_label_values() {
        let store = Store::new();
        store
            .counter_with(StatDesc::scoped(cluster::SCOPE, "a\"b\\c\nd", "upstream_cx_total"))
            .inc();
        let out = prometheus(&store.snapshot(), &all());
        assert!(
            out.contains(r#"envoy_cluster_upstream_cx_total{cluster_name="a\"b\\c\nd"} 1"#),
            "{out}"
        );
    }

    #[test]
    fn sni_stats_render_with_egressd_prefix() {
        let store = Store::new();
        let sni = SniStats::new(&store, 10);
        sni.server_name("edition.cnn.com").downstream_cx_total.inc();
        let out = prometheus(&store.snapshot(), &filtered("^sni", true));
        assert_eq!(
            out,
            "# TYPE egressd_sni_downstream_cx_total counter\n\
             egressd_sni_downstream_cx_total{server_name=\"edition.cnn.com\"} 1\n\n"
        );
        assert!(EGRESSD_PROM_PREFIX.starts_with("egressd"));
    }

    #[test]
    fn filter_and_used_only() {
        let store = Store::new();
        let stats = ClusterStats::new(&store, CNN_443);
        stats.upstream_cx_total.inc();
        stats.upstream_cx_active.set(0);
        ListenerStats::new(&store, "0.0.0.0_8080").downstream_cx_total.inc();

        let used = text(
            &store.snapshot(),
            &RenderOptions {
                filter: None,
                used_only: true,
            },
        );
        assert_eq!(
            used,
            "cluster.outbound|443||edition.cnn.com.upstream_cx_active: 0\n\
             cluster.outbound|443||edition.cnn.com.upstream_cx_total: 1\n\
             listener.0.0.0.0_8080.downstream_cx_total: 1\n"
        );
        let out = text(&store.snapshot(), &filtered("upstream_cx_total", false));
        assert_eq!(out, "cluster.outbound|443||edition.cnn.com.upstream_cx_total: 1\n");
        let out = text(&store.snapshot(), &filtered("connect_fail", true));
        assert_eq!(out, "");
        let out = prometheus(&store.snapshot(), &filtered("^listener", true));
        assert_eq!(
            out,
            "# TYPE envoy_listener_downstream_cx_total counter\n\
             envoy_listener_downstream_cx_total{listener_address=\"0.0.0.0_8080\"} 1\n\n"
        );
    }

    #[test]
    fn pilot_agent_readiness_query() {
        // pilot-agent asks `/stats?usedonly&filter=^(server\.state|listener_manager\.workers_started)`.
        let store = Store::new();
        ServerStats::new(&store, 2, "0.1.0");
        let out = text(
            &store.snapshot(),
            &filtered(r"^(server\.state|listener_manager\.workers_started)", true),
        );
        assert_eq!(out, "listener_manager.workers_started: 1\nserver.state: 0\n");
    }

    #[test]
    fn json_lists_stats_sorted() {
        let store = Store::new();
        let stats = ClusterStats::new(&store, CNN_443);
        stats.upstream_cx_total.add(2);
        stats.upstream_cx_active.inc();
        let out = json(
            &store.snapshot(),
            &RenderOptions {
                filter: None,
                used_only: true,
            },
        );
        assert_eq!(
            out,
            r#"{"stats":[{"name":"cluster.outbound|443||edition.cnn.com.upstream_cx_active","value":1},{"name":"cluster.outbound|443||edition.cnn.com.upstream_cx_total","value":2}]}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed["stats"][1]["value"], 2);
        assert_eq!(json(&Snapshot::default(), &all()), r#"{"stats":[]}"#);
    }

    #[test]
    fn json_escapes_names() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\u{1}");
        assert_eq!(out, r#""a\"b\\c\u0001""#);
    }
}
