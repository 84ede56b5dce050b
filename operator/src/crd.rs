//! The `Experiment` custom resource (`loopscale.dev/v1alpha1`): one scaling experiment, the same
//! YAML for `kubectl apply` and `loopscale run`.
//!
//! Validation lives in the generated OpenAPI schema (enums, ranges, required fields, defaults,
//! patterns) and in CEL rules (`x-kubernetes-validations`), so the API server rejects bad specs at
//! `kubectl apply`; [`crate::validation`] applies the very same schema and rules to local files.
// kube's `printcolumn(..)` repeats `type_ = ..` per column, which clippy mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern every duration field must match: one or more `<digits><unit>` groups, e.g. `500ms`,
/// `10s`, `1m30s`. Kept to the units the load generator and the engine both parse.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// What one Experiment measures: every combination of the workload's concurrency modes, processes
/// per replica and replicas, each step loaded the same way and measured from the client side.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "loopscale.dev",
    version = "v1alpha1",
    kind = "Experiment",
    namespaced,
    status = "ExperimentStatus",
    shortname = "lsx",
    category = "loopscale",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Step", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".status.currentStep.mode"
    ),
    printcolumn(
        name = "Processes",
        type_ = "integer",
        json_path = ".status.currentStep.processes"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.currentStep.replicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A loopscale scaling experiment: modes x processes x replicas under one load profile."
)]
#[x_kube(validation = Rule::new("duration(self.stepTimeout) > duration(self.load.warmup) + duration(self.load.duration)").message("must be longer than spec.load.warmup + spec.load.duration").field_path(".stepTimeout"))]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: create a new Experiment to change it"))]
#[serde(rename_all = "camelCase")]
pub struct ExperimentSpec {
    /// The server being measured: which concurrency models and how each is configured.
    pub workload: WorkloadSpec,
    /// The route every request hits, i.e. the kind of work per request.
    pub scenario: ScenarioSpec,
    /// Processes per replica and replicas per step: the scaling axes.
    pub matrix: MatrixSpec,
    /// How load is generated and for how long each step is measured.
    pub load: LoadSpec,
    /// How many times each configuration is measured.
    #[serde(default = "default_repetitions")]
    #[schemars(range(min = 1, max = 20))]
    pub repetitions: u32,
    /// Step order: `interleaved` (default) runs the modes of one configuration back to back and
    /// repetitions as outer rounds, so slow drift of the machine hits every configuration alike;
    /// `sequential` runs all steps of one mode, then the next.
    #[serde(default)]
    pub order: StepOrder,
    /// Pause after each step before the next starts (lets CPU caches, sockets and GC settle).
    #[serde(default = "default_cooldown")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub cooldown: String,
    /// Longest time one step may take from deploying to collecting its reports.
    #[serde(default = "default_step_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub step_timeout: String,
    /// What a failed step does to the rest of the experiment.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
}

fn default_repetitions() -> u32 {
    1
}
fn default_cooldown() -> String {
    "5s".into()
}
fn default_step_timeout() -> String {
    "5m".into()
}

/// Concurrency model of the emulated server.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Express/Node: one single-threaded event loop per process.
    EventLoop,
    /// FastAPI/Uvicorn: an event loop plus a thread pool, under the GIL unless it is switched off.
    ThreadPool,
}

impl Mode {
    /// The value of `LOOPSCALE_MODE` and of the `mode` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::EventLoop => "event-loop",
            Mode::ThreadPool => "thread-pool",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How connections reach the worker processes of one replica.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Balancing {
    /// Node cluster's default: the primary accepts and hands connections out in turn.
    RoundRobin,
    /// Uvicorn `--workers`: children inherit one socket and the kernel picks who accepts.
    SharedSocket,
}

/// Step order, see [`ExperimentSpec::order`].
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepOrder {
    /// Repetition rounds outermost; inside a round, configurations with the modes back to back.
    #[default]
    Interleaved,
    /// Mode outermost, then processes, replicas, and repetitions back to back.
    Sequential,
}

/// What a failed step (timeout, no ready replicas, no report) does to the experiment.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Record the step as failed and go on with the next one.
    #[default]
    Continue,
    /// Record the step as failed and stop the experiment (phase Failed).
    Abort,
}

