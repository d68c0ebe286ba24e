//! Shared test harness: real Redis and SecantusDB (MongoDB-compatible) servers, unique names.
//!
//! Include from an integration test binary with `mod support;`.
//!
//! Servers are real processes on free loopback ports. [`shared_redis`] and [`shared_mongo`]
//! start one server per test binary (per process: under nextest that is per test) and every
//! test isolates itself with [`unique_name`] — a key prefix or a database name — instead of
//! flushing a shared server.
//!
//! Statics are never dropped, so every child is spawned with `PR_SET_PDEATHSIG`: the kernel
//! signals it when its parent dies. That signal fires when the *thread* that forked the child
//! exits, not the process, so all children are forked by one dedicated spawner thread that lives
//! as long as the test process.
//!
//! A missing server binary panics with a pointer to `./scripts/test.sh`: tests never skip
//! silently.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server may take to answer after it was spawned.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between readiness probes while a server starts.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How many fresh ports to try when a server dies at start-up (another process may grab the
/// port between our probe and the server's bind).
const START_ATTEMPTS: usize = 3;

/// A name unique to this call: `{prefix}_{pid}_{counter}_{random}`, safe as a Redis key
/// prefix and as a MongoDB database name (≤ 63 bytes for prefixes up to 30 bytes).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let clean: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(30)
        .collect();
    format!(
        "{clean}_{}_{n}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// A fresh empty directory under the system temp dir (not removed automatically).
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns true or `timeout` elapses.
pub fn wait_until(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A server process owned by the test; terminated on drop.
struct ServerProcess {
    child: Child,
    /// The tail of the server's stdout and stderr, for failure messages.
    output: Arc<Mutex<String>>,
    what: &'static str,
}

impl ServerProcess {
    /// Spawns `command` (stdout/stderr captured) from the spawner thread.
    fn spawn(what: &'static str, mut command: Command, program_hint: &str) -> Self {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match spawn_with_parent_death_signal(command) {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
                "{what} binary not found ({program_hint}): run ./scripts/test.sh, which installs \
                 it and sets the path"
            ),
            Err(err) => panic!("cannot start {what} ({program_hint}): {err}"),
        };
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            std::thread::spawn(move || drain_into(stream, &output));
        }
        Self {
            child,
            output,
            what,
        }
    }

    /// `None` while running, the exit description once it stopped.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(err) => Some(err.to_string()),
        }
    }

    fn output_tail(&self) -> String {
        self.output.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `addr` accepts connections and `ready` (given a connected stream) agrees.
    /// `Err` carries the reason when the process died or the deadline passed.
    fn wait_ready(
        &mut self,
        addr: SocketAddr,
        ready: impl Fn(TcpStream) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited during start-up ({status}); output:\n{}",
                    self.what,
                    self.output_tail()
                ));
            }
            if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                if ready(stream) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not answer on {addr} within {STARTUP_TIMEOUT:?}; output:\n{}",
                    self.what,
                    self.output_tail()
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGTERM first: SecantusDB removes its `:memory:` temp directory on a clean stop,
        // which takes it about 2 s (more on a loaded machine); SIGKILL only as a last resort.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall on a pid we own and have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let stopped = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn drain_into(mut stream: Box<dyn Read + Send>, output: &Mutex<String>) {
    const KEEP: usize = 16 * 1024;
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
        if out.len() > KEEP {
            let mut cut = out.len() - KEEP;
            while !out.is_char_boundary(cut) {
                cut += 1;
            }
            out.drain(..cut);
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Forks `command` from the long-lived spawner thread with `PR_SET_PDEATHSIG = SIGTERM`, so the
/// child is terminated when the test process exits, even if nothing drops its handle.
fn spawn_with_parent_death_signal(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-server-spawner".into())
            .spawn(move || {
                // Never returns while the process lives: its exit is the children's death signal.
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let parent = std::process::id();
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply_tx))
        .expect("spawner thread alive");
    reply_rx.recv().expect("spawner thread replied")
}

/// Starts `what` on fresh ports until one attempt comes up, retrying when the server died at
/// start-up (typically: the port was taken between our probe and its bind).
fn start_on_free_port(
    what: &'static str,
    program_hint: &str,
    command_for: impl Fn(u16) -> Command,
    ready: impl Fn(TcpStream) -> bool + Copy,
) -> (ServerProcess, u16) {
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        let mut process = ServerProcess::spawn(what, command_for(port), program_hint);
        match process.wait_ready(SocketAddr::from(([127, 0, 0, 1], port)), ready) {
            Ok(()) => return (process, port),
            Err(reason) => failures.push(reason),
        }
    }
    panic!(
        "{what} failed to start {START_ATTEMPTS} times:\n{}",
        failures.join("\n---\n")
    );
}

