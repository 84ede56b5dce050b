//! loopscale's control side: the Experiment CRD, the step planner, the experiment engine and its
//! backends, and the `loopscale` CLI.
pub mod controller;
pub mod crd;
pub mod engine;
pub mod local;
pub mod metrics;
pub mod planner;
pub mod reference;
pub mod render;
pub mod results;
pub mod run;
pub mod scrape_targets;
pub mod validation;