/// Which server plays the workload: the emulation or the real framework of each mode.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Implementation {
    /// `loopscale-workload serve`: the emulated concurrency models, where every knob applies.
    #[default]
    Emulated,
    /// The real frameworks (`workload/reference/`): Express with Node's `cluster` for event-loop
    /// mode, FastAPI under `uvicorn --workers` for thread-pool mode.
    Reference,
}

impl Implementation {
    /// The spec's spelling, for tables and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Implementation::Emulated => "emulated",
            Implementation::Reference => "reference",
        }
    }
}

impl std::fmt::Display for Implementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The server under test.
///
/// With `implementation: reference` the real runtimes play the modes, and the rules below reject
/// the settings they cannot honour (rather than silently measure something else): a framework's
/// per-request cost is real, CPython 3.11 has a GIL, and uvicorn only shares its socket. The pool
/// sizes and the switch interval are passed through (UV_THREADPOOL_SIZE, anyio's limiter,
/// `sys.setswitchinterval`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.implementation != 'reference' || self.requestOverheadUs == 0").message("must be 0 when spec.workload.implementation is reference (the real frameworks' per-request cost is real)").field_path(".requestOverheadUs"))]
#[x_kube(validation = Rule::new("self.implementation != 'reference' || self.resumeOverheadUs == 0").message("must be 0 when spec.workload.implementation is reference (the real frameworks' per-request cost is real)").field_path(".resumeOverheadUs"))]
#[x_kube(validation = Rule::new("self.implementation != 'reference' || self.connectionOverheadUs == 0").message("must be 0 when spec.workload.implementation is reference (the real frameworks' per-connection cost is real)").field_path(".connectionOverheadUs"))]
#[x_kube(validation = Rule::new("self.implementation != 'reference' || self.workingSetKiB == 0").message("must be 0 when spec.workload.implementation is reference (the real frameworks' memory is real)").field_path(".workingSetKiB"))]
#[x_kube(validation = Rule::new("self.implementation != 'reference' || !has(self.overheadsByMode)").message("must be unset when spec.workload.implementation is reference (the real frameworks' costs are real)").field_path(".overheadsByMode"))]
#[x_kube(validation = Rule::new("self.implementation != 'reference' || !('thread-pool' in self.modes) || self.gil").message("must be true when spec.workload.implementation is reference with thread-pool mode (the FastAPI reference runs CPython 3.11, which has a GIL)").field_path(".gil"))]
#[x_kube(validation = Rule::new("self.implementation != 'reference' || !('thread-pool' in self.modes) || !has(self.balancing) || self.balancing == 'shared-socket'").message("must be shared-socket (or unset) when spec.workload.implementation is reference with thread-pool mode (uvicorn --workers only shares its listening socket)").field_path(".balancing"))]
pub struct WorkloadSpec {
    /// `emulated` (default): `loopscale-workload serve`; `reference`: the real Express
    /// (event-loop mode) and FastAPI (thread-pool mode) servers, in the same matrix.
    #[serde(default)]
    pub implementation: Implementation,
    /// Concurrency models to compare; each becomes its own series.
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y == x))").message("values must be unique"))]
    pub modes: Vec<Mode>,
    /// Thread-pool mode: pool capacity (anyio's default limiter is 40).
    #[serde(default = "default_thread_pool_size")]
    #[schemars(range(min = 1, max = 1024))]
    pub thread_pool_size: u32,
    /// Thread-pool mode: one GIL per process (false models free-threaded CPython 3.13t/3.14t).
    #[serde(default = "default_true")]
    pub gil: bool,
    /// Thread-pool mode: GIL switch interval in milliseconds (CPython's default is 5).
    #[serde(default = "default_gil_switch_interval_ms")]
    #[schemars(range(min = 1, max = 1000))]
    pub gil_switch_interval_ms: u32,
    /// Event-loop mode: libuv pool size for `/offload` (Node's default is 4).
    #[serde(default = "default_libuv_thread_pool_size")]
    #[schemars(range(min = 1, max = 1024))]
    pub libuv_thread_pool_size: u32,
    /// CPU spent on the loop per request (holding the GIL in thread-pool mode), in microseconds,
    /// to emulate a framework's own per-request cost.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub request_overhead_us: u32,
    /// CPU spent on the loop each time a handler resumes after waiting (a timer, a pool job), in
    /// microseconds: the framework's cost of that extra loop callback (asyncio's task step).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub resume_overhead_us: u32,
    /// CPU spent on the loop for each accepted connection, in microseconds: the framework's
    /// cost of setting a connection up and tearing it down (uvicorn's protocol object, Node's
    /// socket). Paid once per connection; with shared-socket balancing it also spreads a burst
    /// of new connections over the workers, as uvicorn's does.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub connection_overhead_us: u32,
    /// The framework's memory, in KiB, that each request and each new connection walks on the
    /// loop (one load per cache line, in a random order): cheap while cached, dear after an idle
    /// moment, as the real runtimes' interpreter state is, so the first request after a pause
    /// and a connection reaching an idle worker cost more. 0: no walk.
    #[serde(default, rename = "workingSetKiB")]
    #[schemars(range(min = 0, max = 262_144))]
    pub working_set_kib: u32,
    /// Per-mode values of `requestOverheadUs`, `resumeOverheadUs`, `connectionOverheadUs` and
    /// `workingSetKiB`:
    /// `calibrate` proposes them per mode, since Express's costs are not FastAPI's, and one
    /// Experiment compares both. A field set here replaces the workload-wide one for that mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overheads_by_mode: Option<OverheadsByMode>,
    /// How connections reach workers; unset means the mode's default (event-loop: round-robin,
    /// thread-pool: shared-socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancing: Option<Balancing>,
    /// Kubernetes backend: image of `loopscale-workload` (unset: the operator's default), which
    /// runs the load generators and, with `implementation: emulated`, the workload. The reference
    /// servers' images are the operator's settings (`referenceImages` in the chart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Kubernetes backend: resources of each workload pod; ignored by the local backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Per-mode framework costs of the emulation (`spec.workload.overheadsByMode`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverheadsByMode {
    /// Event-loop mode's overheads (Express's, as `calibrate` proposes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_loop: Option<ModeOverheads>,
    /// Thread-pool mode's overheads (FastAPI's, as `calibrate` proposes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_pool: Option<ModeOverheads>,
}

