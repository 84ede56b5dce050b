//! The load generator's versioned JSON report and the exact merge of several reports.
