//! Validate an Experiment manifest locally by the same rules the API server applies: the CRD's own
//! generated OpenAPI schema (types, enums, ranges, patterns, required fields, unknown fields), its
//! defaults, then its CEL rules evaluated with kube's `cel` feature. Because both checks walk the
//! schema that `loopscale crd` prints, local validation cannot drift from the cluster's.
use std::fmt;

use kube::core::cel::Validator;
use serde_json::Value;

use crate::crd::{experiment_crd, Experiment};

/// One violated rule, named by the field it concerns (`spec.load.rate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted path of the offending field, as Kubernetes prints it.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a manifest was rejected: unparsable YAML or a list of violations.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The file is not YAML (or not a single YAML document).
    #[error("not a YAML document: {0}")]
    Yaml(#[source] serde_yaml::Error),
    /// The document breaks one or more rules.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Violation>),
}

/// The CRD's `openAPIV3Schema` as JSON: the single source of both schema and CEL checks.
pub fn experiment_schema() -> Value {
    let crd = experiment_crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the derived CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("a JSON schema serializes to JSON")
}

/// Parse and validate a manifest; on success, the Experiment with schema defaults applied.
pub fn validate_manifest(yaml: &str) -> Result<Experiment, ValidationError> {
    let object: Value = serde_yaml::from_str(yaml).map_err(ValidationError::Yaml)?;
    validate_value(&object)
}

/// Parse and validate every document of a multi-document YAML file (`---` separated, as
/// `kubectl apply -f` accepts); empty documents are skipped. One result per Experiment.
pub fn validate_documents(
    yaml: &str,
) -> Result<Vec<Result<Experiment, ValidationError>>, ValidationError> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).map_err(ValidationError::Yaml)?;
        if value.is_null() {
            continue;
        }
        out.push(validate_value(&value));
    }
    if out.is_empty() {
        out.push(Err(ValidationError::Invalid(vec![Violation {
            field: "<root>".into(),
            message: "the file holds no Experiment".into(),
        }])));
    }
    Ok(out)
}

/// Validate an already parsed manifest (see [`validate_manifest`]).
pub fn validate_value(object: &Value) -> Result<Experiment, ValidationError> {
    let mut violations = Vec::new();
    check_identity(object, &mut violations);
    let schema = experiment_schema();
    check_schema(&schema, object, "", &mut violations);
    if violations.is_empty() {
        // Only well-typed objects reach the CEL rules, as in the API server.
        if let Err(errors) = Validator::new().validate(&schema, object, None) {
            violations.extend(errors.iter().map(|e| Violation {
                field: e.field_path.clone(),
                message: e.message.clone(),
            }));
        }
    }
    if !violations.is_empty() {
        return Err(ValidationError::Invalid(violations));
    }
    let defaulted = kube::core::cel::apply_defaults(&schema, object);
    serde_json::from_value(defaulted).map_err(|e| {
        ValidationError::Invalid(vec![Violation {
            field: "spec".into(),
            message: e.to_string(),
        }])
    })
}

/// Validate a spec change: the CEL transition rules (`oldSelf`), i.e. spec immutability.
pub fn validate_update(new: &Value, old: &Value) -> Result<(), Vec<Violation>> {
    let schema = experiment_schema();
    Validator::new()
        .validate(&schema, new, Some(old))
        .map_err(|errors| {
            errors
                .iter()
                .map(|e| Violation {
                    field: e.field_path.clone(),
                    message: e.message.clone(),
                })
                .collect()
        })
}

