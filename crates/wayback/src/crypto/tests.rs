use super::*;

fn ring_of(ids: &[&str], current: Option<&str>) -> (Keyring, Vec<SecretString>) {
    let keys: Vec<_> = ids.iter().map(|_| random_key_bytes()).collect();
    let encoded: Vec<_> = keys.iter().map(encode_key).collect();
    let ring = Keyring::new(
        ids.iter().map(|s| s.to_string()).zip(keys).collect(),
        current,
    )
    .unwrap();
    (ring, encoded)
}

#[test]
fn seals_name_their_key_and_open_with_the_same_context_only() {
    let (ring, _) = ring_of(&["k1"], None);
    let sealed = ring.seal(b"hunter2", "binding:b-1");
    assert!(sealed.starts_with("wbenc:v1:k1:"), "{sealed}");
    assert!(!sealed.contains("hunter2"));
    assert_eq!(sealed_key_id(&sealed), Some("k1"));
    assert_eq!(ring.open(&sealed, "binding:b-1").unwrap(), b"hunter2");
    assert!(matches!(
        ring.open(&sealed, "binding:b-2"),
        Err(CryptoError::Unauthentic(id)) if id == "k1"
    ));
    // Two seals of one value differ (fresh nonce).
    assert_ne!(sealed, ring.seal(b"hunter2", "binding:b-1"));
}

#[test]
fn rotation_opens_with_any_key_and_seals_with_the_current() {
    let keys = [random_key_bytes(), random_key_bytes()];
    let b64: Vec<_> = keys.iter().map(encode_key).collect();
    let decode = |id: &str, i: usize| (id.to_string(), decode_key(id, &b64[i]).unwrap());
    let old = Keyring::new(vec![decode("old", 0)], None).unwrap();
    let sealed = old.seal(b"secret", "ctx");
    let both = Keyring::new(vec![decode("old", 0), decode("new", 1)], Some("new")).unwrap();
    assert!(both.is_stale(&sealed));
    assert_eq!(both.open(&sealed, "ctx").unwrap(), b"secret");
    let resealed = both.seal(b"secret", "ctx");
    assert!(!both.is_stale(&resealed));
    let only_new = Keyring::new(vec![decode("new", 1)], None).unwrap();
    assert_eq!(only_new.open(&resealed, "ctx").unwrap(), b"secret");
    assert!(matches!(
        only_new.open(&sealed, "ctx"),
        Err(CryptoError::MissingKey(id)) if id == "old"
    ));
}

#[test]
fn a_wrong_key_under_the_same_id_and_altered_values_fail() {
    let (a, _) = ring_of(&["k"], None);
    let (b, _) = ring_of(&["k"], None);
    let sealed = a.seal(b"x", "c");
    assert!(matches!(
        b.open(&sealed, "c"),
        Err(CryptoError::Unauthentic(_))
    ));
    let mut altered = sealed.clone().into_bytes();
    let last = altered.len() - 3;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    assert!(a.open(&altered, "c").is_err());
    assert!(matches!(a.open("plain", "c"), Err(CryptoError::Malformed)));
    assert!(matches!(
        a.open("wbenc:v1:k:AAAA", "c"),
        Err(CryptoError::Malformed)
    ));
}

#[test]
fn data_keys_wrap_and_unwrap() {
    let (ring, _) = ring_of(&["a", "b"], Some("b"));
    let dk = DataKey::generate();
    let wrapped = ring.wrap(&dk, "instance:i-1");
    assert_eq!(sealed_key_id(&wrapped), Some("b"));
    let back = ring.unwrap(&wrapped, "instance:i-1").unwrap();
    assert_eq!(back.expose(), dk.expose());
    assert!(ring.unwrap(&wrapped, "instance:i-2").is_err());
}

#[test]
fn configuration_errors_are_named() {
    assert!(matches!(
        Keyring::new(vec![], None),
        Err(CryptoError::NoKeys)
    ));
    let two = || {
        vec![
            ("a".into(), random_key_bytes()),
            ("b".into(), random_key_bytes()),
        ]
    };
    assert!(matches!(
        Keyring::new(two(), None),
        Err(CryptoError::NoCurrent)
    ));
    assert!(matches!(
        Keyring::new(two(), Some("c")),
        Err(CryptoError::UnknownCurrent(c)) if c == "c"
    ));
    assert!(matches!(
        Keyring::new(vec![("a:b".into(), random_key_bytes())], None),
        Err(CryptoError::BadKeyId(_))
    ));
    let short = SecretString::from("AAAA".to_string());
    assert!(matches!(
        decode_key("k", &short),
        Err(CryptoError::BadKey { .. })
    ));
}

#[test]
fn debug_output_never_shows_key_material() {
    let (ring, encoded) = ring_of(&["k1"], None);
    let shown = format!("{ring:?} {:?}", DataKey::generate());
    assert!(shown.contains("k1"));
    assert!(!shown.contains(encoded[0].expose_secret()), "{shown}");
    assert!(shown.contains("redacted"));
}

#[test]
fn a_generated_key_file_is_made_once_with_mode_0600_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let none = BTreeMap::new();
    let first = keyfile::keyring(&none, None, dir.path(), keyfile::WhenNoKey::Generate).unwrap();
    let path = dir.path().join(keyfile::KEY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let sealed = first.seal(b"s", "c");
    let again = keyfile::keyring(&none, None, dir.path(), keyfile::WhenNoKey::Existing).unwrap();
    assert_eq!(again.current_id(), first.current_id());
    assert_eq!(again.open(&sealed, "c").unwrap(), b"s");
    // Configured keys take over sealing; the generated key still opens.
    let configured = BTreeMap::from([("ops-1".to_string(), encode_key(&random_key_bytes()))]);
    let mixed = keyfile::keyring(&configured, None, dir.path(), keyfile::WhenNoKey::Existing);
    let mixed = mixed.unwrap();
    assert_eq!(mixed.current_id(), "ops-1");
    assert_eq!(mixed.open(&sealed, "c").unwrap(), b"s");
    let empty = tempfile::tempdir().unwrap();
    assert!(keyfile::keyring(&none, None, empty.path(), keyfile::WhenNoKey::Existing).is_err());
}

#[test]
fn mac_keys_are_stable_per_key_and_purpose_and_differ_otherwise() {
    let (ring, encoded) = ring_of(&["k1", "k2"], Some("k2"));
    let tag = |key: ring::hmac::Key| ring::hmac::sign(&key, b"payload").as_ref().to_vec();
    // Another keyring built from the same key material (another broker, or after a restart).
    let again = Keyring::new(
        vec![
            ("k1".into(), decode_key("k1", &encoded[0]).unwrap()),
            ("k2".into(), decode_key("k2", &encoded[1]).unwrap()),
        ],
        Some("k2"),
    )
    .unwrap();
    let (id, current) = ring.current_mac_key("session");
    assert_eq!(id, "k2");
    let first = tag(current);
    assert_eq!(first, tag(again.mac_key("k2", "session").unwrap()));
    assert_ne!(
        first,
        tag(ring.mac_key("k1", "session").unwrap()),
        "another key"
    );
    assert_ne!(
        first,
        tag(ring.mac_key("k2", "other").unwrap()),
        "another purpose"
    );
    assert!(ring.mac_key("k3", "session").is_none());
}
