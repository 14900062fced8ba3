//! The etcd job (the coordinator of HA plans, issue 15 point 2) and how the broker and the
//! agents find it. The fixture's three etcd members render one initial cluster; the etcd link
//! gives the broker and the agents `ha.dcs_endpoints`, and its absence none; three members
//! rendered for 127.0.0.1, .2 and .3 form a real etcd cluster that serves the endpoints the
//! rendered broker config names, and a member's post-start waits for it only while the rest of
//! the cluster runs; the sample manifest parses, and every property and link it gives a job of
//! this release is declared in that job's spec; the etcd package's build installs etcd 3.4
//! (Debian's binaries standing in for the release tarball's) and refuses another version.

use super::{
    assert_failed, render, render_fixture, render_with_cases, rendered_files, rendered_toml, repo,
    ruby_available,
};
use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A rendered `config/etcd.yml`: one `key: value` per line, strings in JSON quotes (the
/// template writes them so), comments skipped.
fn etcd_config(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (key, value) = line.split_once(": ").expect("key: value");
            let value = if value.starts_with('"') {
                serde_json::from_str::<String>(value).expect("a JSON string")
            } else {
                value.to_string()
            };
            (key.to_string(), value)
        })
        .collect()
}

const MEMBERS: [(&str, &str, &str); 3] = [
    (
        "etcd-0",
        "1e0c6a4d-5b7f-4d2e-9c1a-3f8b2d6e0a10.etcd.default.wayback.bosh",
        "10.0.16.31",
    ),
    (
        "etcd-1",
        "2f1d7b5e-6c80-4e3f-8d2b-4a9c3e7f1b21.etcd.default.wayback.bosh",
        "10.0.16.32",
    ),
    (
        "etcd-2",
        "3a2e8c6f-7d91-4f40-9e3c-5b0d4f8a2c32.etcd.default.wayback.bosh",
        "10.0.16.33",
    ),
];

