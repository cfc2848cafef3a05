//! The binary as an operator meets it: `--help`, config errors, env and flag
//! precedence, the `listening` line, and `confer token` (SPEC 1).

mod common;

use std::process::Command;

fn confer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_confer"))
}

#[test]
fn help_explains_every_flag() {
    let out = confer().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--dev", "--http", "--data", "--log-json"] {
        assert!(text.contains(flag), "serve --help lacks {flag}:\n{text}");
    }
    let out = confer().args(["token", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--user", "--name", "--ttl", "--admin", "--room"] {
        assert!(text.contains(flag), "token --help lacks {flag}:\n{text}");
    }
}

#[test]
fn help_lists_the_environment_variables() {
    for args in [&["--help"][..], &["serve", "--help"]] {
        let out = confer().args(args).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        // How a name maps onto the config, with an example, and every section's variables.
        for want in [
            "CONFER_<SECTION>_<KEY>",
            "CONFER_HTTP_LISTEN=0.0.0.0:8080",
            "CONFER_HTTP_CORS_ORIGINS",
            "CONFER_AUTH_SECRET",
            "CONFER_MEDIA_PUBLIC_IP",
            "CONFER_TURN_TLS_LISTEN",
            "CONFER_STORE_PATH",
            "CONFER_CALLS_RING_TIMEOUT",
            "CONFER_ROOMS_MAX_PARTICIPANTS",
            "CONFER_WS_IDLE_TIMEOUT",
            "CONFER_METRICS_TOKEN",
            "CONFER_LOG_LEVEL",
            "RUST_LOG",
        ] {
            assert!(text.contains(want), "confer {args:?} lacks {want}:\n{text}");
        }
    }
}

#[test]
fn orchestrator_variables_are_ignored_with_a_warning_naming_them() {
    use std::io::{BufRead, Read};
    let dir = tempfile::tempdir().unwrap();
    // What a Kubernetes Service named `confer` puts in every pod's environment.
    let k8s = [
        ("CONFER_PORT", "tcp://10.96.7.13:8080"),
        ("CONFER_SERVICE_HOST", "10.96.7.13"),
        ("CONFER_SERVICE_PORT_HTTP", "8080"),
        ("CONFER_PORT_8080_TCP_ADDR", "10.96.7.13"),
    ];
    let mut child = confer()
        .args(["serve", "--http", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("CONFER_AUTH_SECRET", common::SECRET)
        .env("CONFER_MEDIA_LISTEN", "127.0.0.1:0")
        .env("CONFER_TURN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .envs(k8s)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(common::parse_listening(&line, "http").is_some(), "the server did not start: {line:?}\n{err}");
    // One warning at start, naming each variable.
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("CONFER_SERVICE_HOST")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    for (k, _) in k8s {
        assert!(warnings[0].contains(k) && warnings[0].contains("WARN"), "{k}:\n{err}");
    }
    assert!(!err.contains("10.96.7.13"), "a value was logged:\n{err}");
}

#[test]
fn unknown_config_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[calls]\nring_timeot = \"5s\"\n").unwrap();
    let out = confer().args(["serve", "--config"]).arg(&cfg).arg("--data").arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ring_timeot"), "{err}");

    let out =
        confer().args(["serve", "--data"]).arg(dir.path()).env("CONFER_HTTP_LISTN", "127.0.0.1:0").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listn"));

    let out = confer().args(["serve", "--config", "/no/such/file.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.toml"));
}

#[tokio::test]
async fn flags_beat_env_beat_file_and_the_token_command_works() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    // The file says port 1 (would fail), env says another fixed port, the flag says 0.
    std::fs::write(&cfg, "[http]\nlisten = \"127.0.0.1:1\"\n[calls]\nring_timeout = \"1s\"\n").unwrap();
    let data = dir.path().join("data");
    let mut child = confer()
        .args(["serve", "--http", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(&data)
        .env("CONFER_HTTP_LISTEN", "127.0.0.1:2")
        .env("CONFER_MEDIA_LISTEN", "127.0.0.1:0")
        .env("CONFER_TURN_LISTEN", "127.0.0.1:0")
        .env("CONFER_CALLS_RING_TIMEOUT", "2s")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let addr = common::parse_listening(&line, "http").unwrap_or_else(|| panic!("{line}"));
    assert_ne!(addr.port(), 0);
    assert!(line.contains(" media=") && line.contains(" turn="), "{line}");

    // `confer token` uses the generated secret in the same data dir.
    let out = confer().args(["token", "--user", "alice", "--name", "Alice", "--data"]).arg(&data).output().unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{addr}/calls"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"callerId": "alice", "calleeId": "bob", "callType": "audio"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["callSession"]["id"].as_str().unwrap().to_owned();
    // The env ring timeout (2 s) beat the file's (1 s): still ringing at 1.5 s, missed by 3 s.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let get = |id: String| {
        let client = client.clone();
        let token = token.clone();
        async move {
            let r = client.get(format!("http://{addr}/calls/{id}")).bearer_auth(&token).send().await.unwrap();
            r.json::<serde_json::Value>().await.unwrap()["callSession"]["status"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(get(id.clone()).await, "ringing");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(get(id).await, "missed");

    let _ = child.kill();
    let _ = child.wait();

    // A token for another secret is refused by that server: the secret is not a built-in default.
    let other = tempfile::tempdir().unwrap();
    let out = confer().args(["token", "--user", "alice", "--data"]).arg(other.path()).output().unwrap();
    assert!(out.status.success());
    let a = std::fs::read_to_string(data.join("auth.secret")).unwrap();
    let b = std::fs::read_to_string(other.path().join("auth.secret")).unwrap();
    assert_ne!(a, b);
}

#[tokio::test]
async fn self_signed_https_serves_the_page() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut child = confer()
        .args(["serve", "--dev", "--http", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .env("CONFER_HTTP_TLS_SELF_SIGNED", "true")
        .env("CONFER_MEDIA_LISTEN", "127.0.0.1:0")
        .env("CONFER_TURN_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let addr = common::parse_listening(&line, "http").unwrap_or_else(|| panic!("{line}"));

    // The certificate was written into certs/ and is the one served.
    let pem = std::fs::read(dir.path().join("certs/confer-dev.crt")).unwrap();
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    tls.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("<title>confer</title>"));
    let _ = child.kill();
    let _ = child.wait();
}
