//! TLS: ClientHello inspection for SNI routing, certificates, session tickets, and peer identity.

pub mod certs;
pub mod client_hello;
pub mod identity;
pub mod sni;
pub mod tickets;
pub mod tls12_alerts;
