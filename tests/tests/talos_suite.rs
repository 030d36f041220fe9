//! Talos's own API integration suite judges the twins (`cargo xtask lab talos-suite` runs the
//! same): every test of every judged suite passes against the box's cluster, or is skipped by
//! the test itself for a reason Talos wrote (a QEMU-only check). The suite's binary is built
//! from Talos's Go module on first use.

use lab::talos_suite::{Judged, Outcome, SUITES};

#[test]
fn talos_own_read_only_api_suites_pass_against_the_twins() -> anyhow::Result<()> {
    let config = tests::config();
    let binary = lab::ensure_talos_suite(&config.versions)?;
    let results = lab::talos_suite::run(&config, &binary)?;
    for result in &results {
        eprintln!("{:?} {}/{}", result.outcome, result.suite, result.test);
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|result| result.outcome == Outcome::Failed)
        .map(|result| format!("{}/{}:\n{}", result.suite, result.test, result.output))
        .collect();
    assert!(failed.is_empty(), "Talos's tests failed against the twins:\n{}", failed.join("\n\n"));
    // Each test a suite's verdict names ran and passed (a renamed test would otherwise match
    // nothing and pass unseen), and a suite judged whole passed at least one.
    for (suite, judged) in SUITES {
        let Judged::Runs(tests) = judged else { continue };
        let passed = |test: &str| {
            results
                .iter()
                .any(|r| r.suite == *suite && (test.is_empty() || r.test == test) && r.outcome == Outcome::Passed)
        };
        let named: &[&str] = if tests.is_empty() { &[""] } else { tests };
        for test in named {
            assert!(passed(test), "{suite}/{test} did not pass: {results:?}");
        }
    }
    Ok(())
}