/// A `redis-server` on a free loopback port, with persistence disabled. Killed on drop.
pub struct RedisServer {
    process: ServerProcess,
    port: u16,
}

impl RedisServer {
    /// Spawns `redis-server` (`$MCPD_TEST_REDIS_SERVER`, else from `PATH`) and waits until it
    /// answers PING.
    pub fn start() -> Self {
        let program =
            std::env::var("MCPD_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        // Persistence is off, so nothing is written there; it only keeps redis-server away
        // from the repository.
        let workdir = std::env::temp_dir();
        let (process, port) = start_on_free_port(
            "redis-server",
            &program,
            |port| {
                let mut command = Command::new(&program);
                command
                    .args(["--port", &port.to_string()])
                    .args(["--bind", "127.0.0.1"])
                    .args(["--save", ""])
                    .args(["--appendonly", "no"])
                    .args(["--loglevel", "warning"])
                    .current_dir(&workdir);
                command
            },
            redis_answers_ping,
        );
        Self { process, port }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.exited().is_none()
    }
}

/// Sends a RESP `PING` on `stream` and checks for `+PONG`.
pub fn redis_answers_ping(mut stream: TcpStream) -> bool {
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// The Redis server shared by every test of this test binary (process).
pub fn shared_redis() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start)
}

/// A SecantusDB server (MongoDB wire protocol), or an external MongoDB from
/// `$MCPD_TEST_MONGODB_URL`. A spawned server is terminated on drop.
pub struct MongoServer {
    process: Option<ServerProcess>,
    url: String,
}

impl MongoServer {
    /// Uses `$MCPD_TEST_MONGODB_URL` when set; otherwise spawns `secantusd-py`
    /// (`$MCPD_TEST_SECANTUSD`, else from `PATH`) in-memory on a free port and waits until it
    /// accepts connections.
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("MCPD_TEST_MONGODB_URL") {
            return Self { process: None, url };
        }
        let program =
            std::env::var("MCPD_TEST_SECANTUSD").unwrap_or_else(|_| "secantusd-py".into());
        // An explicit (empty) config file disables secantusd's auto-discovery of
        // ./secantusd.toml, ~/.secantus/… and /etc/secantus/…: tests must not depend on them.
        let config = std::env::temp_dir().join("mcpd-test-secantusd-empty.toml");
        if !config.exists() {
            std::fs::write(&config, "# intentionally empty: use built-in defaults\n")
                .expect("write empty secantusd config");
        }
        let (process, port) = start_on_free_port(
            "secantusd-py",
            &program,
            |port| {
                let mut command = Command::new(&program);
                command
                    .arg("--config")
                    .arg(&config)
                    .args(["--host", "127.0.0.1"])
                    .args(["--port", &port.to_string()])
                    .args(["--storage-path", ":memory:"])
                    .args(["--log-level", "WARNING"]);
                command
            },
            |_stream| true,
        );
        Self {
            process: Some(process),
            url: format!("mongodb://127.0.0.1:{port}/?replicaSet=secantus"),
        }
    }

    /// The connection string: `mongodb://127.0.0.1:PORT/?replicaSet=secantus` for a spawned
    /// server (it advertises itself as the primary of the single-node replica set `secantus`,
    /// which is what lets the driver use sessions and transactions).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this handle spawned the server (false for `$MCPD_TEST_MONGODB_URL`).
    pub fn is_spawned(&self) -> bool {
        self.process.is_some()
    }
}

/// The MongoDB-compatible server shared by every test of this test binary (process).
pub fn shared_mongo() -> &'static MongoServer {
    static SHARED: OnceLock<MongoServer> = OnceLock::new();
    SHARED.get_or_init(MongoServer::start)
}
