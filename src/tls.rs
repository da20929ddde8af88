//! TLS: ClientHello inspection for SNI routing, certificates, and peer identity.

pub mod certs;
pub mod client_hello;
pub mod identity;
pub mod prefixed;
pub mod sni;
