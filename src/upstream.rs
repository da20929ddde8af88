//! Upstream side: endpoint discovery (DNS, STATIC), connection pools and TLS origination.

pub mod cluster;
pub mod dns;
pub mod endpoints;
pub mod h1;
pub mod pool;
pub mod tls;
