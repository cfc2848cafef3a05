//! A real `redis-server` per test: a free loopback port, its own temp dir,
//! the AOF on with `appendfsync everysec` (what SPEC 13 asks of production),
//! no RDB snapshots; stopped by PID when dropped. A missing `redis-server`
//! fails the test, naming scripts/setup-test-deps.sh.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer { child: None, port: 0, dir: tempfile::tempdir().unwrap() };
        // A port that was free a moment ago; another process may take it
        // first, so a server that does not come up gets another one.
        for _ in 0..5 {
            r.port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start on any of 5 free ports:\n{}", r.log());
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kill -9`: Redis gets no chance to write anything more.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and dir, so it loads its AOF.
    pub fn restart(&mut self) {
        self.kill9();
        assert!(self.spawn(), "redis-server did not come back on port {}:\n{}", self.port, self.log());
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Start redis-server; true once it answers PING within 10 s.
    fn spawn(&mut self) -> bool {
        let bin = super::tool("redis-server");
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""])
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!("redis-server on port {} exited ({st}):\n{}", self.port, self.log());
                self.child = None;
                return false;
            }
            if ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether a Redis on `port` answers `PING` with `+PONG` (not `-LOADING`).
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}
