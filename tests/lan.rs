//! `confer serve --dev --lan` (issue 15 item 2), inside a network namespace
//! of the test's own (tests/common/netns.rs: 198.18.0.1 and 198.18.0.2 on a
//! veth pair, nothing of the machine's): HTTP, media and TURN listen on every
//! interface, HTTPS is on with a self-signed certificate naming every
//! interface address, the https:// address to open is printed, and headless
//! Chromium at that address joins a room and decodes video from a second
//! context (tests/browser/lan.js).

mod common;

use common::netns::{NetNs, A, B};
use common::{parse_listening, SECRET};
use std::io::BufRead;
use std::process::{Command, Stdio};

#[test]
fn lan_mode_serves_a_browser_call_at_the_printed_https_address() {
    let _slot = common::heavy_slot();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/lan.js");
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules/playwright-core");
    assert!(std::path::Path::new(modules).exists(), "playwright-core is missing: run scripts/setup-test-deps.sh");
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "chromium is missing: run scripts/setup-test-deps.sh");
    let ns = NetNs::new("lan");
    ns.run(move || {
        // The certificate goes to ./certs: the working directory is a temporary one.
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_confer"))
            .args(["serve", "--dev", "--lan", "--data"])
            .arg(dir.path().join("data"))
            .current_dir(dir.path())
            .env("CONFER_AUTH_SECRET", SECRET)
            // --lan keeps the ports and takes every interface: any free ones here.
            .env("CONFER_HTTP_LISTEN", "127.0.0.1:0")
            .env("CONFER_MEDIA_LISTEN", "127.0.0.1:0")
            .env("CONFER_MEDIA_WORKERS", "1")
            .env("CONFER_TURN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", std::env::var("CHILD_RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn confer");
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let _child = Kill(child);
        let (mut listening, mut open) = (String::new(), String::new());
        stdout.read_line(&mut listening).unwrap();
        stdout.read_line(&mut open).unwrap();
        println!("{}{}", listening, open);
        for key in ["http", "media", "turn"] {
            let a = parse_listening(&listening, key).unwrap_or_else(|| panic!("no {key}= in {listening:?}"));
            assert!(a.ip().is_unspecified(), "{key} on every interface: {listening}");
        }
        let http = parse_listening(&listening, "http").unwrap();
        let url = open
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no https:// address printed: {open:?}"))
            .to_owned();
        assert!(
            [A, B].iter().any(|ip| url == format!("https://{ip}:{}/", http.port())),
            "an interface address, not loopback: {url}"
        );
        let names = std::fs::read_to_string(dir.path().join("certs/confer-dev.names")).unwrap();
        assert!(names.lines().any(|l| l == A) && names.lines().any(|l| l == B), "certificate names: {names}");

        let out = Command::new("node").arg(script).arg(&url).output().expect("node runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "browser call at {url} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        println!("{summary}");
        assert_eq!(summary["secure"][0], true, "a secure context, so getUserMedia works: {summary}");
        assert_eq!(summary["secure"][1], "https:");
    });
}
