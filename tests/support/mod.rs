//! Shared setup for the integration tests: real peers on loopback. Each test file includes it with
//! `mod support;` and uses only part of it, hence the `dead_code` allowance.
//!
//! Blocking vs async: origins run on their own runtimes and `egressd` is a child process, so both
//! keep working while a test blocks. `TestDns` runs on the test's runtime: a test that uses it
//! with blocking helpers (`curl`, `Egressd::start`, `wait_for_*`) runs on
//! `#[tokio::test(flavor = "multi_thread")]` or calls the `_async` variants.
#![allow(dead_code)]

pub mod certs;
pub mod dns;
pub mod egressd;
pub mod envoy;
pub mod h2frames;
pub mod istio;
pub mod mesh;
pub mod origin;
pub mod raw;
pub mod scripted;
pub mod tools;
