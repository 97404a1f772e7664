//! Test support shared by the workspace's test suites (not published).
//!
//! [`check_property`] runs a proptest strategy like the `proptest!` macro does, then prints one
//! line `proptest-cases: NAME N` with the number of cases that passed. `cargo xtask soak` sets
//! `PROPTEST_CASES` high and sums those lines, so a long soak says how much it checked.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// The proptest configuration of the workspace: `PROPTEST_CASES` (default 256 here, proptest's
/// own default) cases, no regression files written into the source tree.
pub fn config() -> Config {
    Config { failure_persistence: None, ..Config::default() }
}

/// Runs `test` on `config().cases` values drawn from `strategy`; on failure, panics with the
/// shrunk counterexample, which fails the calling `#[test]`.
pub fn check_property<S, F>(name: &str, strategy: S, test: F)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> Result<(), TestCaseError>,
{
    let config = config();
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    match runner.run(&strategy, test) {
        Ok(()) => eprintln!("proptest-cases: {name} {cases}"),
        Err(err) => panic!("property `{name}` failed: {err}"),
    }
}