/// One mode's framework costs, each in microseconds of loop CPU; an unset field keeps the
/// workload-wide value.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModeOverheads {
    /// Replaces `spec.workload.requestOverheadUs` for this mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub request_overhead_us: Option<u32>,
    /// Replaces `spec.workload.resumeOverheadUs` for this mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub resume_overhead_us: Option<u32>,
    /// Replaces `spec.workload.connectionOverheadUs` for this mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub connection_overhead_us: Option<u32>,
    /// Replaces `spec.workload.workingSetKiB` for this mode.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "workingSetKiB"
    )]
    #[schemars(range(min = 0, max = 262_144))]
    pub working_set_kib: Option<u32>,
}

/// The emulation's framework costs for one mode, as its pods get them: three in microseconds of
/// loop CPU, and the memory each request and connection walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overheads {
    pub request_us: u32,
    pub resume_us: u32,
    pub connection_us: u32,
    pub working_set_kib: u32,
}

impl WorkloadSpec {
    /// The framework costs `mode` runs with: its `overheadsByMode` entry's fields where set, the
    /// workload-wide fields otherwise.
    pub fn overheads(&self, mode: Mode) -> Overheads {
        let own = self.overheads_by_mode.as_ref().and_then(|by| match mode {
            Mode::EventLoop => by.event_loop.as_ref(),
            Mode::ThreadPool => by.thread_pool.as_ref(),
        });
        let own = own.cloned().unwrap_or_default();
        Overheads {
            request_us: own.request_overhead_us.unwrap_or(self.request_overhead_us),
            resume_us: own.resume_overhead_us.unwrap_or(self.resume_overhead_us),
            connection_us: own
                .connection_overhead_us
                .unwrap_or(self.connection_overhead_us),
            working_set_kib: own.working_set_kib.unwrap_or(self.working_set_kib),
        }
    }
}

fn default_thread_pool_size() -> u32 {
    40
}
fn default_true() -> bool {
    true
}
fn default_gil_switch_interval_ms() -> u32 {
    5
}
fn default_libuv_thread_pool_size() -> u32 {
    4
}

/// The server routes a scenario can load (see the workload's route table).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// `/hello`: no work, the framework's own cost only.
    Hello,
    /// `/io?ms=`: waits `ioMillis` without using CPU (a database or HTTP call).
    Io,
    /// `/cpu?ms=`: `cpuMillis` of CPU work; thread-pool mode runs it on the pool (a `def` route).
    Cpu,
    /// `/cpu-inline?ms=`: `cpuMillis` of CPU work on the event loop in both modes (the article's
    /// FastAPI code: a sync call inside `async def`).
    CpuInline,
    /// `/mixed?io_ms=&cpu_ms=`: `ioMillis` of waiting then `cpuMillis` of CPU work.
    Mixed,
    /// `/offload?ms=`: `cpuMillis` of work handed to a helper pool (libuv's pool in event-loop mode).
    Offload,
}

