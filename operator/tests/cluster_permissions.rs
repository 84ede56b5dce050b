//! Control-plane test: the permission tables of `operator/README-cluster.md` are exactly what
//! `kubectl auth can-i --list` reports for the chart's ServiceAccount and for the load pods'
//! ServiceAccount (besides the self-review permissions every authenticated user has).
#![cfg(feature = "control-plane")]

mod cluster;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster::*;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Api;

/// (resource, resource names, verbs), each sorted, as one comparable row.
type Row = (String, String, String);

fn sorted_words(text: &str) -> String {
    let mut w: Vec<&str> = text.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    w.sort();
    w.join(" ")
}

/// Rows of a `<!-- permissions:NAME -->` table in the README.
fn documented(name: &str) -> BTreeSet<Row> {
    let readme = std::fs::read_to_string(repo_root().join("operator/README-cluster.md")).unwrap();
    let start = readme
        .find(&format!("<!-- permissions:{name} -->"))
        .expect("table marker");
    let table = &readme[start..];
    let table = &table[..table.find("<!-- /permissions -->").unwrap()];
    table
        .lines()
        .filter(|l| l.starts_with('|') && !l.contains("---") && !l.starts_with("| resource"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (
                cells[0].to_string(),
                sorted_words(cells[1]),
                sorted_words(cells[2]),
            )
        })
        .collect()
}

/// Rows of `kubectl auth can-i --list` for `user` in `ns`, without non-resource URLs and the
/// self-reviews granted to every authenticated user.
fn granted(user: &str, ns: &str) -> BTreeSet<Row> {
    let out = ok(&kubectl(&[
        "auth",
        "can-i",
        "--list",
        "-n",
        ns,
        &format!("--as={user}"),
    ]));
    let row = regex::Regex::new(r"^(\S+)\s+\[[^\]]*\]\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s*$").unwrap();
    out.lines()
        .skip(1)
        .filter_map(|l| row.captures(l))
        .map(|c| (c[1].to_string(), sorted_words(&c[2]), sorted_words(&c[3])))
        .filter(|(r, _, _)| !r.starts_with("selfsubject"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_permissions_are_exactly_the_granted_ones() {
    let _serial = serial().await;
    install_chart();
    let admin = admin().await;
    let operator_sa = format!("system:serviceaccount:{RELEASE_NS}:{RELEASE}");
    assert_eq!(documented("operator").len(), 13, "the README table parses");
    assert_eq!(granted(&operator_sa, "default"), documented("operator"));

    // The load ServiceAccount's permissions exist once the operator set up a namespace.
    let (ns, _cleanup) = restricted_namespace(&admin, "ls-perms").await;
    let operator = Operator::start();
    ok(&apply(&ns, &small_experiment("perms", "")));
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns);
    wait_for(
        Duration::from_secs(60),
        "the loopscale-load RoleBinding",
        || async { bindings.get_opt("loopscale-load").await.ok()?.map(|_| ()) },
    )
    .await;
    drop(operator);
    let load_sa = format!("system:serviceaccount:{ns}:loopscale-load");
    assert_eq!(granted(&load_sa, &ns), documented("load"));
    // ... and nowhere else.
    assert!(granted(&load_sa, "default").is_empty());
}
