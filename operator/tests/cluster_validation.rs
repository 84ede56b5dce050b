//! Control-plane test of the CRD's validation: every manifest in `operator/tests/invalid/` (one
//! violation each, its field named in an `# expect-field:` line) is rejected by the real API
//! server at `kubectl apply`, with a message naming that field; and the spec is immutable.
#![cfg(feature = "control-plane")]

mod cluster;

use cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_manifest_is_rejected_naming_its_field() {
    install_chart(); // the CRD comes from the chart
    let admin = admin().await;
    let (ns, _cleanup) = restricted_namespace(&admin, "ls-invalid").await;
    let dir = repo_root().join("operator/tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "one manifest per rule, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let yaml = std::fs::read_to_string(file).unwrap();
        let field = yaml
            .lines()
            .find_map(|l| l.strip_prefix("# expect-field:"))
            .unwrap_or_else(|| panic!("{} lacks an expect-field line", file.display()))
            .trim()
            .to_string();
        let out = apply(&ns, &yaml);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if out.status.success() {
            failures.push(format!("{name}: accepted"));
        } else if !stderr.contains(&field) {
            failures.push(format!("{name}: message does not name {field}: {stderr}"));
        } else {
            eprintln!("{name}: {}", stderr.trim());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_is_immutable() {
    install_chart();
    let admin = admin().await;
    let (ns, _cleanup) = restricted_namespace(&admin, "ls-immutable").await;
    let dir = repo_root().join("operator/tests/immutable");
    ok(&apply(
        &ns,
        &std::fs::read_to_string(dir.join("created.yaml")).unwrap(),
    ));
    let out = apply(
        &ns,
        &std::fs::read_to_string(dir.join("updated.yaml")).unwrap(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an updated spec must be rejected");
    assert!(stderr.contains("spec is immutable"), "{stderr}");
}