#[test]
fn three_etcd_members_render_one_initial_cluster() {
    if !ruby_available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    rendered_files(&render(&repo().join("bosh-release"), out.path()));
    let initial_cluster = MEMBERS
        .iter()
        .map(|(name, address, _)| format!("{name}=http://{address}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    for (case, address, ip) in MEMBERS {
        let config = etcd_config(&out.path().join(case).join("config/etcd.yml"));
        assert_eq!(config["name"], case, "members are named group-index");
        assert_eq!(
            config["initial-cluster"], initial_cluster,
            "{case}: every member of the link, in index order, the same on each"
        );
        assert_eq!(config["initial-cluster-state"], "new");
        assert_eq!(config["initial-cluster-token"], "wayback-etcd");
        assert_eq!(
            config["initial-advertise-peer-urls"],
            format!("http://{address}:2380")
        );
        assert_eq!(
            config["advertise-client-urls"],
            format!("http://{address}:2379"),
            "{case}: clients are told the link's address"
        );
        assert_eq!(config["listen-peer-urls"], format!("http://{ip}:2380"));
        assert_eq!(
            config["listen-client-urls"],
            format!("http://{ip}:2379"),
            "{case}: etcd binds the VM's IP"
        );
        assert_eq!(config["data-dir"], "/var/vcap/store/etcd/data");
        assert_eq!(config["auto-compaction-mode"], "periodic");
        assert_eq!(config["enable-v2"], "false");
        assert_eq!(
            config["enable-grpc-gateway"], "true",
            "Patroni's etcd3 client needs the v3 HTTP gateway"
        );
    }
    let defaults = etcd_config(&out.path().join("etcd-0/config/etcd.yml"));
    assert_eq!(defaults["heartbeat-interval"], "100");
    assert_eq!(defaults["election-timeout"], "1000");
    assert_eq!(defaults["auto-compaction-retention"], "1");
    assert_eq!(defaults["log-level"], "info");
    let tuned = etcd_config(&out.path().join("etcd-2/config/etcd.yml"));
    assert_eq!(tuned["heartbeat-interval"], "250");
    assert_eq!(tuned["election-timeout"], "2500");
    assert_eq!(tuned["auto-compaction-retention"], "2");
    assert_eq!(tuned["log-level"], "warn");

    let bpm = std::fs::read_to_string(out.path().join("etcd-0/config/bpm.yml")).unwrap();
    assert!(
        bpm.contains("- --config-file\n  - /var/vcap/jobs/etcd/config/etcd.yml"),
        "{bpm}"
    );
    assert!(bpm.contains("persistent_disk: true"), "{bpm}");
    let post_start = std::fs::read_to_string(out.path().join("etcd-1/bin/post-start")).unwrap();
    assert!(post_start.contains("timeout_secs=300"), "{post_start}");
    assert!(
        post_start.contains("endpoint=http://10.0.16.32:2379"),
        "{post_start}"
    );
}

#[test]
fn the_etcd_link_gives_the_broker_and_the_agents_their_dcs_endpoints() {
    if !ruby_available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    rendered_files(&render(&repo().join("bosh-release"), out.path()));
    let expected: Vec<String> = MEMBERS
        .iter()
        .map(|(_, address, _)| format!("{address}:2379"))
        .collect();
    for case in ["broker-with-agents", "agent-full"] {
        let toml = rendered_toml(out.path(), case);
        let endpoints: Vec<&str> = toml["ha"]["dcs_endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("{case}: ha.dcs_endpoints is a list"))
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(
            endpoints, expected,
            "{case}: one client endpoint per etcd instance, at the link's client port"
        );
    }
    for case in ["broker-minimal", "broker-full", "agent-minimal"] {
        let toml = rendered_toml(out.path(), case);
        assert!(
            toml.get("ha").is_none(),
            "{case}: no etcd link, no ha section (HA plans refused)"
        );
    }
    // The package that runs Patroni is on the PATH of both processes that start members.
    for case in ["agent-minimal", "broker-minimal"] {
        let bpm = std::fs::read_to_string(out.path().join(case).join("config/bpm.yml")).unwrap();
        assert!(bpm.contains(":/var/vcap/packages/patroni/bin:"), "{bpm}");
    }
}

#[test]
fn the_etcd_templates_refuse_what_would_not_form_a_cluster() {
    if !ruby_available() {
        return;
    }
    let state = render_with_cases(
        "- name: etcd-restored
  job: etcd
  spec: {name: etcd, id: 1e0c6a4d-5b7f-4d2e-9c1a-3f8b2d6e0a10, index: 0}
  links: {etcd-peers: etcd-0}
  properties: {initial_cluster_state: restored}
",
    );
    assert_failed(&state, &["initial_cluster_state", "new or existing"]);
    let stranger = render_with_cases(
        "- name: etcd-stranger
  job: etcd
  spec: {name: etcd, id: 00000000-0000-4000-8000-00000000dead, index: 7}
  links: {etcd-peers: etcd-0}
",
    );
    assert_failed(&stranger, &["etcd-peers", "does not hold this instance"]);
    let timing = render_with_cases(
        "- name: etcd-hasty
  job: etcd
  spec: {name: etcd, id: 1e0c6a4d-5b7f-4d2e-9c1a-3f8b2d6e0a10, index: 0}
  links: {etcd-peers: etcd-0}
  properties: {heartbeat_interval_ms: 500, election_timeout_ms: 1000}
",
    );
    assert_failed(&timing, &["election_timeout_ms", "heartbeat_interval_ms"]);
}

/// Three etcd processes started from rendered configs; killed on drop.
struct Members {
    children: Vec<Child>,
    logs: Vec<std::path::PathBuf>,
}

impl Members {
    fn log_tails(&self) -> String {
        self.logs
            .iter()
            .map(|l| {
                let text = std::fs::read_to_string(l).unwrap_or_default();
                format!("{}:\n{}", l.display(), common::etcd::tail(&text, 10))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn a_rendered_etcd_cluster_forms_and_serves_the_brokers_endpoints() {
    if !ruby_available() {
        return;
    }
    let Some(etcd) = common::etcd::find_binary("etcd") else {
        common::require("etcd (bash scripts/setup installs etcd-server)", false);
        return;
    };
    // One port pair for the group, as in BOSH; each member on an address of its own.
    let client = common::free_port();
    let peer = std::iter::repeat_with(common::free_port)
        .find(|p| *p != client)
        .unwrap();
    let live = format!(
        "- name: live-0
  job: etcd
  spec: &live_0 {{name: etcd, id: live-0, address: 127.0.0.1, ip: 127.0.0.1, index: 0, deployment: it}}
  links: {{etcd-peers: live-0}}
  properties: &live_ports {{client_port: {client}, peer_port: {peer}}}
  instances:
  - *live_0
  - &live_1 {{name: etcd, id: live-1, address: 127.0.0.2, ip: 127.0.0.2, index: 1, deployment: it}}
  - &live_2 {{name: etcd, id: live-2, address: 127.0.0.3, ip: 127.0.0.3, index: 2, deployment: it}}
- {{name: live-1, job: etcd, spec: *live_1, links: {{etcd-peers: live-0}}, properties: *live_ports}}
- {{name: live-2, job: etcd, spec: *live_2, links: {{etcd-peers: live-0}}, properties: *live_ports}}
- name: live-broker
  job: wayback-broker
  links: {{etcd: live-0}}
  properties: {{broker: {{password: pw}}}}
"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut fixture =
        std::fs::read_to_string(repo().join("bosh-release/tests/properties.yml")).unwrap();
    fixture.push('\n');
    fixture.push_str(&live);
    std::fs::write(dir.path().join("properties.yml"), fixture).unwrap();
    let out = dir.path().join("out");
    rendered_files(&render_fixture(
        &repo().join("bosh-release"),
        &dir.path().join("properties.yml"),
        &out,
    ));

    let mut members = Members {
        children: Vec::new(),
        logs: Vec::new(),
    };
    for case in ["live-0", "live-1", "live-2"] {
        let rendered = out.join(case).join("config/etcd.yml");
        let data = dir.path().join(case).join("data");
        let local = std::fs::read_to_string(&rendered)
            .unwrap()
            .replace("/var/vcap/store/etcd/data", &data.display().to_string());
        let config = dir.path().join(format!("{case}.yml"));
        std::fs::write(&config, local).unwrap();
        let log_path = dir.path().join(format!("{case}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        members.logs.push(log_path);
        members.children.push(
            Command::new(&etcd)
                .arg("--config-file")
                .arg(&config)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn etcd"),
        );
    }

    let broker = rendered_toml(&out, "live-broker");
    let endpoints: Vec<String> = broker["ha"]["dcs_endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        endpoints,
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map(|ip| format!("{ip}:{client}")),
    );

    // Healthy means the member has a leader: the three rendered configs formed one cluster.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for endpoint in &endpoints {
        loop {
            let healthy = match http
                .get(format!("http://{endpoint}/health"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) => r.text().await.unwrap_or_default().contains("\"true\""),
                Err(_) => false,
            };
            if healthy {
                break;
            }
            for child in &mut members.children {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("an etcd exited ({status}):\n{}", members.log_tails());
                }
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint} is not healthy after 120 s:\n{}",
                members.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A key written through the first endpoint is read through every one (etcd's v3 JSON
    // gateway, as Patroni's etcd3 client and the runtime use it).
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    http.post(format!("http://{}/v3/kv/put", endpoints[0]))
        .json(&serde_json::json!({"key": b64("/wayback-it/k"), "value": b64("one cluster")}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    for endpoint in &endpoints {
        let body: serde_json::Value = http
            .post(format!("http://{endpoint}/v3/kv/range"))
            .json(&serde_json::json!({"key": b64("/wayback-it/k")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["kvs"][0]["value"].as_str(),
            Some(b64("one cluster").as_str()),
            "{endpoint}: {body}"
        );
    }

    // post-start of the second member, with etcdctl and its note from pre-start localised.
    let Some(etcdctl) = common::etcd::find_binary("etcdctl") else {
        common::require("etcdctl (bash scripts/setup installs etcd-client)", false);
        return;
    };
    let start_kind = dir.path().join("start-kind");
    let post_start = dir.path().join("post-start");
    std::fs::write(
        &post_start,
        std::fs::read_to_string(out.join("live-1/bin/post-start"))
            .unwrap()
            .replace(
                "/var/vcap/packages/etcd/bin/etcdctl",
                &etcdctl.display().to_string(),
            )
            .replace(
                "/var/vcap/data/etcd/start-kind",
                &start_kind.display().to_string(),
            ),
    )
    .unwrap();
    let run_post_start = |kind: &str| {
        std::fs::write(&start_kind, kind).unwrap();
        let output = Command::new("bash")
            .arg(&post_start)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "post-start failed: {stderr}");
        stderr
    };
    let rejoined = run_post_start("member");
    assert!(
        rejoined.contains(&format!("http://127.0.0.2:{client} is healthy")),
        "a member of a running cluster is waited for until healthy: {rejoined}"
    );
    let bootstrap = run_post_start("bootstrap");
    assert!(bootstrap.contains("bootstrapping"), "{bootstrap}");
    // The other two gone: this member has no quorum, and the cluster is starting as a whole
    // (as after `bosh stop`): post-start must not wait for it, or the next never starts.
    for i in [0, 2] {
        let _ = members.children[i].kill();
        let _ = members.children[i].wait();
    }
    let alone = run_post_start("member");
    assert!(
        alone.contains("no other member is healthy"),
        "{alone}\n{}",
        members.log_tails()
    );
}

/// Checks the sample manifest with Ruby's YAML: it parses, and every property, provided link
/// and consumed link it gives a job of this release is declared in that job's spec; each
/// consumed link comes `from` a link the manifest provides. Prints JSON: the problems and each
/// instance group's instances.
const CHECK_MANIFEST: &str = r##"
require 'yaml'
require 'json'
release, manifest = ARGV
m = YAML.safe_load(File.read(manifest), aliases: true)
names = lambda do |h, prefix|
  h.flat_map do |k, v|
    name = prefix.empty? ? k.to_s : "#{prefix}.#{k}"
    v.is_a?(Hash) ? [name] + names.call(v, name) : [name]
  end
end
problems = []
provided = m['instance_groups'].flat_map { |g| g['jobs'].flat_map { |j| (j['provides'] || {}).values.map { |l| l['as'] } } }
m['instance_groups'].each do |g|
  g['jobs'].each do |j|
    next unless j['release'] == 'wayback'
    where = "#{g['name']}/#{j['name']}"
    spec = YAML.safe_load(File.read(File.join(release, 'jobs', j['name'], 'spec')))
    declared = (spec['properties'] || {}).keys
    names.call(j['properties'] || {}, '').each do |name|
      # Declared, inside a declared hash (a certificate, encryption.keys), or a prefix of one.
      next if declared.any? { |d| d == name || name.start_with?("#{d}.") || d.start_with?("#{name}.") }
      problems << "#{where}: property #{name} is not in the spec"
    end
    (j['provides'] || {}).each_key do |l|
      problems << "#{where}: provides #{l}, not in the spec" unless (spec['provides'] || []).any? { |p| p['name'] == l }
    end
    (j['consumes'] || {}).each do |l, how|
      problems << "#{where}: consumes #{l}, not in the spec" unless (spec['consumes'] || []).any? { |c| c['name'] == l }
      problems << "#{where}: consumes #{l} from #{how['from']}, which nothing provides" unless provided.include?(how['from'])
    end
  end
end
puts JSON.generate({ 'problems' => problems, 'instances' => m['instance_groups'].to_h { |g| [g['name'], g['instances']] } })
"##;

#[test]
fn the_sample_manifest_has_three_etcd_members_and_only_declared_properties() {
    if !ruby_available() {
        return;
    }
    let output = Command::new("ruby")
        .arg("-e")
        .arg(CHECK_MANIFEST)
        .arg(repo().join("bosh-release"))
        .arg(repo().join("bosh-release/manifests/wayback.yml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the manifest does not load: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["instances"]["etcd"], 3, "{report}");
    assert_eq!(report["instances"]["wayback-agent"], 2, "{report}");
}

/// Runs `packages/etcd/packaging` as a compile VM would: in a directory holding the blob as
/// `etcd/etcd-linux-amd64.tar.gz` (one top-level directory with `etcd` and `etcdctl`).
fn run_etcd_packaging(etcd: &Path, etcdctl: &Path) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("src/etcd-v3.4.x-linux-amd64");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::copy(etcd, top.join("etcd")).unwrap();
    std::fs::copy(etcdctl, top.join("etcdctl")).unwrap();
    let compile = dir.path().join("compile");
    std::fs::create_dir_all(compile.join("etcd")).unwrap();
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(compile.join("etcd/etcd-linux-amd64.tar.gz"))
        .arg("-C")
        .arg(dir.path().join("src"))
        .arg("etcd-v3.4.x-linux-amd64")
        .status()
        .unwrap();
    assert!(tar.success());
    std::fs::create_dir_all(dir.path().join("install")).unwrap();
    let mut packaging = Command::new("bash");
    packaging
        .arg(repo().join("bosh-release/packages/etcd/packaging"))
        .current_dir(&compile)
        .env("BOSH_INSTALL_TARGET", dir.path().join("install"))
        .stdin(Stdio::null());
    // As on a compile VM, SIGPIPE kills: the test harness ignores it, and an ignored signal
    // stays ignored across exec (and a shell cannot reset it), which would hide a pipeline
    // that breaks the build there.
    // SAFETY: between fork and exec only signal(2), which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut packaging, || {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
            .map(|_| ())
            .map_err(std::io::Error::from)
        });
    }
    (packaging.output().unwrap(), dir)
}

#[test]
fn the_etcd_package_installs_etcd_3_4_and_refuses_another_version() {
    let (Some(etcd), Some(etcdctl)) = (
        common::etcd::find_binary("etcd"),
        common::etcd::find_binary("etcdctl"),
    ) else {
        common::require("etcd and etcdctl (bash scripts/setup)", false);
        return;
    };
    // Debian's etcd 3.4 stands in for the official tarball's binaries.
    let (output, dir) = run_etcd_packaging(&etcd, &etcdctl);
    assert!(
        output.status.success(),
        "packaging failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for tool in ["etcd", "etcdctl"] {
        let installed = dir.path().join("install/bin").join(tool);
        let version = Command::new(&installed).arg("version").output();
        assert!(installed.is_file() && version.is_ok(), "{tool} installed");
    }

    let fake = tempfile::tempdir().unwrap();
    let newer = fake.path().join("etcd");
    std::fs::write(
        &newer,
        "#!/bin/sh\necho 'etcd Version: 3.5.9'\necho 'Git SHA: fixture'\n",
    )
    .unwrap();
    std::fs::set_permissions(&newer, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (refused, _dir) = run_etcd_packaging(&newer, &newer);
    assert!(!refused.status.success(), "etcd 3.5 is refused");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("expected etcd 3.4"), "{stderr}");
}
