//! TLS session tickets for terminating listeners: one set of ticket keys per process (rustls'
//! aws-lc-rs `Ticketer`, rotated in memory every 6 hours, a ticket lives 12 hours), shared by
//! every worker and every config reload; each ticket is sealed to the server config that issued
//! it. Never touches sockets or certificate files.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::server::ProducesTickets;

/// The process's ticket keys; [`TicketKeys::for_config`] hands out one sealed ticketer per
/// server config.
pub struct TicketKeys {
    /// `None` when the keys could not be made (no randomness): then only session IDs resume.
    keys: Option<Arc<dyn ProducesTickets>>,
    next_scope: AtomicU64,
}

impl TicketKeys {
    pub fn new() -> TicketKeys {
        let keys = match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(keys) => Some(keys),
            Err(e) => {
                tracing::warn!(error = %e, "no TLS session ticket keys; sessions resume by session ID only");
                None
            }
        };
        TicketKeys {
            keys,
            next_scope: AtomicU64::new(0),
        }
    }

    /// The ticketer for one new server config. Its tickets resume only on that config: rustls
    /// does not authenticate the client again on resumption, so a ticket from a chain without
    /// client certificates, or with other roots or subjectAltNames, must not resume on another
    /// (and a rotated certificate or root starts a new config, ending the old sessions).
    pub fn for_config(&self) -> Option<Arc<dyn ProducesTickets>> {
        let keys = self.keys.clone()?;
        let scope = self.next_scope.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        Some(Arc::new(SealedTickets { keys, scope }))
    }
}

impl Default for TicketKeys {
    fn default() -> Self {
        TicketKeys::new()
    }
}

/// The process's keys, with the issuing config's scope inside the encrypted, authenticated
/// ticket: a ticket of another scope fails to decrypt, and its client gets a full handshake.
struct SealedTickets {
    keys: Arc<dyn ProducesTickets>,
    scope: [u8; 8],
}

impl fmt::Debug for SealedTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedTickets")
            .field("scope", &u64::from_be_bytes(self.scope))
            .finish_non_exhaustive()
    }
}

impl ProducesTickets for SealedTickets {
    fn enabled(&self) -> bool {
        self.keys.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.keys.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut sealed = Vec::with_capacity(self.scope.len() + plain.len());
        sealed.extend_from_slice(&self.scope);
        sealed.extend_from_slice(plain);
        self.keys.encrypt(&sealed)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let mut plain = self.keys.decrypt(cipher)?;
        if plain.get(..self.scope.len())? != self.scope {
            return None;
        }
        plain.drain(..self.scope.len());
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_only_on_the_config_that_sealed_it() {
        let keys = TicketKeys::new();
        let (a, b) = (keys.for_config().unwrap(), keys.for_config().unwrap());
        assert!(a.enabled());
        assert_eq!(a.lifetime(), 12 * 60 * 60);
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(a.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(b.decrypt(&ticket), None, "another config's ticket resumed");
        assert_eq!(a.decrypt(&ticket[..ticket.len() - 1]), None);
        assert_eq!(a.decrypt(b""), None);
    }

    #[test]
    fn other_processes_tickets_do_not_open() {
        let ticket = TicketKeys::new().for_config().unwrap().encrypt(b"x").unwrap();
        assert_eq!(TicketKeys::new().for_config().unwrap().decrypt(&ticket), None);
    }
}