impl Route {
    /// The route's path on the server.
    pub fn path(self) -> &'static str {
        match self {
            Route::Hello => "/hello",
            Route::Io => "/io",
            Route::Cpu => "/cpu",
            Route::CpuInline => "/cpu-inline",
            Route::Mixed => "/mixed",
            Route::Offload => "/offload",
        }
    }
}

/// The work each request does.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.route in ['io', 'mixed']) || has(self.ioMillis)").message("required when spec.scenario.route is io or mixed").field_path(".ioMillis"))]
#[x_kube(validation = Rule::new("!(self.route in ['cpu', 'cpu-inline', 'mixed', 'offload']) || has(self.cpuMillis)").message("required when spec.scenario.route is cpu, cpu-inline, mixed or offload").field_path(".cpuMillis"))]
#[x_kube(validation = Rule::new("self.route in ['io', 'mixed'] || !has(self.ioMillis)").message("only allowed when spec.scenario.route is io or mixed").field_path(".ioMillis"))]
#[x_kube(validation = Rule::new("self.route in ['cpu', 'cpu-inline', 'mixed', 'offload'] || !has(self.cpuMillis)").message("only allowed when spec.scenario.route is cpu, cpu-inline, mixed or offload").field_path(".cpuMillis"))]
pub struct ScenarioSpec {
    /// Which route every request calls.
    pub route: Route,
    /// Milliseconds of non-CPU waiting per request (`io`, `mixed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 60_000))]
    pub io_millis: Option<u32>,
    /// Milliseconds of CPU work per request (`cpu`, `cpu-inline`, `mixed`, `offload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 60_000))]
    pub cpu_millis: Option<u32>,
}

impl ScenarioSpec {
    /// Path and query the load generator requests, e.g. `/mixed?io_ms=50&cpu_ms=5`.
    pub fn request_path(&self) -> String {
        let io = self.io_millis.unwrap_or(0);
        let cpu = self.cpu_millis.unwrap_or(0);
        match self.route {
            Route::Hello => "/hello".into(),
            Route::Io => format!("/io?ms={io}"),
            Route::Cpu => format!("/cpu?ms={cpu}"),
            Route::CpuInline => format!("/cpu-inline?ms={cpu}"),
            Route::Mixed => format!("/mixed?io_ms={io}&cpu_ms={cpu}"),
            Route::Offload => format!("/offload?ms={cpu}"),
        }
    }
}

/// The scaling axes.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MatrixSpec {
    /// Worker processes per replica (PM2 `-i N`, `uvicorn --workers N`).
    #[schemars(length(min = 1, max = 16), inner(range(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y == x))").message("values must be unique"))]
    pub processes: Vec<u32>,
    /// Replicas (pods, or local supervisor processes) per step.
    #[schemars(length(min = 1, max = 16), inner(range(min = 1, max = 100)))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y == x))").message("values must be unique"))]
    pub replicas: Vec<u32>,
}

/// Open model: constant arrival rate; closed model: a fixed number of requests in flight.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoadModel {
    /// Constant arrival rate (`rate`), latency measured from the intended send time.
    Open,
    /// `concurrency` requests in flight, each sent when the previous one finished.
    Closed,
}

impl LoadModel {
    /// The load generator's `--model` value.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadModel::Open => "open",
            LoadModel::Closed => "closed",
        }
    }
}

