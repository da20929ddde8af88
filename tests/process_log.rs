//! The process log (tracing, on stderr) as a container runtime or log shipper reads it: from a
//! pipe or file, never a terminal, so plain text without ANSI colour codes, as Envoy writes it.

mod support;

use support::egressd::{Egressd, EgressdOptions};

#[test]
fn process_log_to_a_file_is_plain_text() {
    let mut egressd = Egressd::start(EgressdOptions::new("tests/fixtures/seed/http-mtls-disabled"));
    egressd.stop();
    let log = egressd.stderr();
    assert!(log.contains("ready"), "no log lines to look at:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in the process log:\n{}",
        log.escape_debug()
    );
    // Plain fields, as a log shipper parses them.
    assert!(log.contains(" INFO egressd "), "{log}");
    assert!(log.contains(" admin=127.0.0.1:"), "{log}");
    assert!(
        !egressd.stdout().contains('\u{1b}'),
        "{}",
        egressd.stdout().escape_debug()
    );
}
