# egressd container image for the istio-egressgateway pod (replaces istio-proxy).
# Build: docker build -t egressd .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin egressd \
 && strip target/release/egressd

FROM debian:bookworm-slim
# CA bundle for TLS origination to external hosts (DestinationRule tls without caCertificates).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/egressd /usr/local/bin/egressd
COPY config/ /etc/egressd/config/
# istio-proxy runs as uid/gid 1337, non-root, read-only root filesystem, no capabilities.
USER 1337:1337
ENV EGRESSD_CONFIG=/etc/egressd/config
# 8080/8443: gateway listeners (Service ports 80/443); 15000 admin (loopback); 15021 readiness;
# 15090 Prometheus.
EXPOSE 8080 8443 15000 15021 15090
ENTRYPOINT ["/usr/local/bin/egressd"]
CMD ["run"]
