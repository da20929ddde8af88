//! Byte movement below the protocols: `splice(2)` through pipes between sockets (passthrough
//! tunnels, HTTP/1.1 bodies), and a stream that replays bytes already read (a sniffed
//! ClientHello) before the socket's own.

pub mod prefixed;
pub mod splice;
