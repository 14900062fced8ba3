use super::*;
use crate::crypto::random_key_bytes;

const PREFIX: &str = "spaces/s1/instances/i1";

fn ring(keys: &[(&str, &secrecy::SecretBox<[u8; 32]>)], current: &str) -> Keyring {
    use secrecy::ExposeSecret;
    Keyring::new(
        keys.iter()
            .map(|(id, k)| {
                (
                    id.to_string(),
                    secrecy::SecretBox::new(Box::new(*k.expose_secret())),
                )
            })
            .collect(),
        Some(current),
    )
    .unwrap()
}

#[tokio::test]
async fn ensure_generates_once_and_rekey_rewraps_without_changing_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::local(dir.path()).unwrap();
    let (old, new) = (random_key_bytes(), random_key_bytes());
    let ring_old = ring(&[("old", &old)], "old");
    assert!(ensure(&store, Some(&ring_old), PREFIX, false)
        .await
        .unwrap()
        .is_none());
    let key = ensure(&store, Some(&ring_old), PREFIX, true)
        .await
        .unwrap()
        .unwrap();
    let again = ensure(&store, Some(&ring_old), PREFIX, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.expose(), again.expose(), "present means encrypted");
    assert_eq!(load(&store, PREFIX).await.unwrap().unwrap().key_id, "old");

    let both = ring(&[("old", &old), ("new", &new)], "new");
    let report = rewrap_all(&store, &both).await.unwrap();
    assert_eq!((report.keys, report.rewrapped), (1, 1));
    assert_eq!(rewrap_all(&store, &both).await.unwrap().rewrapped, 0);
    let only_new = ring(&[("new", &new)], "new");
    let unwrapped = data_key(&store, Some(&only_new), PREFIX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unwrapped.expose(), key.expose());
    let text =
        String::from_utf8(store.get(&doc_key(PREFIX)).await.unwrap().unwrap().to_vec()).unwrap();
    assert!(text.contains(r#""key_id":"new""#), "{text}");
}

#[tokio::test]
async fn a_missing_or_wrong_key_names_the_instance_and_the_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::local(dir.path()).unwrap();
    let k = random_key_bytes();
    ensure(&store, Some(&ring(&[("k7", &k)], "k7")), PREFIX, true)
        .await
        .unwrap();
    let other = random_key_bytes();
    let e = data_key(&store, Some(&ring(&[("k8", &other)], "k8")), PREFIX)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("instance i1") && e.contains("k7"), "{e}");
    let e = data_key(&store, Some(&ring(&[("k7", &other)], "k7")), PREFIX)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("instance i1") && e.contains("k7"), "{e}");
    let e = data_key(&store, None, PREFIX)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("k7"), "{e}");
    // Bound to its prefix: a key.json copied elsewhere does not unwrap.
    let bytes = store.get(&doc_key(PREFIX)).await.unwrap().unwrap();
    let elsewhere = "spaces/s1/instances/i2";
    store.put(&doc_key(elsewhere), bytes).await.unwrap();
    assert!(
        data_key(&store, Some(&ring(&[("k7", &k)], "k7")), elsewhere)
            .await
            .is_err()
    );
}

#[test]
fn an_archive_key_serializes_as_base64_and_never_debugs() {
    let key = ArchiveKey(DataKey::generate());
    let json = serde_json::to_string(&key).unwrap();
    let back: ArchiveKey = serde_json::from_str(&json).unwrap();
    assert!(back == key);
    assert_eq!(format!("{key:?}"), "ArchiveKey(<redacted>)");
    assert!(serde_json::from_str::<ArchiveKey>(r#""c2hvcnQ=""#).is_err());
}
