use super::*;
use secrecy::ExposeSecret;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn layers_defaults_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wayback.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9000\"\n[postgres]\nport_min = 41000\nport_max = 41010\n[broker]\nusername = \"file-user\"\n",
    )
    .unwrap();
    let s = Settings::load_from(
        Some(&file),
        env(&[
            ("WAYBACK_BROKER_USERNAME", "env-user"),
            ("WAYBACK_BROKER_PASSWORD", "s3cret"),
        ]),
    )
    .unwrap();
    assert_eq!(s.listen.port(), 9000, "file overrides default");
    assert_eq!(s.postgres.port_min, 41000);
    assert_eq!(s.broker.username, "env-user", "env overrides file");
    assert_eq!(s.broker.password.unwrap().expose_secret(), "s3cret");
    assert_eq!(s.jobs.concurrency, 8, "default kept");
}

#[test]
fn bad_values_name_the_variable_and_hide_secrets() {
    let e = Settings::load_from(None, env(&[("WAYBACK_PG_PORT_MIN", "lots")])).unwrap_err();
    assert!(e.to_string().contains("WAYBACK_PG_PORT_MIN"), "{e}");
    let e = Settings::load_from(None, env(&[("WAYBACK_LISTEN", "nowhere")])).unwrap_err();
    assert!(e.to_string().contains("WAYBACK_LISTEN"), "{e}");
}

#[test]
fn unknown_keys_in_the_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
    assert!(e.to_string().contains("lisen"), "{e}");
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let s = Settings::load_from(None, env(&[("WAYBACK_BROKER_PASSWORD", "hunter2")])).unwrap();
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[test]
fn validate_refuses_inverted_port_range() {
    let mut s = Settings::default();
    s.postgres.port_min = 5000;
    s.postgres.port_max = 4000;
    assert!(s.validate().is_err());
    assert!(Settings::default().validate().is_ok());
}

#[test]
fn agents_come_as_name_url_pairs_and_bad_ones_are_named() {
    let s = Settings::load_from(
        None,
        env(&[
            (
                "WAYBACK_AGENTS",
                " db-1=https://10.0.1.5:8443/ , db-2=http://10.0.1.6:8443",
            ),
            ("WAYBACK_AGENTS_PASSWORD", "agent-secret"),
        ]),
    )
    .unwrap();
    assert_eq!(
        s.agents.urls,
        vec![
            AgentEndpoint {
                name: "db-1".into(),
                url: "https://10.0.1.5:8443".into()
            },
            AgentEndpoint {
                name: "db-2".into(),
                url: "http://10.0.1.6:8443".into()
            },
        ]
    );
    s.validate().unwrap();
    assert!(!format!("{s:?}").contains("agent-secret"));
    for (bad, says) in [
        ("db-1", "not name=URL"),
        ("db 1=https://x", "letters, digits"),
        ("a=https://x,a=https://y", "appears twice"),
        ("a=10.0.1.5:8443", "not an http(s) URL"),
    ] {
        let e = Settings::load_from(None, env(&[("WAYBACK_AGENTS", bad)])).unwrap_err();
        assert!(
            e.to_string().contains("WAYBACK_AGENTS") && e.to_string().contains(says),
            "{bad}: {e}"
        );
    }
    // Agents without the password they need, and half a TLS pair, are refused by name.
    let mut s = Settings::load_from(None, env(&[("WAYBACK_AGENTS", "a=https://x")])).unwrap();
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("agents.password"));
    s.agents.urls.clear();
    s.agent.tls_cert = Some("/etc/agent.crt".into());
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("agent.tls_key"));
}

#[test]
fn encryption_keys_come_from_the_environment_and_are_checked() {
    let key = "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE=";
    let env = |pairs: Vec<(&'static str, String)>| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        }
    };
    let s = Settings::load_from(
        None,
        env(vec![
            ("WAYBACK_ENCRYPTION_KEYS", format!("a:{key}, b:{key}")),
            ("WAYBACK_ENCRYPTION_CURRENT_KEY", "b".into()),
        ]),
    )
    .unwrap();
    assert_eq!(s.encryption.keys.len(), 2);
    assert_eq!(s.encryption.current_key.as_deref(), Some("b"));
    s.validate().unwrap();
    let no_current = Settings::load_from(
        None,
        env(vec![(
            "WAYBACK_ENCRYPTION_KEYS",
            format!("a:{key},b:{key}"),
        )]),
    )
    .unwrap();
    assert!(no_current
        .validate()
        .unwrap_err()
        .to_string()
        .contains("encryption.current_key"));
    let short = Settings::load_from(
        None,
        env(vec![("WAYBACK_ENCRYPTION_KEYS", "a:AAAA".into())]),
    )
    .unwrap();
    let err = short.validate().unwrap_err().to_string();
    assert!(
        err.contains("encryption.keys") && !err.contains("AAAA"),
        "{err}"
    );
    let bad = Settings::load_from(
        None,
        env(vec![("WAYBACK_ENCRYPTION_KEYS", "nocolon".into())]),
    );
    let err = bad.unwrap_err().to_string();
    assert!(err.contains("<redacted>"), "{err}");
}

#[test]
fn the_bindings_sslmode_is_verify_full_unless_set_to_require() {
    let s = Settings::load_from(None, env(&[])).unwrap();
    assert_eq!(s.tls.client_sslmode, ClientSslMode::VerifyFull);
    let s = Settings::load_from(None, env(&[("WAYBACK_TLS_CLIENT_SSLMODE", "require")])).unwrap();
    assert!(!s.tls.client_sslmode.verifies());
    let e = Settings::load_from(None, env(&[("WAYBACK_TLS_CLIENT_SSLMODE", "verify-ca")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("WAYBACK_TLS_CLIENT_SSLMODE") && e.contains("verify-full or require"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, "[tls]\nclient_sslmode = \"require\"\n").unwrap();
    let s = Settings::load_from(Some(&file), env(&[])).unwrap();
    assert_eq!(s.tls.client_sslmode, ClientSslMode::Require);
    std::fs::write(&file, "[tls]\nclient_sslmode = \"disable\"\n").unwrap();
    assert!(Settings::load_from(Some(&file), env(&[])).is_err());
}
