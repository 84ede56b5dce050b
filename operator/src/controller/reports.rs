//! Collecting a step's load reports: the ConfigMaps the load pods published (see
//! `loopscale_workload::load::publish`), each believed only after its proof-of-origin token
//! passed a TokenReview showing it was issued to the `loopscale-load` ServiceAccount for a pod of
//! this step's Job. The checks are pure functions here; the controller does the API calls.
use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use loopscale_workload::load::publish::{REPORT_KEY, TOKEN_KEY};
use loopscale_workload::report::Report;

use crate::results::{self, Measurement};

use super::children::{LOAD_SERVICE_ACCOUNT, REPORT_TOKEN_AUDIENCE};

/// `user.extra` key the API server sets on tokens bound to a pod: the pod's name.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// `user.extra` key the API server sets on tokens bound to a pod: the pod's UID.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// Annotation of an indexed Job's pods: the completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// The audiences a report token must be reviewed against.
pub fn review_audiences() -> Vec<String> {
    vec![REPORT_TOKEN_AUDIENCE.to_string()]
}

/// A report ConfigMap's two parts, or why it is malformed.
pub fn report_parts(cm: &ConfigMap) -> Result<(&str, &str), String> {
    let data = cm.data.as_ref().ok_or("no data")?;
    let report = data
        .get(REPORT_KEY)
        .ok_or_else(|| format!("no {REPORT_KEY}"))?;
    let token = data
        .get(TOKEN_KEY)
        .ok_or_else(|| format!("no {TOKEN_KEY}"))?;
    Ok((report, token))
}

/// Which of `job_pods` the reviewed token belongs to, as its completion index; an error names
/// the first check that failed. `namespace` is the Experiment's.
pub fn verify_origin(
    review: &TokenReviewStatus,
    namespace: &str,
    job_pods: &[Pod],
) -> Result<u32, String> {
    if review.authenticated != Some(true) {
        return Err(format!(
            "token not authenticated: {}",
            review.error.as_deref().unwrap_or("no reason given")
        ));
    }
    let audiences = review.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == REPORT_TOKEN_AUDIENCE) {
        return Err(format!(
            "token audiences {audiences:?} lack {REPORT_TOKEN_AUDIENCE:?}"
        ));
    }
    let user = review.user.as_ref().ok_or("token review without a user")?;
    let expected = format!("system:serviceaccount:{namespace}:{LOAD_SERVICE_ACCOUNT}");
    if user.username.as_deref() != Some(expected.as_str()) {
        return Err(format!("token of {:?}, not {expected}", user.username));
    }
    let extra = user.extra.clone().unwrap_or_default();
    let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
    let (Some(pod_name), Some(pod_uid)) = (one(EXTRA_POD_NAME), one(EXTRA_POD_UID)) else {
        return Err("token is not bound to a pod".into());
    };
    let pod = job_pods
        .iter()
        .find(|p| p.name_any() == pod_name && p.uid().as_deref() == Some(pod_uid.as_str()))
        .ok_or_else(|| {
            format!("token bound to pod {pod_name}, which is not a pod of this step's Job")
        })?;
    pod.annotations()
        .get(COMPLETION_INDEX)
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| format!("pod {pod_name} has no completion index"))
}

/// Reports accepted so far, one per completion index (a retried index keeps its first report).
#[derive(Debug, Default)]
pub struct Accepted {
    /// Completion index → report.
    pub by_index: BTreeMap<u32, Report>,
    /// Rejected ConfigMaps and why, for events and logs.
    pub rejected: Vec<(String, String)>,
}

impl Accepted {
    /// Add a report whose origin was verified as `index`.
    pub fn add(&mut self, configmap: &str, index: u32, report_json: &str) {
        match Report::from_json(report_json) {
            Ok(r) => {
                self.by_index.entry(index).or_insert(r);
            }
            Err(e) => self
                .rejected
                .push((configmap.to_string(), format!("bad report: {e}"))),
        }
    }
}

/// Merge one report per generator into the step's measurement (histograms added, never
/// percentiles averaged); an error when any generator's report is missing.
pub fn measurement(accepted: &Accepted, generators: u32) -> Result<Measurement, String> {
    let missing: Vec<u32> = (0..generators)
        .filter(|i| !accepted.by_index.contains_key(i))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "no verified report from generator(s) {missing:?} of {generators}"
        ));
    }
    let reports: Vec<Report> = accepted.by_index.values().cloned().collect();
    results::measure(&reports).map_err(|e| format!("reports do not merge: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, uid: &str, index: u32) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                annotations: Some(BTreeMap::from([(
                    COMPLETION_INDEX.to_string(),
                    index.to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn review(user: &str, pod_name: &str, pod_uid: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec!["loopscale".into()]),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: Some(BTreeMap::from([
                    (EXTRA_POD_NAME.to_string(), vec![pod_name.to_string()]),
                    (EXTRA_POD_UID.to_string(), vec![pod_uid.to_string()]),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const SA: &str = "system:serviceaccount:lab:loopscale-load";

    #[test]
    fn a_token_of_a_pod_of_the_job_gives_its_index() {
        let pods = [pod("j-0-a", "u0", 0), pod("j-1-b", "u1", 1)];
        assert_eq!(
            verify_origin(&review(SA, "j-1-b", "u1"), "lab", &pods),
            Ok(1)
        );
    }

    #[test]
    fn forged_or_foreign_tokens_are_rejected_with_the_reason() {
        let pods = [pod("j-0-a", "u0", 0)];
        let other_sa = review("system:serviceaccount:lab:default", "j-0-a", "u0");
        assert!(verify_origin(&other_sa, "lab", &pods)
            .unwrap_err()
            .contains("not system:serviceaccount:lab:loopscale-load"));
        let other_ns = review("system:serviceaccount:evil:loopscale-load", "j-0-a", "u0");
        assert!(verify_origin(&other_ns, "lab", &pods).is_err());
        let wrong_pod = review(SA, "someone-else", "u9");
        assert!(verify_origin(&wrong_pod, "lab", &pods)
            .unwrap_err()
            .contains("not a pod of this step's Job"));
        let recreated = review(SA, "j-0-a", "old-uid");
        assert!(verify_origin(&recreated, "lab", &pods).is_err());
        let mut unauthenticated = review(SA, "j-0-a", "u0");
        unauthenticated.authenticated = Some(false);
        unauthenticated.error = Some("token expired".into());
        assert!(verify_origin(&unauthenticated, "lab", &pods)
            .unwrap_err()
            .contains("expired"));
        let mut unbound = review(SA, "j-0-a", "u0");
        unbound.user.as_mut().unwrap().extra = None;
        assert!(verify_origin(&unbound, "lab", &pods)
            .unwrap_err()
            .contains("not bound to a pod"));
        let mut wrong_audience = review(SA, "j-0-a", "u0");
        wrong_audience.audiences = Some(vec!["https://kubernetes.default.svc".into()]);
        assert!(verify_origin(&wrong_audience, "lab", &pods).is_err());
    }

    #[test]
    fn missing_generators_are_named_and_bad_json_is_rejected() {
        let mut a = Accepted::default();
        a.add("cm-x", 0, "not json");
        assert_eq!(a.rejected.len(), 1);
        let e = measurement(&a, 2).unwrap_err();
        assert!(e.contains("[0, 1]"), "{e}");
    }
}