fn check_identity(object: &Value, out: &mut Vec<Violation>) {
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    if api_version != Some("loopscale.dev/v1alpha1") {
        out.push(Violation {
            field: "apiVersion".into(),
            message: format!(
                "must be loopscale.dev/v1alpha1 (got {})",
                api_version.unwrap_or("nothing")
            ),
        });
    }
    let kind = object.get("kind").and_then(Value::as_str);
    if kind != Some("Experiment") {
        out.push(Violation {
            field: "kind".into(),
            message: format!("must be Experiment (got {})", kind.unwrap_or("nothing")),
        });
    }
    let name = object.pointer("/metadata/name").and_then(Value::as_str);
    match name {
        Some(n) if is_dns_subdomain(n) => {}
        Some(n) => out.push(Violation {
            field: "metadata.name".into(),
            message: format!("{n:?} is not a DNS-1123 subdomain (lower case alphanumerics, '-' and '.', at most 253)"),
        }),
        None => out.push(Violation {
            field: "metadata.name".into(),
            message: "required".into(),
        }),
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn join(path: &str, segment: &str) -> String {
    if path.is_empty() {
        segment.to_string()
    } else {
        format!("{path}.{segment}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The OpenAPI v3 subset structural CRD schemas use, checked like the API server does.
fn check_schema(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let here = if path.is_empty() { "<root>" } else { path };
    let mut fail = |message: String| {
        out.push(Violation {
            field: here.to_string(),
            message,
        })
    };
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            fail("must not be null".into());
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            fail(format!(
                "must be an integer or a string (got {})",
                type_name(value)
            ));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            fail(format!("must be of type {expected} (got {actual})"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let list: Vec<String> = allowed
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect();
            fail(format!(
                "unsupported value {value}: must be one of {}",
                list.join(", ")
            ));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                fail(format!("must be at least {min} (got {value})"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                fail(format!("must be at most {max} (got {value})"));
            }
        }
    }
    if let Some(s) = value.as_str() {
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(pattern) {
                Ok(re) if re.is_match(s) => {}
                Ok(_) => fail(format!("{s:?} does not match {pattern}")),
                Err(e) => fail(format!("schema pattern {pattern} does not compile: {e}")),
            }
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if (s.chars().count() as u64) < min {
                fail(format!("must be at least {min} characters"));
            }
        }
    }
    match value {
        Value::Array(items) => {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    fail(format!(
                        "must have at least {min} item(s) (got {})",
                        items.len()
                    ));
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if (items.len() as u64) > max {
                    fail(format!(
                        "must have at most {max} items (got {})",
                        items.len()
                    ));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_schema(item_schema, item, &format!("{here}[{i}]"), out);
                }
            }
        }
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(name) {
                        out.push(Violation {
                            field: join(path, name),
                            message: "required".into(),
                        });
                    }
                }
            }
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (name, child) in map {
                let child_path = join(path, name);
                match (properties.and_then(|p| p.get(name)), additional) {
                    (Some(child_schema), _) => check_schema(child_schema, child, &child_path, out),
                    (None, Some(additional)) => check_schema(additional, child, &child_path, out),
                    // metadata is validated by the API server's ObjectMeta rules, not the schema.
                    (None, None) if preserve || path == "metadata" || properties.is_none() => {}
                    (None, None)
                        if path.is_empty()
                            && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    (None, None) => out.push(Violation {
                        field: child_path,
                        message: "unknown field".into(),
                    }),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
apiVersion: loopscale.dev/v1alpha1
kind: Experiment
metadata: {name: ok}
spec:
  workload: {modes: [event-loop, thread-pool]}
  scenario: {route: cpu, cpuMillis: 10}
  matrix: {processes: [1, 2], replicas: [1]}
  load: {model: closed, concurrency: 8, warmup: 1s, duration: 3s}
"#;

    fn violations(yaml: &str) -> Vec<Violation> {
        match validate_manifest(yaml) {
            Err(ValidationError::Invalid(v)) => v,
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_manifest_gets_the_schema_defaults() {
        let exp = validate_manifest(VALID).unwrap();
        assert_eq!(exp.spec.repetitions, 1);
        assert_eq!(exp.spec.cooldown, "5s");
        assert_eq!(exp.spec.load.generators, 1);
        assert_eq!(exp.spec.workload.thread_pool_size, 40);
        assert!(exp.spec.workload.gil);
    }

    #[test]
    fn the_open_model_needs_a_rate() {
        let yaml = VALID.replace("model: closed, concurrency: 8", "model: open");
        let v = violations(&yaml);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].field, "spec.load.rate");
        assert_eq!(v[0].message, "required when spec.load.model is open");
    }

    #[test]
    fn schema_violations_name_the_field() {
        let yaml = VALID.replace("processes: [1, 2]", "processes: [0, 2]");
        let v = violations(&yaml);
        assert_eq!(v[0].field, "spec.matrix.processes[0]");
        let yaml = VALID.replace("route: cpu,", "route: gpu,");
        assert_eq!(violations(&yaml)[0].field, "spec.scenario.route");
        let yaml = VALID.replace("duration: 3s", "duration: 3 seconds");
        assert_eq!(violations(&yaml)[0].field, "spec.load.duration");
        let yaml = VALID.replace("\n  load: {", "\n  lode: {x: 1}\n  load: {");
        assert_eq!(violations(&yaml)[0].field, "spec.lode");
    }

    #[test]
    fn duplicates_in_the_matrix_are_rejected_by_cel() {
        let yaml = VALID.replace("processes: [1, 2]", "processes: [2, 2]");
        let v = violations(&yaml);
        assert_eq!(v[0].field, "spec.matrix.processes");
        assert_eq!(v[0].message, "values must be unique");
    }

    #[test]
    fn reference_rejects_only_what_the_real_runtimes_cannot_honour() {
        let reference = |workload: &str| {
            VALID.replace(
                "workload: {modes: [event-loop, thread-pool]}",
                &format!("workload: {{implementation: reference, {workload}}}"),
            )
        };
        let both = "modes: [event-loop, thread-pool]";
        let exp = validate_manifest(&reference(both)).unwrap();
        assert_eq!(
            exp.spec.workload.implementation,
            crate::crd::Implementation::Reference
        );
        // Pool sizes and the switch interval are passed through, not rejected.
        assert!(validate_manifest(&reference(&format!(
            "{both}, threadPoolSize: 4, libuvThreadPoolSize: 2, gilSwitchIntervalMs: 1"
        )))
        .is_ok());
        assert!(
            validate_manifest(&reference(&format!("{both}, balancing: shared-socket"))).is_ok()
        );
        for (extra, field) in [
            ("requestOverheadUs: 30", "spec.workload.requestOverheadUs"),
            ("resumeOverheadUs: 90", "spec.workload.resumeOverheadUs"),
            (
                "connectionOverheadUs: 85",
                "spec.workload.connectionOverheadUs",
            ),
            ("workingSetKiB: 512", "spec.workload.workingSetKiB"),
            (
                "overheadsByMode: {threadPool: {requestOverheadUs: 126}}",
                "spec.workload.overheadsByMode",
            ),
            ("gil: false", "spec.workload.gil"),
            ("balancing: round-robin", "spec.workload.balancing"),
        ] {
            let v = violations(&reference(&format!("{both}, {extra}")));
            assert_eq!(v.len(), 1, "{extra}: {v:?}");
            assert_eq!(v[0].field, field);
            assert!(
                v[0].message.contains("implementation is reference"),
                "{v:?}"
            );
        }
        // Express has both balancings, and no GIL to switch off: event-loop alone may.
        let express = "modes: [event-loop]";
        assert!(
            validate_manifest(&reference(&format!("{express}, balancing: round-robin"))).is_ok()
        );
        assert!(validate_manifest(&reference(&format!("{express}, gil: false"))).is_ok());
        // The emulation honours every knob.
        let emulated = VALID.replace(
            "workload: {modes: [event-loop, thread-pool]}",
            "workload: {modes: [event-loop, thread-pool], requestOverheadUs: 30, resumeOverheadUs: 90, connectionOverheadUs: 85, workingSetKiB: 256, overheadsByMode: {eventLoop: {requestOverheadUs: 160}, threadPool: {resumeOverheadUs: 146, workingSetKiB: 768}}, gil: false, balancing: round-robin}",
        );
        assert!(validate_manifest(&emulated).is_ok());
        for (valid, too_large, field) in [
            (
                "resumeOverheadUs: 146",
                "resumeOverheadUs: 1000001",
                "spec.workload.overheadsByMode.threadPool.resumeOverheadUs",
            ),
            (
                "workingSetKiB: 768",
                "workingSetKiB: 262145",
                "spec.workload.overheadsByMode.threadPool.workingSetKiB",
            ),
        ] {
            let v = violations(&emulated.replace(valid, too_large));
            assert_eq!(v.len(), 1, "{too_large}: {v:?}");
            assert_eq!(v[0].field, field);
        }
    }

    #[test]
    fn rate_and_concurrency_must_split_evenly_over_the_generators() {
        let closed = |c: u32, g: u32| {
            VALID.replace(
                "concurrency: 8,",
                &format!("concurrency: {c}, generators: {g},"),
            )
        };
        assert!(validate_manifest(&closed(8, 4)).is_ok());
        for (c, g) in [(8, 3), (2, 3)] {
            let v = violations(&closed(c, g));
            assert_eq!(v.len(), 1, "{v:?}");
            assert_eq!(v[0].field, "spec.load.concurrency");
            assert!(v[0].message.contains("multiple of spec.load.generators"));
        }
        let open = |r: u32, g: u32| {
            VALID.replace(
                "model: closed, concurrency: 8,",
                &format!("model: open, rate: {r}, generators: {g},"),
            )
        };
        assert!(validate_manifest(&open(300, 3)).is_ok());
        let v = violations(&open(301, 3));
        assert_eq!((v.len(), v[0].field.as_str()), (1, "spec.load.rate"));
    }

    #[test]
    fn the_spec_is_immutable() {
        let old: Value = serde_yaml::from_str(VALID).unwrap();
        let new: Value =
            serde_yaml::from_str(&VALID.replace("concurrency: 8", "concurrency: 9")).unwrap();
        let v = validate_update(&new, &old).unwrap_err();
        assert_eq!(v[0].field, "spec");
        assert!(validate_update(&old, &old).is_ok());
    }

    #[test]
    fn the_step_timeout_must_cover_warmup_and_duration() {
        let yaml = VALID.replace("duration: 3s}", "duration: 3s}\n  stepTimeout: 4s");
        let v = violations(&yaml);
        assert_eq!(v[0].field, "spec.stepTimeout", "{v:?}");
        let yaml = VALID.replace("duration: 3s}", "duration: 3s}\n  stepTimeout: 4100ms");
        assert!(validate_manifest(&yaml).is_ok());
    }

    #[test]
    fn every_document_of_a_multi_document_file_is_validated() {
        let two = format!(
            "{VALID}---\n{}",
            VALID
                .replace("name: ok", "name: second")
                .replace("concurrency: 8", "concurrency: 0")
        );
        let results = validate_documents(&two).unwrap();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert!(
            matches!(&results[1], Err(ValidationError::Invalid(v)) if v[0].field == "spec.load.concurrency")
        );
        assert!(validate_documents("---\n---\n").unwrap()[0].is_err());
    }

    #[test]
    fn garbage_does_not_panic() {
        for text in [
            "",
            "[]",
            "42",
            "spec: 7",
            ":::",
            "apiVersion: [",
            "kind: {a: b}",
        ] {
            assert!(validate_manifest(text).is_err(), "{text:?}");
        }
    }
}
