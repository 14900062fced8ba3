use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::process::Command as Process;

use secrecy::ExposeSecret;

use super::*;
use crate::rpc::{self, Client, PluginMetadata, RpcError, VersionType};

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn parses_the_arguments_cf_passes() {
    let parse = |a: &[&str]| PluginInvocation::parse(strings(a));
    assert_eq!(
        parse(&["4711", "SendMetadata"]).unwrap().action,
        PluginAction::SendMetadata
    );
    assert_eq!(
        parse(&["4711", UNINSTALL]).unwrap().action,
        PluginAction::Uninstall
    );
    let run = parse(&["4711", "backups", "db", "--json"]).unwrap();
    assert_eq!(run.port, 4711);
    assert_eq!(
        run.action,
        PluginAction::Run {
            command: "backups".into(),
            args: strings(&["db", "--json"])
        }
    );
    // (arguments, why they are refused)
    for (bad, why) in [
        (&[][..], "run directly, no arguments"),
        (&["backups"][..], "run directly with a command"),
        (&["backups", "db"][..], "not a port"),
        (&["0", "backups"][..], "port 0"),
        (&["70000", "backups"][..], "port out of range"),
    ] {
        assert!(parse(bad).is_err(), "{why}: {bad:?} was accepted");
    }
}

// ---- end to end: the harness launches this test binary as a plugin, as cf would ----
// (On Unix only: the shim is a shell script, and `timeout` bounds the harness.)

const CHILD_ARGS: &str = "WAYBACK_CFPLUGIN_CHILD";
const EXPECT_TOKEN: &str = "WAYBACK_CFPLUGIN_EXPECT_TOKEN";
#[cfg(unix)]
const CHILD_TEST: &str = "plugin::tests::harness_child";

fn test_metadata() -> PluginMetadata {
    PluginMetadata {
        name: "wayback-e2e".into(),
        version: VersionType {
            major: 0,
            minor: 1,
            build: 0,
        },
        ..rpc::tests::capture_metadata()
    }
}

