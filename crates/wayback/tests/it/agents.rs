//! Scale-out: a broker and two `wayback agent` processes on 127.0.0.1, each with its own port,
//! data directory and TLS certificate (made with openssl for 127.0.0.1), all archiving to the
//! same object storage (the shared S3 server when the test script provides one, else a local
//! directory), and one cluster CA (the broker's credentials carry it; agents issue from it).
//! New instances spread over the agents; provision, bind and deprovision run through them (a
//! binding verifies its agent's cluster with `sslmode=verify-full` and the credentials' CA);
//! an agent killed in the middle of a provision finishes it when it returns; and an instance
//! whose agent is gone comes back on the other agent with everything it archived.

use crate::common;
use crate::common::archive_wait::{prefix_of, wait_for_backup};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use wayback::config::AgentEndpoint;
use wayback::domain::InstanceId;
use wayback::storage::{ObjectStore, StorageSettings};

const AGENT_USER: &str = "broker";

/// One `wayback agent` child process; killed (SIGKILL) and its clusters stopped on drop.
pub(crate) struct AgentProc {
    pub(crate) name: String,
    port: u16,
    pub(crate) data_dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl AgentProc {
    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub(crate) fn start(&mut self) {
        let log = std::fs::File::create(self.data_dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wayback"))
            .arg("--config")
            .arg(&self.config)
            .arg("agent")
            .env_remove("WAYBACK_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn wayback agent");
        self.child = Some(child);
    }

    /// `wayback drain --agent --json` of this agent's data directory with its settings, run
    /// as BOSH's drain would beside the running agent; (exit status success, report).
    pub(crate) fn drain(&self) -> (bool, serde_json::Value) {
        drain_report(
            Command::new(env!("CARGO_BIN_EXE_wayback"))
                .arg("--config")
                .arg(&self.config)
                .args(["drain", "--agent", "--json", "--timeout-secs", "150"])
                .env_remove("WAYBACK_DATA_DIR")
                .env("WAYBACK_LOG", "warn")
                .stdin(Stdio::null()),
        )
    }

    /// SIGKILL: no shutdown of any kind (its clusters keep running, as on a lost process).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as bpm stops it, and wait for the exit status.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
        stop_all_clusters(&self.data_dir);
    }
}

/// The broker, its agents, the CA file and the archive they share.
pub(crate) struct Fleet {
    pub(crate) app: TestApp,
    pub(crate) agents: Vec<AgentProc>,
    http: reqwest::Client,
    pub(crate) password: String,
    archive: StorageSettings,
    pub(crate) ca: PathBuf,
    /// The operator's key (base64) the broker and every agent have, as `fleet`.
    fleet_key: secrecy::SecretString,
    _root: tempfile::TempDir,
}

/// A test CA and a server certificate it issued for 127.0.0.1: (CA, certificate, key).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name);
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        p("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=wayback test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "agent.key",
        "-out",
        "agent.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "agent.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "agent.crt",
        "-extfile",
        "server.ext",
    ]);
    (p("ca.crt"), p("agent.crt"), p("agent.key"))
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl Fleet {
    pub(crate) async fn start(
        n: usize,
        customise: impl FnOnce(&mut wayback::config::Settings),
    ) -> Fleet {
        let root = test_root();
        let (ca, cert, key) = make_certs(root.path());
        let password = format!("agent-{}", new_id());
        let archive = shared_s3_settings("ag").unwrap_or_else(|| StorageSettings {
            url: format!("file://{}", root.path().join("archive").display()),
            ..StorageSettings::default()
        });
        // One port slice for everyone: each agent has the whole range on its own machine, and
        // here the machines are one, so a taken port sends the broker to another (PortInUse).
        let base = test_settings(root.path(), "x").postgres.port_min;
        // One cluster CA for the broker and every agent, as the README asks: agents issue
        // their clusters' certificates, the broker's credentials carry the CA.
        let cluster_ca = root.path().join("cluster-ca");
        wayback::tls::CaSource::default().load(&cluster_ca).unwrap();
        let (ca_cert, ca_key) = (
            cluster_ca.join("tls").join(wayback::tls::CA_CERT_FILE),
            cluster_ca.join("tls").join(wayback::tls::CA_KEY_FILE),
        );
        // The operator's key, the same on the broker and every agent (as BOSH gives it): the
        // archive data keys agents write are wrapped with it, and the broker unwraps them.
        let fleet_key = wayback::crypto::encode_key(&wayback::crypto::random_key_bytes());
        let mut agents = Vec::new();
        for i in 0..n {
            let name = format!("agent-{}", (b'a' + i as u8) as char);
            let data_dir = root.path().join(&name);
            std::fs::create_dir_all(&data_dir).unwrap();
            let port = free_port();
            let os_user = std::env::var("WAYBACK_PG_OS_USER").unwrap_or_else(|_| "wayback".into());
            let mut text = format!(
                "data_dir = {}\n\n[agent]\nlisten = \"127.0.0.1:{port}\"\nusername = \"{AGENT_USER}\"\npassword = {}\ntls_cert = {}\ntls_key = {}\nmax_instances = 10\n\n[postgres]\nos_user = {}\nport_min = {base}\nport_max = {}\n\n[wal]\nwayback_bin = {}\narchive_timeout_secs = 2\n\n[log]\nlevel = \"info\"\n\n[archive]\nurl = {}\n",
                toml_str(&data_dir.display().to_string()),
                toml_str(&password),
                toml_str(&cert.display().to_string()),
                toml_str(&key.display().to_string()),
                toml_str(&os_user),
                base + 99,
                toml_str(env!("CARGO_BIN_EXE_wayback")),
                toml_str(&archive.url),
            );
            for (k, v) in [
                ("endpoint", archive.endpoint.clone()),
                ("region", archive.region.clone()),
                ("access_key_id", archive.access_key_id.clone()),
                (
                    "secret_access_key",
                    archive
                        .secret_access_key
                        .as_ref()
                        .map(|s| secrecy::ExposeSecret::expose_secret(s).to_string()),
                ),
            ] {
                if let Some(v) = v {
                    text.push_str(&format!("{k} = {}\n", toml_str(&v)));
                }
            }
            text.push_str(&format!(
                "\n[tls]\nca_cert = {}\nca_key = {}\n",
                toml_str(&ca_cert.display().to_string()),
                toml_str(&ca_key.display().to_string()),
            ));
            text.push_str(&format!(
                "\n[encryption.keys]\nfleet = {}\n",
                toml_str(secrecy::ExposeSecret::expose_secret(&fleet_key))
            ));
            let config = root.path().join(format!("{name}.toml"));
            std::fs::write(&config, text).unwrap();
            let mut agent = AgentProc {
                name,
                port,
                data_dir,
                config,
                child: None,
            };
            agent.start();
            agents.push(agent);
        }
        let http = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap(),
            )
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let fleet_agents: Vec<AgentEndpoint> = agents
            .iter()
            .map(|a| AgentEndpoint {
                name: a.name.clone(),
                url: a.url(),
            })
            .collect();
        for a in &agents {
            wait_healthy(&http, a).await;
        }
        let (archive_for_app, pw, ca_for_app) = (archive.clone(), password.clone(), ca.clone());
        let fleet_key_for_app = fleet_key.clone();
        let app = spawn_app_with(move |s| {
            s.postgres.port_min = base;
            s.postgres.port_max = base + 99;
            s.archive = archive_for_app;
            s.agents.urls = fleet_agents;
            s.agents.username = AGENT_USER.into();
            s.agents.password = Some(pw.into());
            s.agents.ca_cert = Some(ca_for_app);
            s.tls.ca_cert = Some(ca_cert.display().to_string());
            s.tls.ca_key = Some(ca_key.display().to_string().into());
            s.encryption.keys.insert("fleet".into(), fleet_key_for_app);
            customise(s);
        })
        .await;
        Fleet {
            app,
            agents,
            http,
            password,
            archive,
            ca,
            fleet_key,
            _root: root,
        }
    }

    /// The keyring the broker and the agents share.
    fn keyring(&self) -> wayback::crypto::Keyring {
        let key = wayback::crypto::decode_key("fleet", &self.fleet_key).unwrap();
        wayback::crypto::Keyring::new(vec![("fleet".into(), key)], None).unwrap()
    }

    /// The data key of instance `id`'s archive (None: in clear), as the broker unwraps it.
    pub(crate) async fn data_key(&self, id: &str) -> Option<wayback::archive::keydoc::ArchiveKey> {
        let ring = self.keyring();
        let prefix = crate::common::archive_wait::prefix_of(id);
        wayback::archive::keydoc::data_key(&self.store(), Some(&ring), prefix.as_str())
            .await
            .unwrap()
            .map(wayback::archive::keydoc::ArchiveKey)
    }

    fn agent(&self, name: &str) -> &AgentProc {
        self.agents.iter().find(|a| a.name == name).unwrap()
    }

    pub(crate) fn agent_mut(&mut self, name: &str) -> &mut AgentProc {
        self.agents.iter_mut().find(|a| a.name == name).unwrap()
    }

    /// The agent the store recorded for `id`.
    pub(crate) async fn placed_on(&self, id: &str) -> Option<String> {
        self.app
            .store
            .get_instance(&InstanceId::parse(id.to_string()).unwrap())
            .await
            .unwrap()
            .and_then(|r| r.agent)
    }

    async fn agent_call(&self, agent: &str, method: Method, path: &str) -> reqwest::Response {
        self.http
            .request(method, format!("{}{path}", self.agent(agent).url()))
            .basic_auth(AGENT_USER, Some(&self.password))
            .send()
            .await
            .unwrap()
    }

    /// `wayback agents --json` with the broker's settings: (exit code, report).
    fn agents_command(&self) -> (i32, Value) {
        let urls: Vec<String> = self
            .agents
            .iter()
            .map(|a| format!("{}={}", a.name, a.url()))
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_wayback"))
            .args(["agents", "--json"])
            .env("WAYBACK_DATA_DIR", &self.app.data_dir)
            .env(
                "WAYBACK_ENCRYPTION_KEYS",
                format!(
                    "fleet:{}",
                    secrecy::ExposeSecret::expose_secret(&self.fleet_key)
                ),
            )
            .env("WAYBACK_AGENTS", urls.join(","))
            .env("WAYBACK_AGENTS_USERNAME", AGENT_USER)
            .env("WAYBACK_AGENTS_PASSWORD", &self.password)
            .env("WAYBACK_AGENTS_CA_CERT", &self.ca)
            .env("WAYBACK_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "wayback agents printed no JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), report)
    }

    /// The broker's /metrics line for `metric{agent="name"}`.
    async fn agent_metric(&self, metric: &str, agent: &str) -> Option<String> {
        let text = self
            .app
            .client
            .get(format!("{}/metrics", self.app.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = format!("{metric}{{agent=\"{agent}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
    }

    pub(crate) fn store(&self) -> ObjectStore {
        ObjectStore::open(&self.archive).unwrap()
    }
}

async fn wait_healthy(http: &reqwest::Client, agent: &AgentProc) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let last = match http.get(format!("{}/v1/health", agent.url())).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => format!("{e:?}"),
        };
        assert!(
            Instant::now() < deadline,
            "agent {} not healthy in 90 s ({last}); its log:\n{}",
            agent.name,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_spread_over_agents_and_live_their_life_there() {
    if !pg_available() {
        return;
    }
    let fleet = Fleet::start(2, |_| {}).await;
    let app = &fleet.app;

    // The API wants the broker's credentials, over TLS.
    let r = fleet
        .http
        .get(format!("{}/v1/capacity", fleet.agents[0].url()))
        .basic_auth(AGENT_USER, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = fleet
        .agent_call("agent-a", Method::GET, "/v1/capacity")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cap: Value = r.json().await.unwrap();
    assert_eq!(
        (cap["instances"].as_u64(), cap["max_instances"].as_u64()),
        (Some(0), Some(10)),
        "{cap}"
    );
    assert!(cap["disk_available_bytes"].as_u64().unwrap() > 0, "{cap}");
    assert!(cap["memory_total_bytes"].as_u64().unwrap() > 0, "{cap}");

    // Four provisions, one after the other: each goes where there is most room.
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(app.provision_ready(&format!("db-{i}")).await);
    }
    let mut per_agent = std::collections::BTreeMap::new();
    for id in &ids {
        let agent = fleet.placed_on(id).await.expect("placement recorded");
        assert!(
            fleet
                .agent(&agent)
                .data_dir
                .join("clusters")
                .join(id)
                .join("pgdata")
                .is_dir(),
            "{id}'s cluster is not on {agent}"
        );
        assert!(!app.cluster_dir(id).exists(), "the broker ran {id} itself");
        *per_agent.entry(agent).or_insert(0) += 1;
    }
    assert_eq!(
        per_agent.into_iter().collect::<Vec<_>>(),
        vec![("agent-a".to_string(), 2), ("agent-b".to_string(), 2)]
    );
    let cap: Value = fleet
        .agent_call("agent-b", Method::GET, "/v1/capacity")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cap["instances"].as_u64(), Some(2), "{cap}");

    // The agent takes only the instance's own prefix (it builds the archive target itself).
    let other = prefix_of(&ids[1]);
    let r = fleet
        .http
        .put(format!(
            "{}/v1/clusters/{}/archive",
            fleet.agent(&fleet.placed_on(&ids[0]).await.unwrap()).url(),
            ids[0]
        ))
        .basic_auth(AGENT_USER, Some(&fleet.password))
        .json(&serde_json::json!({ "prefix": other.as_str(), "archive_timeout_secs": 60 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["permanent"], true, "{e}");

    // The operator's view: both agents up, two instances each, by their own count and ours.
    let (code, report) = fleet.agents_command();
    assert_eq!(code, 0, "{report}");
    for row in report.as_array().unwrap() {
        assert_eq!(row["up"], true, "{row}");
        assert_eq!(row["placed"], 2, "{row}");
        assert_eq!(row["capacity"]["instances"], 2, "{row}");
    }
    // And the supervisor's: the metrics say the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet
        .agent_metric("wayback_agent_instances", "agent-a")
        .await
        .as_deref()
        != Some("2")
    {
        assert!(
            Instant::now() < deadline,
            "wayback_agent_instances never reached 2"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        fleet
            .agent_metric("wayback_agent_up", "agent-b")
            .await
            .as_deref(),
        Some("1")
    );

    // Bind: the credentials name the agent's host and port, and they work.
    let id = &ids[0];
    let agent = fleet.placed_on(id).await.unwrap();
    let binding = new_id();
    let creds = app.bind_sync(id, &binding).await;
    assert_eq!(creds["host"], "127.0.0.1", "{creds}");
    // The agent's cluster verifies with the CA the broker's credentials carry.
    let mut verified = connect_verified(&creds, None)
        .await
        .expect("verify-full with the credentials' CA, on an agent");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut verified)
        .await
        .unwrap();
    assert_eq!(one, 1);
    drop(verified);
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('on an agent')",
    )
    .await;
    drop(conn);
    // Unbind drops the role on the agent: the credentials stop working.
    let r = app.delete_binding(id, &binding, false).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(connect(creds["uri"].as_str().unwrap()).await.is_err());

    // Deprovision: the final WAL reaches the archive, the cluster leaves the agent.
    app.deprovision_done(id).await;
    assert!(!fleet
        .agent(&agent)
        .data_dir
        .join("clusters")
        .join(id)
        .exists());
    // Sealed with the instance's data key, which the agent wrapped with the fleet's key.
    let store = fleet.store();
    let key =
        wayback::archive::keydoc::data_key(&store, Some(&fleet.keyring()), prefix_of(id).as_str())
            .await
            .unwrap()
            .map(wayback::archive::keydoc::ArchiveKey);
    assert!(key.is_some(), "the agent's cluster archives encrypted");
    let doc = wayback::archive::instance_doc::read(&store, &prefix_of(id), key.as_ref())
        .await
        .unwrap()
        .expect("instance.json written");
    assert_eq!(doc.state, "deleted", "{doc:?}");
    assert!(doc.final_lsn.is_some(), "{doc:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_mid_provision_finishes_it_when_it_returns() {
    if !pg_available() {
        return;
    }
    let mut fleet = Fleet::start(1, |s| s.jobs.max_attempts = 8).await;
    let id = new_id();
    let r = fleet
        .app
        .put_instance(&id, &provision_body(SMALL, "interrupted"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let op = op["operation"].as_str().unwrap().to_string();
    // Kill the agent once it holds the instance (placed, its cluster being made).
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.placed_on(&id).await.is_none() {
        assert!(Instant::now() < deadline, "never placed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.agent_mut("agent-a").kill();
    // Meanwhile the step fails against the dead agent and is retried (the job records it),
    // and the operation stays in progress.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = fleet
            .app
            .store
            .get_job(&op)
            .await
            .unwrap()
            .expect("the job");
        let unreachable = job
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("agent-a did not answer"));
        if job.attempts >= 2 && unreachable {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no retry against the dead agent: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = {
        let r = fleet
            .app
            .osb(
                Method::GET,
                &format!("/v2/service_instances/{id}/last_operation?operation={op}"),
            )
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "in progress", "{body}");
    // The agent comes back (same data directory, same port): the provision completes.
    fleet.agent_mut("agent-a").start();
    wait_healthy(&fleet.http, fleet.agent("agent-a")).await;
    let (status, body) = fleet.app.poll_instance(&id, Some(&op)).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}\nagent log:\n{}",
        fleet.agent("agent-a").log()
    );
    let creds = fleet.app.bind_sync(&id, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    exec(&mut conn, "CREATE TABLE after_return (v int)").await;
    drop(conn);

    // The VM reboots: agent and clusters down; the agent starts its clusters when it returns.
    let agent = fleet.agent_mut("agent-a");
    agent.kill();
    stop_all_clusters(&agent.data_dir.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while connect(creds["uri"].as_str().unwrap()).await.is_ok() {
        assert!(Instant::now() < deadline, "the cluster did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.start();
    wait_healthy(&fleet.http, fleet.agent("agent-a")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(creds["uri"].as_str().unwrap()).await {
            Ok(mut conn) => {
                exec(&mut conn, "INSERT INTO after_return VALUES (1)").await;
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "not back after the agent: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stopped as bpm stops it (SIGTERM): it closes its API and shuts its clusters down cleanly.
    let agent = fleet.agent_mut("agent-a");
    let status = agent.terminate();
    assert!(status.success(), "{status}\n{}", agent.log());
    let cluster = agent.data_dir.join("clusters").join(&id);
    assert_eq!(postmaster_pid(&cluster), None, "the cluster still runs");
    assert!(connect(creds["uri"].as_str().unwrap()).await.is_err());
}

/// `clone-from "production"` as `name`: (the agent it was placed on, rows in `orders`).
async fn undo(fleet: &Fleet, name: &str) -> (String, i64) {
    let (clone, _) = fleet
        .app
        .clone_ready(name, serde_json::json!({ "clone-from": "production" }))
        .await;
    let creds = fleet.app.bind_sync(&clone, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    let rows = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (fleet.placed_on(&clone).await.unwrap(), rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_whose_agent_is_gone_comes_back_on_the_other_agent() {
    if !pg_available() {
        return;
    }
    let mut fleet = Fleet::start(2, |s| s.jobs.max_attempts = 3).await;
    let store = fleet.store();
    let src = fleet.app.provision_ready("production").await;
    let gone = fleet.placed_on(&src).await.unwrap();
    let other = if gone == "agent-a" {
        "agent-b"
    } else {
        "agent-a"
    };
    wait_for_backup(&store, &src).await;
    let creds = fleet.app.bind_sync(&src, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 500)",
    )
    .await;
    drop(conn);
    // Everything committed is archived (the agent's own switch, then the segment appears).
    let r = fleet
        .agent_call(
            &gone,
            Method::POST,
            &format!("/v1/clusters/{src}/switch-wal"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let switched: Value = r.json().await.unwrap();
    let key = format!(
        "{}/wal/{}",
        prefix_of(&src).as_str(),
        switched["segment"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while store.get(&key).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "{key} not archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The VM is lost: the agent dies and its clusters with it.
    {
        let agent = fleet.agent_mut(&gone);
        agent.kill();
        stop_all_clusters(&agent.data_dir.clone());
    }

    // The operator sees which agent is gone, and so do the metrics.
    let (code, report) = fleet.agents_command();
    assert_eq!(code, 1, "{report}");
    let row = report
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == gone.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["up"], false, "{row}");
    assert!(
        row["error"].as_str().unwrap().contains("did not answer"),
        "{row}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet
        .agent_metric("wayback_agent_up", &gone)
        .await
        .as_deref()
        != Some("0")
    {
        assert!(
            Instant::now() < deadline,
            "wayback_agent_up never went to 0"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Undo while the source still counts as live: the fork cannot reach it, so the clone
    // takes what the archive holds, on the agent that answers, with every archived row.
    assert_eq!(
        undo(&fleet, "production-back").await,
        (other.to_string(), 500)
    );

    // A delete cannot reach it: the operation fails cleanly, naming the agent, and the
    // instance stays (its archive is whole).
    let r = fleet.app.delete_instance(&src).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, body) = fleet
        .app
        .poll_instance(&src, op["operation"].as_str())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "failed", "{body}");
    assert!(
        body["description"].as_str().unwrap_or("").contains(&gone),
        "the failure does not name the agent: {body}"
    );

    // Failed, but backed up: it can still be undone.
    assert_eq!(
        undo(&fleet, "production-again").await,
        (other.to_string(), 500)
    );
}

/// `wayback agent` with `configure` applied to its environment must refuse to start: its
/// stderr, after checking that it made nothing (no data directory).
fn agent_refusal(configure: impl FnOnce(&mut Command)) -> String {
    let root = test_root();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wayback"));
    cmd.arg("agent")
        .env("WAYBACK_DATA_DIR", root.path().join("agent"))
        .env("WAYBACK_AGENT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null());
    configure(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(
        !root.path().join("agent").exists(),
        "nothing made before the refusal"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_agent_without_the_brokers_keys_refuses_to_start_and_says_so() {
    let stderr = agent_refusal(|cmd| {
        cmd.env("WAYBACK_AGENT_PASSWORD", "agent-password-for-the-test")
            .env_remove("WAYBACK_ENCRYPTION_KEYS")
            .env_remove("WAYBACK_ARCHIVE_ENCRYPT");
    });
    assert!(
        stderr.contains("encryption.keys") && stderr.contains("WAYBACK_ENCRYPTION_KEYS"),
        "{stderr}"
    );
}

#[test]
fn an_agent_without_a_password_refuses_to_start_and_says_so() {
    let stderr = agent_refusal(|cmd| {
        cmd.env_remove("WAYBACK_AGENT_PASSWORD");
    });
    assert!(
        stderr.contains("agent.password") && stderr.contains("WAYBACK_AGENT_PASSWORD"),
        "{stderr}"
    );
}
