//! Shared set-up for the property tests named `fuzz_*` (proptest on stable
//! Rust, standing in for coverage-guided fuzzing): how many cases a run
//! generates.
//!
//! `cargo test` runs each target with a small default so that all of them
//! together stay within CI's budget; `PROPTEST_CASES=N` overrides it for a
//! long run (docs/fuzzing.md).

use proptest::test_runner::Config;

/// `cases` generated inputs per test, unless `PROPTEST_CASES` is set (then
/// proptest's own default, which reads it, including the other
/// `PROPTEST_*` variables).
pub fn config(cases: u32) -> Config {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default()
    } else {
        Config::with_cases(cases)
    }
}
