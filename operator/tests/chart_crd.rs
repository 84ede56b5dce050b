//! The chart installs the CRD from `charts/loopscale/crds/`; it must be exactly what the code
//! generates (`loopscale crd`), or the API server would validate by stale rules.
#[test]
fn the_charts_crd_is_the_generated_one() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/loopscale/crds/experiments.loopscale.dev.yaml"
    );
    let checked_in = std::fs::read_to_string(path).expect("the chart holds the CRD");
    assert!(
        checked_in == loopscale::crd::crd_yaml(),
        "{path} differs from `loopscale crd`; regenerate it with \
         `cargo run -p loopscale -- crd > charts/loopscale/crds/experiments.loopscale.dev.yaml`"
    );
}
