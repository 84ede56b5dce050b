//! Publishing a load report to the operator as a ConfigMap (Kubernetes only).
//!
//! A load pod runs under the `loopscale-load` ServiceAccount, whose Role allows nothing but
//! `create` on ConfigMaps. After its run it creates one ConfigMap holding the JSON report and a
//! proof of origin: the pod's projected ServiceAccount token for the audience `loopscale`, which
//! the API server binds to this very pod. The operator checks that token with a TokenReview
//! (user `system:serviceaccount:<ns>:loopscale-load`, bound to a pod of the step's Job) before
//! it believes the report, so neither another tenant nor anyone else who can merely write
//! ConfigMaps in the namespace can forge a result. The ConfigMap is owned by the pod, so it goes
//! away with the Job (and the Experiment), and it survives an operator restart.
//!
//! [`publish`] is the one code path: the load role calls it with in-cluster credentials, and the
//! control-plane test's stand-in (kwok runs no containers) calls it with the same pod's bound
//! tokens obtained through the TokenRequest API.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::{Api, Client};

/// Key of the JSON report in the ConfigMap's data.
pub const REPORT_KEY: &str = "report.json";
/// Key of the proof-of-origin token in the ConfigMap's data.
pub const TOKEN_KEY: &str = "token";

/// Where a report goes and who publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishTarget {
    /// Namespace of the pod (and of the ConfigMap).
    pub namespace: String,
    /// ConfigMap name: the pod's name, unique per attempt.
    pub name: String,
    /// Labels the operator selects reports by (`key=value,...` in `LOOPSCALE_PUBLISH_LABELS`).
    pub labels: BTreeMap<String, String>,
    /// The publishing pod's name and UID: the ConfigMap's owner, so it is garbage-collected with
    /// the pod.
    pub pod: (String, String),
}

/// Why a report could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A required environment variable or file is missing or malformed.
    #[error("cannot publish the report: {0}")]
    Setup(String),
    /// The API server refused or could not be reached.
    #[error("cannot publish the report: {0}")]
    Api(#[from] kube::Error),
}

/// Parse `k=v,k2=v2` into labels; empty input is no labels.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, PublishError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| PublishError::Setup(format!("label {kv:?} is not key=value")))
        })
        .collect()
}

/// The ConfigMap a report is published as.
pub fn report_configmap(target: &PublishTarget, report_json: &str, proof_token: &str) -> ConfigMap {
    let (pod_name, pod_uid) = &target.pod;
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(target.name.clone()),
            namespace: Some(target.namespace.clone()),
            labels: Some(target.labels.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod_name.clone(),
                uid: pod_uid.clone(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (REPORT_KEY.to_string(), report_json.to_string()),
            (TOKEN_KEY.to_string(), proof_token.trim().to_string()),
        ])),
        ..Default::default()
    }
}

/// Create the report ConfigMap with `client`'s credentials (the only request a load pod makes).
pub async fn publish(
    client: Client,
    target: &PublishTarget,
    report_json: &str,
    proof_token: &str,
) -> Result<(), PublishError> {
    let api: Api<ConfigMap> = Api::namespaced(client, &target.namespace);
    api.create(
        &PostParams::default(),
        &report_configmap(target, report_json, proof_token),
    )
    .await?;
    Ok(())
}

fn required_env(name: &str) -> Result<String, PublishError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| PublishError::Setup(format!("environment variable {name} is not set")))
}

/// Publish from inside a load pod: in-cluster credentials, the pod's identity from the downward
/// API (`LOOPSCALE_POD_NAMESPACE`, `LOOPSCALE_POD_NAME`, `LOOPSCALE_POD_UID`), labels from
/// `LOOPSCALE_PUBLISH_LABELS` and the proof token from `LOOPSCALE_PUBLISH_TOKEN_FILE`.
pub async fn publish_in_cluster(name: &str, report_json: &str) -> Result<(), PublishError> {
    let namespace = required_env("LOOPSCALE_POD_NAMESPACE")?;
    let pod = (
        required_env("LOOPSCALE_POD_NAME")?,
        required_env("LOOPSCALE_POD_UID")?,
    );
    let labels = parse_labels(&std::env::var("LOOPSCALE_PUBLISH_LABELS").unwrap_or_default())?;
    let token_file = required_env("LOOPSCALE_PUBLISH_TOKEN_FILE")?;
    let proof = std::fs::read_to_string(&token_file)
        .map_err(|e| PublishError::Setup(format!("cannot read {token_file}: {e}")))?;
    let config = kube::Config::incluster().map_err(|e| PublishError::Setup(e.to_string()))?;
    let client = Client::try_from(config)?;
    let target = PublishTarget {
        namespace,
        name: name.to_string(),
        labels,
        pod,
    };
    publish(client, &target, report_json, &proof).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_bad_ones_are_named() {
        let l = parse_labels("a=1, loopscale.dev/step=3,").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l["loopscale.dev/step"], "3");
        let e = parse_labels("a=1,oops").unwrap_err().to_string();
        assert!(e.contains("oops"), "{e}");
    }

    #[test]
    fn the_configmap_is_owned_by_the_pod_and_carries_report_and_token() {
        let target = PublishTarget {
            namespace: "ns".into(),
            name: "x-s1-load-0-abcde".into(),
            labels: parse_labels("loopscale.dev/report=true").unwrap(),
            pod: ("x-s1-load-0-abcde".into(), "uid-1".into()),
        };
        let cm = report_configmap(&target, "{}", "tok\n");
        let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Pod", "uid-1"));
        let data = cm.data.unwrap();
        assert_eq!(data[TOKEN_KEY], "tok");
        assert_eq!(data[REPORT_KEY], "{}");
        assert_eq!(cm.metadata.namespace.as_deref(), Some("ns"));
    }
}