/// How each step is loaded. Rate, concurrency and connections are totals, split evenly over the
/// generators. The load Job's pods share one template, so each runs the same share: rate and
/// concurrency must be multiples of `generators` (connections, a bound rather than the load, are
/// rounded down to a multiple).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.model != 'open' || has(self.rate)").message("required when spec.load.model is open").field_path(".rate"))]
#[x_kube(validation = Rule::new("self.model != 'closed' || has(self.concurrency)").message("required when spec.load.model is closed").field_path(".concurrency"))]
#[x_kube(validation = Rule::new("self.model == 'open' || !has(self.rate)").message("only allowed when spec.load.model is open").field_path(".rate"))]
#[x_kube(validation = Rule::new("self.model == 'closed' || !has(self.concurrency)").message("only allowed when spec.load.model is closed").field_path(".concurrency"))]
#[x_kube(validation = Rule::new("!has(self.concurrency) || self.concurrency % self.generators == 0").message("must be a multiple of spec.load.generators (every load pod keeps the same share, at least 1, in flight; a remainder would be lost)").field_path(".concurrency"))]
#[x_kube(validation = Rule::new("!has(self.rate) || self.rate % self.generators == 0").message("must be a multiple of spec.load.generators (every load pod sends the same share, at least 1 request/s; a remainder would be lost)").field_path(".rate"))]
pub struct LoadSpec {
    /// Open or closed load model.
    pub model: LoadModel,
    /// Open model: total requests per second over all generators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub rate: Option<u32>,
    /// Closed model: total requests in flight over all generators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub concurrency: Option<u32>,
    /// Open model: total connections over all generators (bounds requests in flight; the rest
    /// are counted as dropped). Closed model: ignored (one connection per request in flight).
    #[serde(default = "default_connections")]
    #[schemars(range(min = 1, max = 100_000))]
    pub connections: u32,
    /// Load generator processes (pods) running side by side; their reports are merged exactly.
    #[serde(default = "default_generators")]
    #[schemars(range(min = 1, max = 64))]
    pub generators: u32,
    /// Load before measuring starts; excluded from results.
    #[serde(default = "default_warmup")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub warmup: String,
    /// Measured window of each step.
    #[serde(default = "default_duration")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub duration: String,
    /// Per-request timeout; a timed-out request counts as an error.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub timeout: String,
}

fn default_connections() -> u32 {
    64
}
fn default_generators() -> u32 {
    1
}
fn default_warmup() -> String {
    "5s".into()
}
fn default_duration() -> String {
    "30s".into()
}
fn default_timeout() -> String {
    "5s".into()
}

/// Lifecycle of an Experiment.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Phase {
    /// Accepted, no step started yet.
    #[default]
    Pending,
    /// Steps are being run.
    Running,
    /// Every step ran (individual steps may still have failed under `failurePolicy: continue`).
    Succeeded,
    /// Aborted: a step failed under `failurePolicy: abort`, or the spec could not be planned.
    Failed,
}

impl Phase {
    /// The phase as written to status and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// Where the current step is; written to `.status.currentStep.stage`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Stage {
    /// Replicas are being created and waited for until every one is ready.
    Deploying,
    /// Load generators are running (warm-up, then the measured window).
    Measuring,
    /// The step's result is recorded; its children are being removed and the cooldown runs.
    CoolingDown,
}

impl Stage {
    /// The stage as written to status.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Deploying => "Deploying",
            Stage::Measuring => "Measuring",
            Stage::CoolingDown => "CoolingDown",
        }
    }
}

/// The observed state of an Experiment; also the shape of the local run's `results.json`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default)]
    pub phase: Phase,
    /// Which servers were measured: `emulated` or `reference` (the spec's
    /// `workload.implementation`, repeated so a result file says it next to the numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<Implementation>,
    /// `completed/total`, for the Step printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Steps with a recorded result (succeeded or failed).
    #[serde(default)]
    pub completed_steps: u32,
    /// Steps the plan holds.
    #[serde(default)]
    pub total_steps: u32,
    /// The step in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<CurrentStep>,
    /// One entry per finished step, keyed by (mode, processes, replicas, repetition).
    #[serde(default)]
    pub results: Vec<StepResult>,
    /// Set when a run was interrupted before it finished (local runs: Ctrl-C).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Why the experiment failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard Kubernetes conditions (the operator maintains `Ready`/`Progressing`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Identity of one step: a result is recorded at most once per key.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct StepKey {
    /// Concurrency model.
    pub mode: Mode,
    /// Worker processes per replica.
    pub processes: u32,
    /// Replicas.
    pub replicas: u32,
    /// Repetition, counted from 1.
    pub repetition: u32,
}

impl StepKey {
    /// Total worker processes of the step (processes × replicas): the x axis of the charts.
    pub fn total_processes(&self) -> u32 {
        self.processes * self.replicas
    }
}

impl std::fmt::Display for StepKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} processes={} replicas={} repetition={}",
            self.mode, self.processes, self.replicas, self.repetition
        )
    }
}

