//! `spec.workload.implementation: reference`: which real framework plays each mode, how the local
//! backend starts it from `workload/reference/`, and how the Kubernetes backend names its image.
//! Pure: the backends do the I/O (spawning, checking files).
use std::path::{Path, PathBuf};

use crate::crd::Mode;

/// Default of `--reference-dir` / `LOOPSCALE_REFERENCE_DIR`, relative to the current directory
/// (the repository root, where `loopscale run` is usually started).
pub const DEFAULT_REFERENCE_DIR: &str = "workload/reference";

/// The command that installs both reference servers into the reference directory.
pub const INSTALL_COMMAND: &str = "workload/reference/install";

/// A real framework that plays one concurrency mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceServer {
    /// Express on Node.js with `cluster` workers: the event-loop mode.
    Express,
    /// FastAPI under `uvicorn --workers`: the thread-pool mode.
    FastApi,
}

/// How the local backend starts a reference server: program and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCommand {
    /// The program (`node`, looked up on `PATH`, or the venv's Python).
    pub program: PathBuf,
    /// Its arguments (the server script).
    pub args: Vec<PathBuf>,
    /// A file that exists once the server's packages are installed.
    pub installed_marker: PathBuf,
}

impl ReferenceServer {
    /// The framework that plays `mode`.
    pub fn for_mode(mode: Mode) -> Self {
        match mode {
            Mode::EventLoop => ReferenceServer::Express,
            Mode::ThreadPool => ReferenceServer::FastApi,
        }
    }

    /// Its folder under the reference directory, and its name in images and messages.
    pub fn name(self) -> &'static str {
        match self {
            ReferenceServer::Express => "express",
            ReferenceServer::FastApi => "fastapi",
        }
    }

    /// How to start it from the reference directory `dir` (`workload/reference`): `node
    /// express/server.js`, or `fastapi/.venv/bin/python fastapi/server.py`.
    pub fn local_command(self, dir: &Path) -> LocalCommand {
        let own = dir.join(self.name());
        match self {
            ReferenceServer::Express => LocalCommand {
                program: "node".into(),
                args: vec![own.join("server.js")],
                installed_marker: own.join("node_modules/express/package.json"),
            },
            ReferenceServer::FastApi => LocalCommand {
                program: own.join(".venv/bin/python"),
                args: vec![own.join("server.py")],
                installed_marker: own.join(".venv/bin/uvicorn"),
            },
        }
    }

    /// Why it cannot start from `dir`, and how to fix that, when its files are missing.
    /// `exists` answers whether a path exists (the caller's I/O).
    pub fn missing(self, dir: &Path, exists: impl Fn(&Path) -> bool) -> Option<String> {
        let cmd = self.local_command(dir);
        let script = &cmd.args[0];
        if !exists(script) {
            return Some(format!(
                "the {} reference server is not in {} ({} is missing); point --reference-dir \
                 (LOOPSCALE_REFERENCE_DIR) at the repository's workload/reference",
                self.name(),
                dir.display(),
                script.display()
            ));
        }
        if !exists(&cmd.installed_marker) {
            return Some(format!(
                "the {} reference server is not installed ({} is missing); install both with \
                 `{INSTALL_COMMAND}` (npm ci and a Python venv, from the registries)",
                self.name(),
                cmd.installed_marker.display()
            ));
        }
        None
    }
}

/// The reference images the Kubernetes backend runs, one per mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceImages {
    /// Image of the Express reference (`workload/reference/express/Dockerfile`).
    pub express: String,
    /// Image of the FastAPI reference (`workload/reference/fastapi/Dockerfile`).
    pub fastapi: String,
}

impl ReferenceImages {
    /// The image that plays `mode`.
    pub fn for_mode(&self, mode: Mode) -> &str {
        match ReferenceServer::for_mode(mode) {
            ReferenceServer::Express => &self.express,
            ReferenceServer::FastApi => &self.fastapi,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn express_plays_event_loop_and_fastapi_thread_pool() {
        assert_eq!(
            ReferenceServer::for_mode(Mode::EventLoop),
            ReferenceServer::Express
        );
        assert_eq!(
            ReferenceServer::for_mode(Mode::ThreadPool),
            ReferenceServer::FastApi
        );
        let images = ReferenceImages {
            express: "e:1".into(),
            fastapi: "f:1".into(),
        };
        assert_eq!(images.for_mode(Mode::EventLoop), "e:1");
        assert_eq!(images.for_mode(Mode::ThreadPool), "f:1");
    }

    #[test]
    fn local_commands_run_the_scripts_of_the_reference_dir() {
        let dir = Path::new("/r");
        let e = ReferenceServer::Express.local_command(dir);
        assert_eq!(e.program, PathBuf::from("node"));
        assert_eq!(e.args, [PathBuf::from("/r/express/server.js")]);
        let f = ReferenceServer::FastApi.local_command(dir);
        assert_eq!(f.program, PathBuf::from("/r/fastapi/.venv/bin/python"));
        assert_eq!(f.args, [PathBuf::from("/r/fastapi/server.py")]);
    }

    #[test]
    fn a_missing_install_says_how_to_install() {
        let dir = Path::new("/r");
        let nothing_installed = |p: &Path| p.ends_with("server.js") || p.ends_with("server.py");
        let why = ReferenceServer::FastApi
            .missing(dir, nothing_installed)
            .unwrap();
        assert!(
            why.contains(INSTALL_COMMAND) && why.contains(".venv/bin/uvicorn"),
            "{why}"
        );
        let why = ReferenceServer::Express.missing(dir, |_| false).unwrap();
        assert!(
            why.contains("--reference-dir") && why.contains("server.js"),
            "{why}"
        );
        assert_eq!(ReferenceServer::Express.missing(dir, |_| true), None);
    }
}
