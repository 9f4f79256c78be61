//! Property tests: the checker never panics, whatever bytes it is given.

use handoff_plan::Checker;
use handoff_registry::Registry;
use proptest::prelude::*;

thread_local! {
    static CHECKER: Checker<'static> = Checker::new(Box::leak(Box::new(Registry::builtin()))).unwrap();
}

fn checker_run(bytes: &[u8]) {
    let report = CHECKER.with(|checker| checker.check(bytes));
    for diagnostic in &report.diagnostics {
        let _ = diagnostic.render("plan.yaml", &report.text, &report.secrets, false);
        let _ = diagnostic.to_json();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        checker_run(&bytes);
    }

    #[test]
    fn yaml_like_text(text in "[a-z:{}\\[\\],&*!|>'\"#\\- \n\t0-9.%]{0,400}") {
        checker_run(text.as_bytes());
    }

    /// The menu plan with a slice removed and a few bytes changed: near-valid documents
    /// reach the schema and lint tiers.
    #[test]
    fn mutated_menu_plan(cut in 0usize..40_000, len in 0usize..200, flips in proptest::collection::vec((0usize..40_000, any::<u8>()), 0..4)) {
        let mut bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/plans/menu-service.yaml")).unwrap();
        let cut = cut.min(bytes.len());
        let end = (cut + len).min(bytes.len());
        bytes.drain(cut..end);
        for (at, byte) in flips {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
        }
        checker_run(&bytes);
    }
}
