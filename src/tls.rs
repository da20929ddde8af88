//! TLS: ClientHello inspection for SNI routing, certificates, and peer identity.

pub mod client_hello;
pub mod prefixed;
pub mod sni;
