//! The example schedule file at the workspace root names demo tasks on
//! their own queues, and loads without a skipped entry.

#[test]
fn the_example_file_loads_completely() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schedules.example.yaml");
    let entries =
        stem::schedule::seed::load_file_strict(&path).expect("schedules.example.yaml is valid");
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "greetings-reminder",
            "greetings-followup",
            "billing-charge",
            "billing-settlement",
            "reports-aggregate",
            "reports-publish-flaky"
        ]
    );
    for e in &entries {
        let spec = stem_demo::spec(&e.task).expect("a demo task");
        assert_eq!(e.queue, spec.queue, "{}", e.id);
        assert_eq!(
            e.meta.get("seeded"),
            Some(&serde_json::Value::Bool(true)),
            "{}",
            e.id
        );
    }
    let flaky = &entries[5];
    assert_eq!(flaky.args["fail"], serde_json::Value::Bool(true));
    assert_eq!(flaky.spec.as_str(), "every:55s");
    assert_eq!(flaky.jitter, std::time::Duration::from_secs(3));
}
