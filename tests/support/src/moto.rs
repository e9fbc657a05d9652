//! A local moto S3 server for integration tests.
//!
//! ```ignore
//! let Some(moto) = testkit::moto::MotoServer::start_or_skip() else { return };
//! let client = moto.client();
//! moto.create_bucket("images").await;
//! ```
//!
//! - `moto_server` is looked up at `$LOOKALIKE_MOTO_SERVER`, then `<repo>/.venv/bin/moto_server`
//!   (what `scripts/bootstrap-venv.sh` installs), then on `PATH`.
//! - When it cannot be found, `start_or_skip` prints `SKIPPED: ...` and returns `None`, unless
//!   `LOOKALIKE_REQUIRE_MOTO=1` (set by `scripts/test.sh`, so CI never skips silently): then it
//!   panics.
//! - Each server listens on its own free port on 127.0.0.1, runs in its own process group and is
//!   killed (with anything it started) when the `MotoServer` is dropped, or when the test process
//!   dies (`PR_SET_PDEATHSIG` from a spawner thread that lives as long as the process).
//! - `client()` carries its own endpoint, region and static credentials: tests never depend on
//!   process-wide environment variables, so they can run in parallel threads.
//! - `MotoServer::shared()` is one server per test binary, for tests that only need isolated
//!   buckets (use `unique_bucket`).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto server; killed on drop.
pub struct MotoServer {
    child: Option<Child>,
    port: u16,
    /// Serves HTTPS on `https://localhost:PORT` ([`MotoServer::start_tls`]).
    tls: bool,
    _log_dir: tempfile::TempDir,
}

impl std::fmt::Debug for MotoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MotoServer")
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

/// Where `moto_server` is, if anywhere.
pub fn find_moto_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOOKALIKE_MOTO_SERVER") {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Some(p);
        }
        panic!(
            "LOOKALIKE_MOTO_SERVER={} is not an executable file",
            p.display()
        );
    }
    let venv = crate::repo_root().join(".venv/bin/moto_server");
    if is_executable(&venv) {
        return Some(venv);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("moto_server"))
        .find(|p| is_executable(p))
}

