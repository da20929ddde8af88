//! Istio YAML the protocol suites share: a Gateway serving plain HTTP on port 80 for every host,
//! and one external host routed to a loopback endpoint (a STATIC ServiceEntry).

use std::net::Ipv4Addr;

/// The Gateway `gw` on 80, and `host` (port 80 of the given `protocol`: HTTP, HTTP2, GRPC)
/// routed to `ip:port`; resources are named after the host's first label.
pub fn gateway_to_static_host(host: &str, protocol: &str, ip: Ipv4Addr, port: u16) -> String {
    let name = host.split('.').next().unwrap_or(host);
    format!(
        "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{{address: {ip}, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: {host}, port: {{number: 80}}}}}}]
"
    )
}
