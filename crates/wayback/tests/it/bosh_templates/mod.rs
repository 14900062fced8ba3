//! The BOSH release's templates, rendered without a director: `scripts/render-bosh-templates.rb`
//! runs every template of every job through Ruby's ERB with a `p()`/`link()` shim, using the
//! representative properties of `bosh-release/tests/properties.yml`. Rendered scripts must pass
//! `bash -n`, and `wayback check-config` must accept every rendered `wayback.toml` (brokers with
//! and without agents, agents, errands). The shim refuses properties a job's spec does not
//! declare; the last tests prove that it does, and that the templates refuse what a deployment
//! must not do (an agent without TLS, agents without a shared archive). The etcd job (HA
//! plans' coordinator) and the sample manifest have tests of their own in `etcd`.

mod etcd;

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository root (this package lives in `crates/wayback`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ruby_available() -> bool {
    let found = Command::new("ruby")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    common::require("ruby (scripts/setup --with-s3)", found)
}

/// Runs the renderer on `release` with the repository's fixture; `out` receives the files.
fn render(release: &Path, out: &Path) -> Output {
    render_fixture(
        release,
        &repo().join("bosh-release/tests/properties.yml"),
        out,
    )
}

fn render_fixture(release: &Path, fixture: &Path, out: &Path) -> Output {
    Command::new("ruby")
        .arg(repo().join("scripts/render-bosh-templates.rb"))
        .arg(release)
        .arg(fixture)
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .expect("run ruby")
}

/// One rendered file: the fixture case, its job and where it was written.
struct Rendered {
    case: String,
    job: String,
    path: PathBuf,
}

fn rendered_files(output: &Output) -> Vec<Rendered> {
    assert!(
        output.status.success(),
        "rendering failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| {
            let mut fields = line.split('\t');
            let mut next = || fields.next().expect("CASE\\tJOB\\tPATH").to_string();
            Rendered {
                case: next(),
                job: next(),
                path: PathBuf::from(next()),
            }
        })
        .collect()
}

/// A rendered `wayback.toml` names paths of the VM; point them at the rendered files and the
/// repository's catalog, as the jobs' directories and the wayback package would hold them.
fn localise(toml: &str, case_dir: &Path, job: &str) -> String {
    toml.replace(
        &format!("/var/vcap/jobs/{job}/"),
        &format!("{}/", case_dir.display()),
    )
    .replace(
        "/var/vcap/packages/wayback/catalog.json",
        &repo().join("catalog.json").display().to_string(),
    )
}

fn check_config(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wayback"))
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .expect("run wayback check-config")
}