/// [`find_moto_server`], or the error that says how to install it.
fn moto_exe() -> Result<PathBuf, String> {
    find_moto_server().ok_or_else(|| "moto_server not found; run scripts/test.sh".to_string())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn moto_required() -> bool {
    matches!(
        std::env::var("LOOKALIKE_REQUIRE_MOTO").as_deref(),
        Ok("1" | "true" | "yes")
    )
}

impl MotoServer {
    /// Start a server; `Err` with a reason when `moto_server` is not installed or fails to start.
    pub fn start() -> Result<MotoServer, String> {
        Self::start_with(None)
    }

    /// Start a server that speaks HTTPS only, with the certificate and key from
    /// [`self_signed_cert`]: its [`endpoint`](Self::endpoint) is `https://localhost:PORT`.
    pub fn start_tls(cert: &Path, key: &Path) -> Result<MotoServer, String> {
        Self::start_with(Some((cert, key)))
    }

    /// [`start_tls`](Self::start_tls) with a new certificate written to `dir`, returned with the
    /// server; or, like [`start_or_skip`](Self::start_or_skip), `None` after printing
    /// `SKIPPED: ...` when moto is not installed (a panic when `LOOKALIKE_REQUIRE_MOTO=1`).
    pub fn start_tls_or_skip(dir: &Path) -> Option<(MotoServer, PathBuf)> {
        if find_moto_server().is_none() && !moto_required() {
            println!("SKIPPED: moto_server not found; run scripts/test.sh");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let (cert, key) = self_signed_cert(dir).unwrap_or_else(|e| panic!("{e}"));
        let server = Self::start_tls(&cert, &key).unwrap_or_else(|e| panic!("{e}"));
        Some((server, cert))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> Result<MotoServer, String> {
        let exe = moto_exe()?;
        let mut last_err = String::new();
        // A free port can be taken by someone else between probing and moto's bind: retry.
        for _ in 0..3 {
            match Self::start_once(&exe, tls) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Start a server, or print `SKIPPED: ...` and return `None` when moto is not installed
    /// (panics instead when `LOOKALIKE_REQUIRE_MOTO=1`, or when an installed moto fails to start).
    pub fn start_or_skip() -> Option<MotoServer> {
        if find_moto_server().is_none() {
            if moto_required() {
                panic!("moto_server not found but LOOKALIKE_REQUIRE_MOTO is set; run scripts/bootstrap-venv.sh");
            }
            println!("SKIPPED: moto_server not found; run scripts/test.sh");
            return None;
        }
        Some(Self::start().unwrap_or_else(|e| panic!("{e}")))
    }

    /// One server shared by all tests of this test binary (started on first use, killed when the
    /// process exits). `None` (after printing `SKIPPED: ...`) when moto is not installed.
    pub fn shared() -> Option<&'static MotoServer> {
        static SHARED: OnceLock<Option<MotoServer>> = OnceLock::new();
        let server = SHARED
            .get_or_init(|| {
                let found = find_moto_server().is_some();
                (found || moto_required()).then(|| Self::start().unwrap_or_else(|e| panic!("{e}")))
            })
            .as_ref();
        if server.is_none() {
            println!("SKIPPED: moto_server not found; run scripts/test.sh");
        }
        server
    }

    fn start_once(exe: &Path, tls: Option<(&Path, &Path)>) -> Result<MotoServer, String> {
        let port = free_port().map_err(|e| format!("no free loopback port: {e}"))?;
        let log_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log_path = log_dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut cmd = serialized_command(exe);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((cert, key)) = tls {
            cmd.arg("--ssl-cert").arg(cert).arg("--ssl-key").arg(key);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .env_remove("AWS_ENDPOINT_URL")
            .process_group(0);
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() == 1 {
                    libc::_exit(1); // the test process is already gone
                }
                Ok(())
            });
        }
        let child = spawn_from_long_lived_thread(cmd)
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let mut server = MotoServer {
            child: Some(child),
            port,
            tls: tls.is_some(),
            _log_dir: log_dir,
        };

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                server.child = None;
                return Err(format!(
                    "moto_server exited during startup ({status}) on port {port}:\n{}",
                    read_tail(&log_path)
                ));
            }
            // A TLS server is ready once it accepts connections (the probe speaks plain HTTP).
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && (server.tls || http_ok(addr))
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moto_server did not answer on {addr} within {STARTUP_TIMEOUT:?}:\n{}",
                    read_tail(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` for a TLS server: the name its
    /// certificate is for).
    pub fn endpoint(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    /// A client for this server: path-style, us-east-1, static test credentials.
    pub fn client(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(self.s3_config())
    }

    /// The client configuration (to derive variants, e.g. other timeouts).
    pub fn s3_config(&self) -> aws_sdk_s3::Config {
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(lookalike::sdk::http_client())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials())
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .build()
    }

    /// An SQS client for this server (moto serves SQS beside S3 on the same port).
    pub fn sqs_client(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
                .http_client(lookalike::sdk::http_client())
                .region(Region::new("us-east-1"))
                .credentials_provider(credentials())
                .endpoint_url(self.endpoint())
                .build(),
        )
    }

    /// Create queue `name` (a unique name is the caller's business): messages are hidden for
    /// `visibility_secs` once received and, with `dead_letter` (its URL), moved there after
    /// `max_receives` receives. Returns the queue's URL (panics on failure).
    pub async fn create_queue(
        &self,
        name: &str,
        visibility_secs: u32,
        dead_letter: Option<(&str, u32)>,
    ) -> String {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let client = self.sqs_client();
        let mut req = client
            .create_queue()
            .queue_name(name)
            .attributes(A::VisibilityTimeout, visibility_secs.to_string());
        if let Some((dlq_url, max_receives)) = dead_letter {
            let arn = client
                .get_queue_attributes()
                .queue_url(dlq_url)
                .attribute_names(A::QueueArn)
                .send()
                .await
                .unwrap_or_else(|e| panic!("queue arn of {dlq_url}: {e:?}"))
                .attributes()
                .and_then(|a| a.get(&A::QueueArn).cloned())
                .expect("a queue ARN");
            req = req.attributes(
                A::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives.to_string()})
                    .to_string(),
            );
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("create queue {name}: {e:?}"))
            .queue_url()
            .expect("a queue URL")
            .to_string()
    }

    /// Environment variables that point the standard AWS config chain at this server (for child
    /// processes such as the CLI; never set them on the test process itself).
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Create bucket `name` (panics on failure).
    pub async fn create_bucket(&self, name: &str) {
        self.client()
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "create bucket {name}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child leads its own process group: kill the whole group.
            // SAFETY: plain syscall on a pid we own.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// moto checks `If-Match` / `If-None-Match` and then stores the object in separate steps, and its
/// server handles requests in parallel threads: two conditional PUTs with the same etag can both
/// pass the check, and one update is lost (seen here about once in ten runs of 8 racing writers).
/// Real S3 makes the check and the write one atomic step. To give the tests S3's semantics, moto
/// is started through its own Python with the WSGI application wrapped in a lock, so requests are
/// handled one at a time (the GIL serialises them anyway, so this costs little).
const SERIALIZED_MOTO: &str = r#"
import sys, threading
from moto.moto_server import werkzeug_app
from moto.server import main
_lock = threading.Lock()
_call = werkzeug_app.DomainDispatcherApplication.__call__
def _serialized(self, environ, start_response):
    with _lock:
        return _call(self, environ, start_response)
werkzeug_app.DomainDispatcherApplication.__call__ = _serialized
sys.argv[0] = "moto_server"
sys.exit(main())
"#;

/// Writes a self-signed certificate for `localhost` (RSA 2048, SHA-256, 1 day).
const SELF_SIGNED_CERT: &str = r#"
import sys, datetime
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
    .public_key(key.public_key()).serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    .sign(key, hashes.SHA256()))
open(sys.argv[1], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
open(sys.argv[2], "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
"#;

/// A new self-signed certificate for `localhost` and its key, as PEM files `cert.pem` and
/// `key.pem` in `dir`, made by `moto_server`'s own Python (moto depends on `cryptography`).
pub fn self_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let exe = moto_exe()?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut cmd =
        python_command(&exe).ok_or_else(|| format!("{} is not a Python script", exe.display()))?;
    let out = cmd
        .arg("-c")
        .arg(SELF_SIGNED_CERT)
        .arg(&cert)
        .arg(&key)
        .output()
        .map_err(|e| format!("cannot run moto's Python: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "making a certificate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((cert, key))
}

/// `moto_server`'s own interpreter, found through the script's shebang line
/// (`#!/path/to/python` or `#!/usr/bin/env python3`); `None` if it is no Python script.
fn python_command(exe: &Path) -> Option<Command> {
    let shebang = std::fs::File::open(exe).ok().and_then(|f| {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(f).take(512), &mut line).ok()?;
        line.strip_prefix("#!").map(|l| l.trim().to_string())
    })?;
    let parts: Vec<&str> = shebang.split_whitespace().collect();
    let (program, args) = parts.split_first()?;
    parts.iter().any(|p| p.contains("python")).then(|| {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    })
}

/// `moto_server`'s own interpreter running [`SERIALIZED_MOTO`]; `exe` itself if it is no Python
/// script.
fn serialized_command(exe: &Path) -> Command {
    match python_command(exe) {
        Some(mut cmd) => {
            cmd.arg("-c").arg(SERIALIZED_MOTO);
            cmd
        }
        None => Command::new(exe),
    }
}

/// A client for a loopback port that nothing listens on (retries disabled): every request fails
/// at once with a connection error, as when S3 cannot be reached.
pub fn unreachable_client() -> aws_sdk_s3::Client {
    let port = free_port().unwrap();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(lookalike::sdk::http_client())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("t", "t", None, None, "t"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A bucket name that is unique within this test run (pid + counter).
pub fn unique_bucket(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id()).to_ascii_lowercase()
}

/// The static test credentials every moto client uses.
fn credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "moto-test")
}

/// A loopback port that nothing listens on (at the time of asking).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Minimal HTTP/1.0 GET against 127.0.0.1:port: (status, body).
pub fn http_get(port: u16, path_and_query: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP header end");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, resp[split + 4..].to_vec())
}

/// Is there an HTTP server (rather than some other listener) on `addr`?
fn http_ok(addr: SocketAddr) -> bool {
    use std::io::Write;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

fn read_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawn `cmd` from a thread that lives as long as the process, so that `PR_SET_PDEATHSIG`
/// (which fires when the *thread* that forked exits) means "when the test process dies".
fn spawn_from_long_lived_thread(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("moto-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static: never reached; park just in case.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the moto spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap()
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?
}
