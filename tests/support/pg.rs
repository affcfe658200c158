//! A throw-away PostgreSQL cluster for tests: `initdb` into a fresh folder, the server on a
//! free loopback port, one database per test. Real PostgreSQL (Debian's `postgresql`
//! package; `.ci/run` installs it), never a mock. PostgreSQL refuses to run as root, so as
//! root the folder belongs to the `postgres` user and the programs run as that user.
//!
//! One cluster per test binary ([`shared`]); a watchdog beside the server stops it and
//! removes its folder when the test process is gone, since statics are never dropped.
//! If PostgreSQL cannot start, the test fails: it is never skipped.
//!
//! Included by the library's tests (`src/store/mod.rs`) and the integration tests
//! (`tests/support/mod.rs`) with `#[path]`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running cluster.
pub struct PgCluster {
    /// Its data folder (and socket folder).
    pub dir: PathBuf,
    /// Its TLS files: `ca.pem` (a test CA), and the server's certificate, for `localhost`
    /// only, and key.
    pub tls: PathBuf,
    pub port: u16,
    bin: PathBuf,
    databases: AtomicUsize,
}

/// The cluster of this test binary, started on first use.
pub fn shared() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(PgCluster::start)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The folder of PostgreSQL's server programs (`initdb`, `postgres`, `pg_ctl`).
fn bin_dir() -> PathBuf {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .map(|v| v.join("bin"))
        .filter(|b| b.join("initdb").exists())
        .expect(
            "PostgreSQL's server programs (initdb) are needed: apt-get install postgresql \
             (.ci/run does)",
        )
}

/// `program args…` as the user that owns the cluster; panics with its output on failure.
fn run_as_owner(program: &Path, args: &[&str]) -> String {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let output = command
        .args(args)
        .env_remove("PGDATA")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{text}",
        program.display()
    );
    text
}

/// A test CA and a server certificate for `localhost` (EC P-256, two days), made by the
/// openssl command into `dir`; the key readable by the server's user only.
fn make_test_ca(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command is needed (apt-get install openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let run = |line: String| openssl(&line.split(' ').collect::<Vec<_>>());
    run(format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=tee-risk-test-CA"
    ));
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(format!(
        "req {ec} -keyout server.key -out server.csr -subj /CN=localhost"
    ));
    run(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile server.ext -out server.pem"
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    );
    std::fs::set_permissions(
        dir.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "chown the TLS folder to postgres");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// `initdb`, then the server, waiting until it accepts connections.
    pub fn start() -> PgCluster {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "tee-risk-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown the cluster folder to postgres");
        }
        let tls = dir.with_extension("tls");
        make_test_ca(&tls);
        let data = dir.to_str().unwrap().to_owned();
        run_as_owner(
            &bin.join("initdb"),
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        let cluster = PgCluster {
            dir,
            tls,
            port: free_port(),
            bin,
            databases: AtomicUsize::new(0),
        };
        cluster.start_server();
        cluster
    }

    /// Starts the server on the cluster's folder and port (again after [`Self::stop`]),
    /// with a watchdog that stops it once this test process is gone.
    pub fn start_server(&self) {
        let data = self.dir.to_str().unwrap();
        let postgres = self.bin.join("postgres");
        // fsync on: the durability the tests check is PostgreSQL's real one. TLS on, with
        // the test CA's certificate for `localhost`: the tests connect with verify-full.
        let tls = self.tls.to_str().unwrap();
        let server = format!(
            "{} -D {data} -p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=on \
             -c max_connections=200 -c shared_buffers=32MB -c ssl=on \
             -c ssl_cert_file={tls}/server.pem -c ssl_key_file={tls}/server.key",
            postgres.display(),
            self.port
        );
        let parent = std::process::id();
        let script = format!(
            "{server} >> {data}/server.log 2>&1 & pg=$!; \
             while [ -d /proc/{parent} ] && [ -d /proc/$pg ]; do sleep 0.5; done; \
             if [ ! -d /proc/{parent} ]; then kill -QUIT $pg 2>/dev/null; sleep 1; rm -rf {data} {tls}; fi"
        );
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        let mut watchdog = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        // Reaped when it ends (the server stopped, or this process is gone).
        std::thread::spawn(move || watchdog.wait());
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || !self.accepts_queries()
        {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start:\n{}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn accepts_queries(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the server at once (`immediate`: as a crash would), keeping its data.
    pub fn stop(&self) {
        run_as_owner(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.dir.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// A new, empty database; its URL.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        run_as_owner(
            &self.bin.join("createdb"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &name,
            ],
        );
        self.url(&name)
    }

    /// The database's URL as the service gets it: TLS, the server authenticated by the test
    /// CA and its name (`localhost`).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{database}?sslmode=verify-full&sslrootcert={}",
            self.port,
            self.tls.join("ca.pem").display()
        )
    }

    /// `pg_dump` of a database, as text.
    pub fn dump(&self, url: &str) -> String {
        run_as_owner(&self.bin.join("pg_dump"), &["--data-only", url])
    }
}
