//! A private network namespace for one test: `lo` and a veth pair with
//! 198.18.0.1/24 and 198.18.0.2/24 (the benchmarking range; IPv6 off), so a server on
//! a wildcard address covers those and nothing of the machine's. Named
//! uniquely (`confer-<tag>-<pid>-<n>`) and deleted on drop. Code runs in it
//! through [`NetNs::run`]: a thread that `setns`-es into it, so every socket
//! that thread (and the threads and child processes it starts) opens lives
//! in the namespace. Creation failing is a test failure, never a skip.

use std::sync::atomic::{AtomicUsize, Ordering};

pub const A: &str = "198.18.0.1";
pub const B: &str = "198.18.0.2";

pub struct NetNs {
    pub name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("confer-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        if let Err(e) = ip(&["netns", "add", &name]) {
            panic!("cannot create network namespace {name} (these tests need root and `ip netns`): {e}");
        }
        let ns = NetNs { name };
        let n = ns.name.as_str();
        // IPv6 off before the links exist: else each veth end gets a link-local
        // address a second or two after it comes up (after duplicate address
        // detection), and Chromium aborts page loads on that change
        // (net::ERR_NETWORK_CHANGED).
        let sysctl = std::process::Command::new("ip")
            .args(["netns", "exec", n, "sysctl", "-q", "-w"])
            .args(["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
            .status();
        if !sysctl.as_ref().is_ok_and(|s| s.success()) {
            panic!("cannot turn IPv6 off in network namespace {n}: {sysctl:?}");
        }
        let setup = [
            vec!["-n", n, "link", "set", "lo", "up"],
            vec!["-n", n, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            vec!["-n", n, "addr", "add", "198.18.0.1/24", "dev", "v0"],
            vec!["-n", n, "addr", "add", "198.18.0.2/24", "dev", "v1"],
            vec!["-n", n, "link", "set", "v0", "up"],
            vec!["-n", n, "link", "set", "v1", "up"],
        ];
        for args in setup {
            if let Err(e) = ip(&args) {
                panic!("cannot set up network namespace {n}: {e}");
            }
        }
        ns
    }

    /// Run `f` on a new thread inside the namespace and return what it returns
    /// (a panic in `f` is this call's panic).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        use std::os::fd::AsRawFd;
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        let t = std::thread::spawn(move || {
            // SAFETY: a plain syscall on a valid descriptor; it changes only this thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns into {path}: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        });
        match t.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// [`NetNs::run`] with a tokio runtime (two workers, started in the namespace).
    pub fn block_on<F: std::future::Future + Send + 'static>(&self, fut: F) -> F::Output
    where
        F::Output: Send + 'static,
    {
        self.run(move || {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(fut)
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}
