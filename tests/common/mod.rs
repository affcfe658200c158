//! Shared test helpers: start the real `tee-risk` binary on a loopback port, load the dev
//! embeddings.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tee_risk::dataset::Dataset;
use tee_risk::server::LISTENING_PREFIX;

pub const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// The development embeddings (never the holdout file).
pub fn dev_dataset() -> Dataset {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/faces/lfw_dlib128_dev.json");
    Dataset::load(&path).expect("../shared/data/faces/lfw_dlib128_dev.json is readable")
}

pub struct TestServer {
    child: Option<Child>,
    pub url: String,
    pub stderr_log: PathBuf,
}

/// A server process; stopped with SIGTERM (or killed) when dropped.
impl TestServer {
    pub fn start(
        data_dir: &Path,
        keys_dir: &Path,
        master_key: Option<&str>,
        extra: &[&str],
    ) -> Self {
        Self::try_start(data_dir, keys_dir, master_key, extra)
            .unwrap_or_else(|(status, log)| panic!("server did not start ({status:?}):\n{log}"))
    }

    /// Starts the server; on failure returns its exit status and stderr.
    pub fn try_start(
        data_dir: &Path,
        keys_dir: &Path,
        master_key: Option<&str>,
        extra: &[&str],
    ) -> Result<Self, (Option<ExitStatus>, String)> {
        Self::try_start_env(data_dir, keys_dir, master_key, extra, &[])
    }

    /// [`TestServer::try_start`] with more environment variables.
    pub fn try_start_env(
        data_dir: &Path,
        keys_dir: &Path,
        master_key: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, (Option<ExitStatus>, String)> {
        let stderr_log = data_dir.with_extension(format!(
            "{}.stderr.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut command = Command::new(env!("CARGO_BIN_EXE_tee-risk"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--keys-dir")
            .arg(keys_dir)
            .args(extra)
            .env_remove("DB_MASTER_KEY")
            .env_remove("TEE_RISK_DEV")
            .env_remove("TEE_RISK_CONFIG")
            .env_remove("DB_MASTER_KEY_PREVIOUS")
            .env_remove("TEE_RISK_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        if let Some(key) = master_key {
            command.env("DB_MASTER_KEY", key);
        }
        let mut child = command.spawn().expect("spawn tee-risk");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = rx.try_recv() {
                return Ok(Self {
                    child: Some(child),
                    url: format!("http://{addr}"),
                    stderr_log,
                });
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err((
                    Some(status),
                    std::fs::read_to_string(&stderr_log).unwrap_or_default(),
                ));
            }
            if Instant::now() > deadline {
                child.kill().ok();
                return Err((
                    None,
                    std::fs::read_to_string(&stderr_log).unwrap_or_default(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        terminate(&mut child)
    }

    /// SIGKILL: no drain, no final flush, as in a crash.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

fn terminate(child: &mut Child) -> ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}
