//! Shared setup for the integration tests: real peers on loopback. Each test file includes it with
//! `mod support;` and uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod dns;