#[test]
fn every_template_renders_and_every_config_is_accepted() {
    if !ruby_available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let files = rendered_files(&render(&repo().join("bosh-release"), out.path()));

    let jobs_in_release: BTreeSet<String> = std::fs::read_dir(repo().join("bosh-release/jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let jobs_rendered: BTreeSet<String> = files.iter().map(|f| f.job.clone()).collect();
    assert_eq!(jobs_rendered, jobs_in_release, "every job is rendered");

    let mut scripts = 0;
    let mut configs = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(&file.path).unwrap();
        assert!(
            !text.contains("#<"),
            "{}: a Ruby object was rendered",
            file.path.display()
        );
        if file.path.parent().unwrap().ends_with("bin") {
            scripts += 1;
            assert!(
                text.starts_with("#!/bin/bash\n"),
                "{}: no bash shebang",
                file.path.display()
            );
            let syntax = Command::new("bash")
                .arg("-n")
                .arg(&file.path)
                .output()
                .unwrap();
            assert!(
                syntax.status.success(),
                "{} ({}): bash -n: {}",
                file.path.display(),
                file.case,
                String::from_utf8_lossy(&syntax.stderr)
            );
        }
        if file.path.file_name().unwrap() == "wayback.toml" {
            configs.insert(file.case.as_str());
            let case_dir = out.path().join(&file.case);
            let local = case_dir.join("wayback.local.toml");
            std::fs::write(&local, localise(&text, &case_dir, &file.job)).unwrap();
            let checked = check_config(&local);
            assert!(
                checked.status.success(),
                "{} ({}): wayback check-config refused it: {}\n{text}",
                file.path.display(),
                file.case,
                String::from_utf8_lossy(&checked.stderr)
            );
        }
    }
    // pre-start and drain for three brokers and two agents, the registrar twice, the
    // deregistrar and the smoke tests, pre-start and post-start for three etcd members.
    assert_eq!(scripts, 20, "rendered scripts");
    let expected = [
        "agent-full",
        "agent-minimal",
        "broker-full",
        "broker-minimal",
        "broker-with-agents",
        "registrar",
        "registrar-internal-url",
        "smoke-tests",
    ];
    assert_eq!(
        configs,
        BTreeSet::from(expected),
        "wayback.toml files checked"
    );
}

fn rendered_toml(out: &Path, case: &str) -> toml::Value {
    std::fs::read_to_string(out.join(case).join("config/wayback.toml"))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_agent_config_carries_the_manifest_values() {
    if !ruby_available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    rendered_files(&render(&repo().join("bosh-release"), out.path()));
    let minimal = rendered_toml(out.path(), "agent-minimal");
    let agent = &minimal["agent"];
    assert_eq!(agent["listen"].as_str(), Some("0.0.0.0:8443"));
    assert_eq!(
        agent["password"].as_str(),
        Some("agent pa$$ with 'quotes'"),
        "quotes survive TOML rendering"
    );
    assert_eq!(
        agent["tls_cert"].as_str(),
        Some("/var/vcap/jobs/wayback-agent/config/tls.crt")
    );
    assert_eq!(
        agent["tls_key"].as_str(),
        Some("/var/vcap/jobs/wayback-agent/config/tls.key")
    );
    assert_eq!(
        minimal["data_dir"].as_str(),
        Some("/var/vcap/store/wayback-agent")
    );
    assert_eq!(
        minimal["postgres"]["advertise_host"].as_str(),
        Some("10.0.16.21"),
        "apps get the VM's IP, not its BOSH DNS name"
    );
    assert_eq!(
        minimal["postgres"]["listen_address"].as_str(),
        Some("0.0.0.0")
    );
    assert_eq!(
        minimal["archive"]["url"].as_str(),
        Some("s3://wayback-archive/prod")
    );
    let config = out.path().join("agent-minimal/config");
    for (file, first_line) in [
        ("tls.crt", "-----BEGIN CERTIFICATE-----"),
        ("tls.key", "-----BEGIN PRIVATE KEY-----"),
        ("tls-ca.crt", "-----BEGIN CERTIFICATE-----"),
    ] {
        let pem = std::fs::read_to_string(config.join(file)).unwrap();
        assert!(pem.starts_with(first_line), "{file}: {pem}");
        assert!(pem.trim_end().ends_with("-----"), "{file}: {pem}");
    }
    assert!(std::fs::read_to_string(config.join("tls.key"))
        .unwrap()
        .contains("fixtureAgentPrivateKey"));
    let bpm = std::fs::read_to_string(out.path().join("agent-minimal/config/bpm.yml")).unwrap();
    assert!(
        bpm.contains("- agent\n  - --config\n  - /var/vcap/jobs/wayback-agent/config/wayback.toml"),
        "{bpm}"
    );
    let drain = std::fs::read_to_string(out.path().join("agent-minimal/bin/drain")).unwrap();
    assert!(drain.contains("drain --agent --timeout-secs"), "{drain}");

    let full = rendered_toml(out.path(), "agent-full");
    assert_eq!(full["agent"]["listen"].as_str(), Some("0.0.0.0:9443"));
    assert_eq!(full["agent"]["max_instances"].as_integer(), Some(80));
    assert_eq!(
        full["postgres"]["advertise_host"].as_str(),
        Some("db-22.wayback.example.com")
    );
    assert_eq!(full["postgres"]["port_max"].as_integer(), Some(41099));
    let ca = &full["tls"];
    assert!(ca["ca_cert"]
        .as_str()
        .unwrap()
        .contains("fixtureAgentCertificate"));
    assert!(ca["ca_key"]
        .as_str()
        .unwrap()
        .contains("fixtureAgentPrivateKey"));
    assert!(
        minimal["tls"].get("ca_cert").is_none(),
        "no tls.ca: a generated CA"
    );
    assert_eq!(minimal["tls"]["require"].as_bool(), Some(false));
    assert_eq!(full["tls"]["require"].as_bool(), Some(true));
    // The broker's keys, derived as the broker's template derives them: the agent wraps its
    // clusters' archive data keys with them and the broker unwraps them.
    let broker = rendered_toml(out.path(), "broker-full");
    assert_eq!(full["encryption"], broker["encryption"]);
    assert_eq!(full["encryption"]["current_key"].as_str(), Some("key-2"));
    assert!(minimal.get("encryption").is_none());
    for toml in [&minimal, &full, &broker] {
        assert_eq!(toml["archive"]["encrypt"].as_bool(), Some(true));
    }
}

#[test]
fn the_broker_config_carries_the_bindings_sslmode() {
    if !ruby_available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    rendered_files(&render(&repo().join("bosh-release"), out.path()));
    for (case, sslmode) in [
        ("broker-minimal", "verify-full"),
        ("broker-full", "require"),
    ] {
        let toml = rendered_toml(out.path(), case);
        assert_eq!(
            toml["tls"]["client_sslmode"].as_str(),
            Some(sslmode),
            "{case}"
        );
    }
}

#[test]
fn a_broker_linked_to_two_agents_names_them_by_instance_id() {
    if !ruby_available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    rendered_files(&render(&repo().join("bosh-release"), out.path()));
    let broker = rendered_toml(out.path(), "broker-with-agents");
    let agents = &broker["agents"];
    let urls: Vec<(&str, &str)> = agents["urls"]
        .as_array()
        .expect("agents.urls is a list of tables")
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["url"].as_str().unwrap()))
        .collect();
    let ids = [
        "7a9d35f2-1b0e-4c4b-9a51-2f0c5e8d1a01",
        "c04f6e2b-88d3-4f7e-b1a2-5e9d0c3b7f02",
    ];
    let expected: Vec<(&str, String)> = ids
        .iter()
        .map(|id| {
            (
                *id,
                format!("https://{id}.wayback-agent.default.wayback.bosh:9443"),
            )
        })
        .collect();
    assert_eq!(
        urls,
        expected
            .iter()
            .map(|(id, url)| (*id, url.as_str()))
            .collect::<Vec<_>>(),
        "one agent per link instance, named by its id, at the link's port"
    );
    assert_eq!(agents["username"].as_str(), Some("broker-of-agents"));
    assert_eq!(agents["password"].as_str(), Some("agent-secret"));
    assert_eq!(agents["request_timeout_secs"].as_integer(), Some(90));
    assert_eq!(
        agents["ca_cert"].as_str(),
        Some("/var/vcap/jobs/wayback-broker/config/agents-ca.crt")
    );
    let ca = std::fs::read_to_string(out.path().join("broker-with-agents/config/agents-ca.crt"))
        .unwrap();
    assert!(ca.contains("fixtureAgentCA"), "the link's CA: {ca}");
    assert!(!ca.contains("PrivateKey"), "{ca}");
    assert_eq!(
        broker["archive"]["url"].as_str(),
        Some("s3://wayback-archive/prod")
    );

    for case in ["broker-minimal", "broker-full"] {
        let alone = rendered_toml(out.path(), case);
        assert!(alone.get("agents").is_none(), "{case}: no link, no agents");
        let ca =
            std::fs::read_to_string(out.path().join(case).join("config/agents-ca.crt")).unwrap();
        assert!(ca.trim().is_empty(), "{case}: {ca}");
    }
}

