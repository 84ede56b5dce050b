//! The loopscale data plane: the emulated server (`serve`) and the load generator (`load`).
//!
//! One crate and one image with two roles, so a cluster pulls one image for both sides of an
//! experiment, and the report format that the operator merges lives next to the code that
//! writes it.

pub mod load;
pub mod report;
pub mod serve;
