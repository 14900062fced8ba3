//! The BOSH release's templates, rendered without a director: `scripts/render-bosh-templates.rb`
//! runs every template of every job through Ruby's ERB with a `p()`/`link()` shim, using the
//! representative properties of `bosh-release/tests/properties.yml`. Rendered scripts must pass
//! `bash -n`, and `wayback check-config` must accept every rendered `wayback.toml`. The shim
//! refuses properties a job's spec does not declare; the last tests prove that it does.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
    Command::new("ruby")
        .arg(repo().join("scripts/render-bosh-templates.rb"))
        .arg(release)
        .arg(repo().join("bosh-release/tests/properties.yml"))
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

    let (mut scripts, mut configs) = (0, 0);
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
            configs += 1;
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
    // pre-start and drain twice, the registrar twice, the deregistrar and the smoke tests.
    assert_eq!(scripts, 8, "rendered scripts");
    // Two brokers, two registrars, the smoke tests.
    assert_eq!(configs, 5, "rendered wayback.toml files");
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
    let output = render(&root.join("bosh-release"), out.path());
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