/// The step in progress.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentStep {
    /// Position in the plan, counted from 1.
    pub index: u32,
    /// Which configuration and repetition.
    #[serde(flatten)]
    pub key: StepKey,
    /// Deploying, Measuring or CoolingDown.
    pub stage: Stage,
    /// When the step started (RFC 3339); stepTimeout counts from here.
    pub started_at: String,
    /// When the cooldown ends (RFC 3339), once the step reached CoolingDown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_until: Option<String>,
}

/// Outcome of a step.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Outcome {
    /// Load ran and reports were merged.
    Succeeded,
    /// Timed out, never became ready, or produced no report; `reason` says which.
    Failed,
}

/// Latency quantiles in milliseconds, from the merged histogram.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest recorded latency.
    pub max: f64,
}

/// The measured result of one step (merged over its generators).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    /// Which configuration and repetition.
    #[serde(flatten)]
    pub key: StepKey,
    /// Succeeded or Failed.
    pub outcome: Outcome,
    /// Why the step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Successful responses per second over the measured window, summed over generators.
    #[serde(default)]
    pub throughput_rps: f64,
    /// Latency quantiles from the merged histogram (never averaged percentiles).
    #[serde(default)]
    pub latency_ms: LatencyMs,
    /// Requests started in the measured window.
    #[serde(default)]
    pub requests: u64,
    /// Failed requests (connect, timeout, 4xx, 5xx, I/O) / requests.
    #[serde(default)]
    pub error_ratio: f64,
    /// Open model: requests that could not start on time / (requests + dropped).
    #[serde(default)]
    pub dropped_ratio: f64,
    /// throughput / (mean throughput of this mode at 1 process × 1 replica × processes ×
    /// replicas); absent without a successful baseline step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_efficiency: Option<f64>,
    /// Length of the measured window in seconds.
    #[serde(default)]
    pub window_seconds: f64,
    /// Generator reports merged into this result.
    #[serde(default)]
    pub generators: u32,
}

/// OpenAPI formats the API server knows for integers and numbers; schemars also emits `uint32`
/// and friends, which the API server ignores with an "unrecognized format" warning on every apply.
const KNOWN_NUMERIC_FORMATS: [&str; 4] = ["int32", "int64", "float", "double"];

fn drop_unknown_numeric_formats(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(map) => {
            let numeric = matches!(
                map.get("type").and_then(|t| t.as_str()),
                Some("integer" | "number")
            );
            let unknown = map
                .get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| !KNOWN_NUMERIC_FORMATS.contains(&f));
            if numeric && unknown {
                map.remove("format");
            }
            map.values_mut().for_each(drop_unknown_numeric_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_unknown_numeric_formats),
        _ => {}
    }
}

/// The Experiment CRD: kube's derived definition, minus numeric formats the API server does not
/// know (so `kubectl apply` prints no warnings). The one source of the checked-in YAML and of
/// local validation.
pub fn experiment_crd() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(Experiment::crd()).expect("a CRD serializes to JSON");
    drop_unknown_numeric_formats(&mut value);
    serde_json::from_value(value).expect("removing formats keeps a valid CRD")
}

/// The CRD as YAML, exactly what `loopscale crd` prints and `deploy/crd/experiment.yaml` holds.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&experiment_crd()).expect("a CustomResourceDefinition serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_carries_the_printer_columns_short_name_and_status_subresource() {
        let crd = experiment_crd();
        let version = &crd.spec.versions[0];
        assert_eq!(crd.spec.group, "loopscale.dev");
        assert_eq!(version.name, "v1alpha1");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["lsx".to_string()][..])
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Phase", "Step", "Mode", "Processes", "Replicas", "Age"]
        );
    }

    #[test]
    fn the_crd_has_only_numeric_formats_the_api_server_knows() {
        let yaml = crd_yaml();
        assert!(!yaml.contains("uint32") && !yaml.contains("uint64"));
        assert!(
            yaml.contains("format: int64"),
            "known formats stay (conditions' observedGeneration)"
        );
    }

    #[test]
    fn request_path_carries_the_scenario_parameters() {
        let s = ScenarioSpec {
            route: Route::Mixed,
            io_millis: Some(50),
            cpu_millis: Some(5),
        };
        assert_eq!(s.request_path(), "/mixed?io_ms=50&cpu_ms=5");
        let s = ScenarioSpec {
            route: Route::CpuInline,
            io_millis: None,
            cpu_millis: Some(10),
        };
        assert_eq!(s.request_path(), "/cpu-inline?ms=10");
    }
}