#[test]
fn the_broker_config_carries_the_manifest_values() {
    if !ruby_available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    rendered_files(&render(&repo().join("bosh-release"), out.path()));
    let full: toml::Value =
        std::fs::read_to_string(out.path().join("broker-full/config/wayback.toml"))
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!(full["listen"].as_str(), Some("0.0.0.0:8443"));
    assert_eq!(
        full["archive"]["url"].as_str(),
        Some("s3://wayback-archive/prod")
    );
    assert_eq!(
        full["archive"]["secret_access_key"].as_str(),
        Some("secret/with+chars=")
    );
    assert_eq!(
        full["postgres"]["advertise_host"].as_str(),
        Some("db.wayback.example.com")
    );
    assert_eq!(full["cc"]["skip_tls_verify"].as_bool(), Some(true));
    assert_eq!(full["metrics"]["auth"].as_str(), Some("own"));
    assert_eq!(full["metrics"]["password"].as_str(), Some("scrape'secret"));
    assert_eq!(full["postgres"]["log_keep_mb"].as_integer(), Some(128));
    assert_eq!(full["state"]["retention_days"].as_integer(), Some(90));

    let minimal: toml::Value =
        std::fs::read_to_string(out.path().join("broker-minimal/config/wayback.toml"))
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!(
        minimal["broker"]["password"].as_str(),
        Some("pa$$word with 'quotes' and \"doubles\""),
        "quotes survive TOML rendering"
    );
    assert_eq!(
        minimal["external_url"].as_str(),
        Some("http://10.0.16.5:8080")
    );
    assert_eq!(
        minimal["data_dir"].as_str(),
        Some("/var/vcap/store/wayback")
    );
    assert!(
        minimal.get("database_url").is_none(),
        "SQLite on the persistent disk by default"
    );
    assert_eq!(
        minimal["metrics"]["auth"].as_str(),
        Some("broker"),
        "/metrics asks for the broker's credentials by default in the BOSH job"
    );
    assert!(minimal["metrics"].get("password").is_none());

    let registrar = std::fs::read_to_string(out.path().join("registrar/bin/run")).unwrap();
    assert!(
        registrar.contains("--url 'https://wayback.sys.example.com'"),
        "{registrar}"
    );
    let smoke = std::fs::read_to_string(out.path().join("smoke-tests/bin/run")).unwrap();
    assert!(
        smoke.contains("--broker-url 'http://10.0.16.6:8443'"),
        "{smoke}"
    );
}

