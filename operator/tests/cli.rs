//! The `loopscale` CLI's contract: the checked-in CRD is what the code generates, every example
//! validates, and every invalid manifest is rejected with exit code 2 naming its field.
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn loopscale() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loopscale"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn checked_in_crd_equals_the_generated_one() {
    let path = repo().join("deploy/crd/experiment.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = loopscale::crd::crd_yaml();
    assert!(
        checked_in == generated,
        "{} differs from the CRD the code generates; regenerate it with:\n  cargo run -p loopscale -- crd > deploy/crd/experiment.yaml",
        path.display()
    );
    // And `loopscale crd` prints exactly that.
    let out = loopscale().arg("crd").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), generated);
}

#[test]
fn every_example_is_valid() {
    let examples = yaml_files(&repo().join("deploy/examples"));
    for name in [
        "quick",
        "io-bound",
        "cpu-bound",
        "mixed",
        "gil-vs-free-threaded",
    ] {
        assert!(
            examples.iter().any(|p| p.file_stem().unwrap() == name),
            "deploy/examples/{name}.yaml is missing"
        );
    }
    for file in examples {
        let out = loopscale().arg("validate").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "{} is invalid:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid Experiment"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("# "),
            "{} must start with a comment saying what it shows",
            file.display()
        );
    }
}

#[test]
fn examples_that_set_framework_costs_carry_the_latest_calibration() {
    // An example's `overheadsByMode` is the block `workload/reference/calibrate` printed, pasted;
    // it must be the checked-in run's, so that no example goes on charging costs a later
    // calibration replaced. (The planner's tests check that block against the overheads the run
    // used.)
    use loopscale::crd::{Experiment, OverheadsByMode};
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Block {
        overheads_by_mode: OverheadsByMode,
    }
    let path = repo().join("workload/reference/calibration-latest.json");
    let latest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let block = latest["experiment_overheads_yaml"].as_str().unwrap();
    let calibration = serde_yaml::from_str::<Block>(block)
        .unwrap()
        .overheads_by_mode;
    let mut calibrated = Vec::new();
    for file in yaml_files(&repo().join("deploy/examples")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let experiment = Experiment::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let Some(overheads) = experiment.spec.workload.overheads_by_mode else {
                continue;
            };
            assert_eq!(
                overheads,
                calibration,
                "{}: not the block in calibration-latest.json",
                file.display()
            );
            calibrated.push(file.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    for name in ["quick", "io-bound"] {
        assert!(
            calibrated.iter().any(|c| c == name),
            "deploy/examples/{name}.yaml sets no overheadsByMode"
        );
    }
}

fn header(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
        .unwrap_or_else(|| panic!("missing '# {key}:' header"))
        .to_string()
}

#[test]
fn every_invalid_manifest_exits_2_naming_its_field() {
    let files = yaml_files(&repo().join("operator/tests/invalid"));
    assert!(
        files.len() >= 30,
        "expected one file per validation rule, found {}",
        files.len()
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let field = header(&text, "expect-field");
        let message = header(&text, "expect-message");
        let out = loopscale().arg("validate").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", file.display());
        let violations: Vec<&str> = stderr.lines().filter(|l| l.starts_with("  ")).collect();
        assert_eq!(
            violations.len(),
            1,
            "{} must break exactly one rule, got: {stderr}",
            file.display()
        );
        assert!(
            violations[0]
                .trim_start()
                .starts_with(&format!("{field}: "))
                && violations[0].contains(&message),
            "{}: expected '{field}: ...{message}...', got: {stderr}",
            file.display()
        );
        // `run` applies the same validation before starting anything.
        let out = loopscale()
            .arg("run")
            .arg(&file)
            .arg("--workload-bin")
            .arg("/bin/false")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "run {}", file.display());
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{field}: ")));
    }
}

#[test]
fn the_spec_cannot_change_after_creation() {
    let dir = repo().join("operator/tests/immutable");
    let read = |name: &str| -> serde_json::Value {
        serde_yaml::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let (created, updated) = (read("created.yaml"), read("updated.yaml"));
    assert!(
        loopscale::validation::validate_value(&updated).is_ok(),
        "the update is valid on its own"
    );
    let violations = loopscale::validation::validate_update(&updated, &created).unwrap_err();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "spec");
    assert!(violations[0].message.contains("immutable"));
    assert!(loopscale::validation::validate_update(&created, &created).is_ok());
}

#[test]
fn unreadable_and_non_yaml_files_exit_2() {
    let out = loopscale()
        .args(["validate", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = std::env::temp_dir().join(format!("loopscale-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "spec: [unclosed").unwrap();
    let out = loopscale().arg("validate").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = loopscale().arg("report").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_workload_that_cannot_start_fails_every_step_with_its_reason() {
    // /bin/false exits at once: every replica "crashes", every step is recorded as failed, the
    // run ends Failed (exit 1) and still writes its results.
    let out = std::env::temp_dir().join(format!("loopscale-cli-false-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = loopscale()
        .arg("run")
        .arg(repo().join("deploy/examples/quick.yaml"))
        .arg("--out")
        .arg(&out)
        .args(["--workload-bin", "/bin/false"])
        .output()
        .unwrap();
    assert_eq!(
        status.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let experiment: loopscale::crd::Experiment =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let st = experiment.status.unwrap();
    assert_eq!(st.phase, loopscale::crd::Phase::Failed);
    assert_eq!(st.results.len(), 4);
    for r in &st.results {
        assert_eq!(r.outcome, loopscale::crd::Outcome::Failed);
        assert!(r.reason.as_deref().unwrap().contains("exited"), "{r:?}");
    }
    assert!(String::from_utf8_lossy(&status.stdout).contains("failed: event-loop processes=1"));
    let _ = std::fs::remove_dir_all(&out);
}