/// Runs only as the plugin process the harness starts (through the shim script below);
/// in a normal test run it has nothing to do.
#[test]
fn harness_child() {
    let Ok(args) = std::env::var(CHILD_ARGS) else {
        return;
    };
    let invocation = PluginInvocation::parse(args.split(' ').map(String::from)).unwrap();
    let mut cf = Client::connect(invocation.port).unwrap();
    let (command, args) = match invocation.action {
        PluginAction::SendMetadata => {
            assert!(cf.set_plugin_metadata(&test_metadata()).unwrap());
            return;
        }
        PluginAction::Uninstall => return,
        PluginAction::Run { command, args } => (command, args),
    };
    assert!(cf.is_min_cli_version("6.7.0").unwrap());
    match std::env::var(EXPECT_TOKEN) {
        Ok(token) => assert_eq!(cf.access_token().unwrap().expose_secret(), token),
        Err(_) => match cf.access_token() {
            Err(RpcError::Server { message, .. }) => assert_eq!(message, "not logged in"),
            other => panic!("expected an RPC error, got {:?}", other.map(|_| "a token")),
        },
    }
    // The connection stays usable after an error answer.
    assert_eq!(
        cf.api_endpoint().unwrap(),
        std::env::var("FAKE_CF_API").unwrap()
    );
    assert!(cf.is_ssl_disabled().unwrap());
    let space = cf.get_current_space().unwrap();
    assert_eq!(space.guid, std::env::var("FAKE_CF_SPACE_GUID").unwrap());
    assert_eq!(space.name, std::env::var("FAKE_CF_SPACE_NAME").unwrap());
    let org = cf.get_current_org().unwrap();
    assert_eq!(
        (org.guid.as_str(), org.name.as_str()),
        ("e00705b9-7b42-4561-ae97-2520399d2133", "acme")
    );
    assert_eq!(cf.username().unwrap(), "alice");
    let output = cf.cli_command_without_terminal_output(&strings(&["curl", "/v3/spaces"]));
    assert_eq!(output.unwrap(), strings(&[r#"{"resources": []}"#]));
    assert!(cf
        .cli_command_without_terminal_output(&strings(&["apps"]))
        .is_err());
    match cf.call::<str, String>("CliRpcCmd.NoSuchMethod", "") {
        Err(RpcError::Server { message, .. }) => assert!(message.contains("can't find method")),
        other => panic!("expected an RPC error, got {other:?}"),
    }
    println!("harness-child ran {command} {}", args.join(" "));
}

/// Fails when the test script drives the run; otherwise says why the test is skipped.
#[cfg(unix)]
fn require(what: &str, present: bool) -> bool {
    if !present && std::env::var("WAYBACK_TEST_DRIVEN").is_ok() {
        panic!("{what} is required (run the tests through scripts/test)");
    }
    if !present {
        eprintln!("SKIPPED: {what} is missing");
    }
    present
}

/// The harness's sources, kept in the repository (a copy of the team's
/// `../shared/cf-plugin-harness`) so that a clean clone tests the plugin without it.
fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cf-plugin-harness")
}

/// When the team's shared copy is here, ours must not have drifted from it.
#[test]
fn the_harness_copy_matches_the_shared_one() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/cf-plugin-harness");
    if !shared.join("main.go").exists() {
        eprintln!("no ../shared/cf-plugin-harness here: nothing to compare");
        return;
    }
    for file in ["main.go", "go.mod"] {
        assert_eq!(
            std::fs::read(shared.join(file)).unwrap(),
            std::fs::read(harness_dir().join(file)).unwrap(),
            "tests/fixtures/cf-plugin-harness/{file} differs from the shared harness: copy it again"
        );
    }
}

/// Builds the harness once; `None` (skipped) without Go or the harness sources.
#[cfg(unix)]
fn build_harness(dir: &Path) -> Option<PathBuf> {
    let go = Process::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require("`go` (apt-get install golang-go)", go)
        || !require(
            "the cf plugin harness",
            harness_dir().join("main.go").exists(),
        )
    {
        return None;
    }
    let binary = dir.join("cf-harness");
    let out = Process::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(harness_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("GOCACHE", std::env::temp_dir().join("wayback-gocache"))
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(binary)
}

/// cf runs `PLUGIN <port> ...`; the shim turns that into a run of `harness_child` alone.
#[cfg(unix)]
fn write_shim(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().unwrap();
    let shim = dir.join("cf-wayback-test-plugin");
    let script = format!(
        "#!/bin/sh\n{CHILD_ARGS}=\"$*\" exec '{}' --exact {CHILD_TEST} --nocapture --test-threads=1\n",
        exe.display()
    );
    std::fs::write(&shim, script).unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    shim
}

#[cfg(unix)]
fn serve(harness: &Path, shim: &Path, token: Option<&str>) -> std::process::Output {
    let mut cmd = Process::new("timeout");
    cmd.arg("120")
        .arg(harness)
        .args([
            "serve".as_ref(),
            shim.as_os_str(),
            "backups".as_ref(),
            "--json".as_ref(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FAKE_CF_API", "http://127.0.0.1:9")
        .env("FAKE_CF_SPACE_GUID", "0b7e9a34-3c21-4b7e-9f0e-61d1c0ffee01")
        .env("FAKE_CF_SPACE_NAME", "staging")
        .env("FAKE_CF_SSL_DISABLED", "true");
    if let Some(token) = token {
        cmd.env("FAKE_CF_TOKEN", token).env(EXPECT_TOKEN, token);
    }
    cmd.output().expect("run the harness")
}

#[cfg(unix)]
#[test]
fn runs_as_a_plugin_under_the_real_harness() {
    let dir = tempfile::tempdir().unwrap();
    let Some(harness) = build_harness(dir.path()) else {
        return;
    };
    let shim = write_shim(dir.path());
    for token in [Some("bearer eyJhbGciOiJSUzI1NiJ9.e30.e2e"), None] {
        let out = serve(&harness, &shim, token);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let context = format!(
            "token {token:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        assert!(out.status.success(), "{context}");
        assert!(stderr.contains("metadata: {Name:wayback-e2e"), "{context}");
        assert!(
            stderr.contains("Options:map[--json:JSON output]"),
            "{context}"
        );
        assert!(
            stdout.contains("harness-child ran backups --json"),
            "{context}"
        );
    }
}