/// A copy of the release's jobs (and the catalog the fixture reads) with `edit` applied.
fn broken_release(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let release = root.path().join("bosh-release");
    copy_dir(&repo().join("bosh-release/jobs"), &release.join("jobs"));
    std::fs::copy(
        repo().join("catalog.json"),
        root.path().join("catalog.json"),
    )
    .unwrap();
    edit(&release);
    root
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn append(path: &Path, text: &str) {
    let mut content = std::fs::read_to_string(path).unwrap();
    content.push_str(text);
    std::fs::write(path, content).unwrap();
}

fn render_fails_with(root: &Path, expected: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    assert_failed(&render(&root.join("bosh-release"), out.path()), expected);
}

fn assert_failed(output: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "rendering should fail");
    for part in expected {
        assert!(stderr.contains(part), "stderr lacks {part:?}: {stderr}");
    }
}

#[test]
fn a_property_missing_from_the_spec_fails_the_render() {
    if !ruby_available() {
        return;
    }
    let root = broken_release(|release| {
        append(
            &release.join("jobs/wayback-broker/templates/wayback.toml.erb"),
            "# <%= p('wal.push_ahead', 4) %>\n",
        )
    });
    render_fails_with(
        root.path(),
        &["wayback-broker", "wal.push_ahead", "not declared"],
    );
}

#[test]
fn a_link_property_the_broker_does_not_expose_fails_the_render() {
    if !ruby_available() {
        return;
    }
    let root = broken_release(|release| {
        append(
            &release.join("jobs/smoke-tests/templates/run.erb"),
            "# <%= link('wayback-broker').p('database_url') %>\n",
        )
    });
    render_fails_with(root.path(), &["wayback-broker", "database_url", "exposed"]);
}

#[test]
fn a_template_missing_from_the_spec_fails_the_render() {
    if !ruby_available() {
        return;
    }
    let root = broken_release(|release| {
        std::fs::write(
            release.join("jobs/wayback-broker/templates/post-start.erb"),
            "#!/bin/bash\n",
        )
        .unwrap()
    });
    render_fails_with(root.path(), &["post-start.erb", "not listed"]);
}

/// Renders the repository's release with its fixture plus `cases` (YAML list items).
fn render_with_cases(cases: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut fixture =
        std::fs::read_to_string(repo().join("bosh-release/tests/properties.yml")).unwrap();
    fixture.push('\n');
    fixture.push_str(cases);
    let path = dir.path().join("properties.yml");
    std::fs::write(&path, fixture).unwrap();
    render_fixture(&repo().join("bosh-release"), &path, &dir.path().join("out"))
}

#[test]
fn an_agent_without_tls_fails_the_render() {
    if !ruby_available() {
        return;
    }
    let output = render_with_cases(
        "- name: agent-plain-http
  job: wayback-agent
  properties:
    agent: {password: pw}
    archive: {url: s3://bucket/prefix}
",
    );
    assert_failed(&output, &["wayback-agent", "agent.tls"]);
}

#[test]
fn agents_need_an_archive_the_broker_shares() {
    if !ruby_available() {
        return;
    }
    let broker = render_with_cases(
        "- name: broker-local-archive
  job: wayback-broker
  links: {wayback-agent: agent-full}
  properties:
    broker: {password: pw}
",
    );
    assert_failed(&broker, &["archive.url", "s3://"]);
    let agent = render_with_cases(
        "- name: agent-local-archive
  job: wayback-agent
  properties:
    agent: {password: pw, tls: {certificate: c, private_key: k, ca: a}}
    archive: {url: file:///var/vcap/store/wayback-agent/archive}
",
    );
    assert_failed(&agent, &["archive.url", "s3://"]);
}

#[test]
fn a_link_exposing_an_unset_undeclared_property_fails_like_a_director() {
    if !ruby_available() {
        return;
    }
    // The agent's link exposes agent.tls.ca, a key inside the certificate-type property: a
    // director refuses the link when agent.tls is unset. The consumer comes first, so the
    // link fails before the agent's own templates do.
    let output = render_with_cases(
        "- name: broker-of-a-plain-agent
  job: wayback-broker
  links: {wayback-agent: plain-agent}
  properties:
    broker: {password: pw}
    archive: {url: s3://bucket/prefix}
- name: plain-agent
  job: wayback-agent
  properties:
    agent: {password: pw}
    archive: {url: s3://bucket/prefix}
",
    );
    assert_failed(&output, &["agent.tls.ca", "neither set nor declared"]);
}
