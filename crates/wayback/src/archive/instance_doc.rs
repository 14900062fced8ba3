//! `instance.json`: the archive describes itself without the broker's database.
//!
//! Every instance prefix carries one small JSON document with who the instance was (ids, space,
//! org, plan, every name it ever had with when and where each name came from), its life (created,
//! deleted, reaped) and where its history ends (final LSN and time). If the state database is
//! lost, [`rebuild_index`] lists `spaces/*/instances/*/instance.json` and gives back everything
//! needed to find deleted instances by name again; the restore window then comes from the
//! prefix itself (`window.rs`).
//!
//! The document is written with one `put` (atomic on both backends: a reader sees the old or
//! the new document, never half), so it can be rewritten freely: on provision, on rename, on
//! deprovision (before the cluster is destroyed) and when the reaper empties the prefix. It is
//! built from the state database by the callers in `jobs`; this module only knows its format.
//!
//! When the instance's archive is encrypted (its prefix has a `key.json`), the document is
//! stored sealed with its data key: `{"format":1,"sealed":"<base64 nonce | ciphertext | tag>"}`,
//! AES-256-GCM bound to the document's object key, so that names, org and creator are not
//! readable from the bucket. [`rebuild_index`] recognises the envelope and opens it with the key
//! `key.json` unwraps to; a document in clear (an instance in clear, or written before this
//! version) reads as before.
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::keydoc::{self, ArchiveKey};
use super::layout::InstancePrefix;
use super::ArchiveError;
use crate::crypto::Keyring;
use crate::storage::ObjectStore;

/// The document's format version. Readers refuse newer formats rather than misread them.
pub const FORMAT: u32 = 1;

/// Parallel GETs while rebuilding the index: enough to hide S3 latency, few enough to be polite.
const REBUILD_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDoc {
    pub format: u32,
    pub instance_id: String,
    pub space_guid: String,
    pub organization_guid: String,
    pub service_id: String,
    pub plan_id: String,
    /// The plan's name when the document was written (None if the catalog no longer has it).
    pub plan_name: Option<String>,
    /// Every name the instance had, oldest first.
    pub names: Vec<NameEntry>,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// The broker's state word: `ready`, `deleted`, … (`InstanceState::as_str`).
    pub state: String,
    /// Where a deleted instance's history ends: the LSN of its final WAL switch (`X/Y`).
    pub final_lsn: Option<String>,
    pub final_at: Option<DateTime<Utc>>,
    /// When the reaper removed the archive's WAL and backups (only this document is left).
    pub reaped_at: Option<DateTime<Utc>>,
    /// Who created the instance, as the platform's originating identity named them. Optional
    /// and left out when unknown, so older brokers read the document and its bytes (and hash)
    /// stay as they were for instances without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<CreatedBy>,
    /// For an instance made with `clone-from`: what it was cloned from (optional, as above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloned_from: Option<ClonedFrom>,
}

/// The originating identity of the request that created an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedBy {
    /// `cloudfoundry`, `kubernetes`, …
    pub platform: String,
    pub user_id: Option<String>,
}

/// The source of a clone, as the broker resolved `clone-from` before it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClonedFrom {
    pub instance_id: String,
    /// The name `clone-from` resolved to.
    pub name: String,
    /// The `point-in-time` (RFC 3339), or `latest`.
    pub point_in_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameEntry {
    pub name: String,
    /// `provision`, `update` (a rename), `cloud_controller`.
    pub source: String,
    pub recorded_at: DateTime<Utc>,
}

impl InstanceDoc {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("an instance document serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        // Read the version first, so a newer format says so instead of "missing field".
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let v: Version = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if v.format != FORMAT {
            return Err(format!(
                "instance.json format {} is not supported (this wayback reads format {FORMAT})",
                v.format
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// A digest of the content, so that callers can tell whether the stored copy is current
    /// without downloading it.
    pub fn content_hash(&self) -> String {
        hex::encode(super::frame::sha256(&self.to_json()))
    }

    /// The name the instance has (or had last).
    pub fn current_name(&self) -> Option<&str> {
        self.names.last().map(|n| n.name.as_str())
    }
}

/// The envelope of a document sealed with its instance's data key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedDoc {
    format: u32,
    /// base64 of `nonce | ciphertext | tag` of the document's JSON.
    sealed: String,
}

/// The document as stored: sealed with `key` (bound to its object key), or in clear.
pub fn stored_form(
    doc: &InstanceDoc,
    prefix: &InstancePrefix,
    key: Option<&ArchiveKey>,
) -> Vec<u8> {
    use base64::Engine;
    let Some(key) = key else {
        return doc.to_json();
    };
    let sealed = key
        .cipher()
        .seal(&doc.to_json(), prefix.instance_json().as_bytes());
    serde_json::to_vec_pretty(&SealedDoc {
        format: FORMAT,
        sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
    })
    .expect("an envelope serializes")
}

/// Whether stored bytes are a sealed document.
pub fn is_sealed(bytes: &[u8]) -> bool {
    serde_json::from_slice::<SealedDoc>(bytes).is_ok()
}

/// Reads stored bytes back: a sealed document opens with `key`, one in clear needs none.
pub fn from_stored(
    bytes: &[u8],
    prefix: &InstancePrefix,
    key: Option<&ArchiveKey>,
) -> Result<InstanceDoc, String> {
    use base64::Engine;
    let Ok(envelope) = serde_json::from_slice::<SealedDoc>(bytes) else {
        return InstanceDoc::from_json(bytes);
    };
    let key = key.ok_or("sealed with the instance's data key, and none was given")?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&envelope.sealed)
        .map_err(|_| "the sealed document is not base64".to_string())?;
    let plain = key
        .cipher()
        .open(&sealed, prefix.instance_json().as_bytes())
        .map_err(|e| e.to_string())?;
    InstanceDoc::from_json(&plain)
}

/// Writes the document (one `put`, which replaces the previous one atomically), sealed with
/// `key` when the instance's archive is encrypted.
pub async fn write(
    store: &ObjectStore,
    prefix: &InstancePrefix,
    doc: &InstanceDoc,
    key: Option<&ArchiveKey>,
) -> Result<(), ArchiveError> {
    store
        .put(&prefix.instance_json(), stored_form(doc, prefix, key))
        .await?;
    Ok(())
}

/// Reads an instance's document (opened with `key` when sealed); `None` when it has none.
pub async fn read(
    store: &ObjectStore,
    prefix: &InstancePrefix,
    key: Option<&ArchiveKey>,
) -> Result<Option<InstanceDoc>, ArchiveError> {
    let object = prefix.instance_json();
    match store.get(&object).await? {
        None => Ok(None),
        Some(bytes) => from_stored(&bytes, prefix, key)
            .map(Some)
            .map_err(|detail| ArchiveError::Corrupt {
                key: object,
                detail,
            }),
    }
}

/// What the archive says about its instances, without the state database.
#[derive(Debug, Default)]
pub struct RebuiltIndex {
    /// One per readable `instance.json`, ordered by space, then instance id.
    pub docs: Vec<InstanceDoc>,
    /// Documents that could not be used: (key, why). Reported, never silently dropped.
    pub unreadable: Vec<(String, String)>,
}

/// Whether `key` is an instance's `instance.json` (`spaces/S/instances/I/instance.json`).
fn is_instance_doc_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    parts.len() == 5 && parts[4] == "instance.json" && InstancePrefix::from_key(key).is_some()
}

/// Rebuilds the index of instances from object storage alone: lists every key under
/// `spaces/` once and reads each `instance.json`. A document whose ids do not match the key it
/// is stored under is reported as unreadable (a copied or misplaced file must not be trusted).
///
/// Listing `spaces/` walks every archived object (there is no glob in S3); this is a recovery
/// operation, run rarely. A sealed document is opened with the data key its `key.json`
/// unwraps to under `keyring`; one whose key is missing or does not unwrap is unreadable, with
/// an error naming the instance and the key id, and the others are indexed.
pub async fn rebuild_index(
    store: &ObjectStore,
    keyring: Option<&Keyring>,
) -> Result<RebuiltIndex, ArchiveError> {
    let keys: Vec<String> = store
        .list("spaces/")
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| is_instance_doc_key(k))
        .collect();
    let fetched: Vec<(
        String,
        Result<Option<bytes::Bytes>, crate::storage::StorageError>,
    )> = futures::stream::iter(keys)
        .map(|key| async move {
            let got = store.get(&key).await;
            (key, got)
        })
        .buffered(REBUILD_CONCURRENCY)
        .collect()
        .await;
    let mut index = RebuiltIndex::default();
    for (key, got) in fetched {
        let bytes = match got {
            Ok(Some(b)) => b,
            // Deleted between the listing and the read: nothing to index.
            Ok(None) => continue,
            // A transient failure must not make an instance vanish from a rebuilt index.
            Err(e) => return Err(e.into()),
        };
        let (space, instance) = InstancePrefix::from_key(&key).expect("filtered above");
        let prefix = InstancePrefix::new(&space, &instance);
        let data_key = if is_sealed(&bytes) {
            match keydoc::data_key(store, keyring, prefix.as_str()).await {
                Ok(k) => k.map(ArchiveKey),
                Err(ArchiveError::Storage(e)) => return Err(e.into()),
                Err(e) => {
                    index.unreadable.push((key, e.to_string()));
                    continue;
                }
            }
        } else {
            None
        };
        let doc = match from_stored(&bytes, &prefix, data_key.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                index.unreadable.push((key, e));
                continue;
            }
        };
        if doc.space_guid != space.as_str() || doc.instance_id != instance.as_str() {
            index.unreadable.push((
                key,
                format!(
                    "describes instance {} in space {}, not the prefix it is stored under",
                    doc.instance_id, doc.space_guid
                ),
            ));
            continue;
        }
        index.docs.push(doc);
    }
    index
        .docs
        .sort_by(|a, b| (&a.space_guid, &a.instance_id).cmp(&(&b.space_guid, &b.instance_id)));
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{InstanceId, SpaceGuid};

    fn sample(space: &str, id: &str) -> InstanceDoc {
        InstanceDoc {
            format: FORMAT,
            instance_id: id.into(),
            space_guid: space.into(),
            organization_guid: "org-1".into(),
            service_id: "svc".into(),
            plan_id: "plan-small".into(),
            plan_name: Some("small".into()),
            names: vec![
                NameEntry {
                    name: "orders".into(),
                    source: "provision".into(),
                    recorded_at: "2026-01-01T10:00:00Z".parse().unwrap(),
                },
                NameEntry {
                    name: "orders-old".into(),
                    source: "update".into(),
                    recorded_at: "2026-01-02T10:00:00Z".parse().unwrap(),
                },
            ],
            created_at: "2026-01-01T10:00:00Z".parse().unwrap(),
            deleted_at: None,
            state: "ready".into(),
            final_lsn: None,
            final_at: None,
            reaped_at: None,
            created_by: None,
            cloned_from: None,
        }
    }

    fn prefix(space: &str, id: &str) -> InstancePrefix {
        InstancePrefix::new(
            &SpaceGuid::parse(space).unwrap(),
            &InstanceId::parse(id).unwrap(),
        )
    }

    #[test]
    fn round_trips_and_refuses_other_formats() {
        let doc = sample("s1", "i1");
        assert_eq!(InstanceDoc::from_json(&doc.to_json()).unwrap(), doc);
        assert_eq!(doc.current_name(), Some("orders-old"));
        let mut newer = serde_json::to_value(&doc).unwrap();
        newer["format"] = 2.into();
        let e = InstanceDoc::from_json(newer.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("format 2"), "{e}");
        let mut changed = doc.clone();
        changed.state = "deleted".into();
        assert_ne!(changed.content_hash(), doc.content_hash());
    }

    /// A clone's origin is written only when known, and a document without it (an older
    /// broker's) reads as before; one with it reads in a reader that ignores unknown fields.
    #[test]
    fn the_origin_fields_are_optional() {
        let plain = sample("s1", "i1");
        let text = String::from_utf8(plain.to_json()).unwrap();
        assert!(
            !text.contains("created_by") && !text.contains("cloned_from"),
            "{text}"
        );
        let mut clone = plain.clone();
        clone.created_by = Some(CreatedBy {
            platform: "cloudfoundry".into(),
            user_id: Some("u-1".into()),
        });
        clone.cloned_from = Some(ClonedFrom {
            instance_id: "i0".into(),
            name: "production".into(),
            point_in_time: "latest".into(),
        });
        assert_eq!(InstanceDoc::from_json(&clone.to_json()).unwrap(), clone);
        #[derive(Deserialize)]
        struct OlderReader {
            instance_id: String,
        }
        let older: OlderReader = serde_json::from_slice(&clone.to_json()).unwrap();
        assert_eq!(older.instance_id, "i1");
    }

    #[test]
    fn recognises_document_keys_only() {
        assert!(is_instance_doc_key("spaces/s/instances/i/instance.json"));
        for other in [
            "spaces/s/instances/i/wal/000000010000000000000001",
            "spaces/s/instances/i/base/x/instance.json",
            "spaces/s/other/i/instance.json",
            "spaces/s/instances/instance.json",
        ] {
            assert!(!is_instance_doc_key(other), "{other}");
        }
    }

    #[tokio::test]
    async fn rebuilds_the_index_from_storage_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::local(dir.path()).unwrap();
        let a = sample("s1", "i-a");
        let mut b = sample("s2", "i-b");
        b.state = "deleted".into();
        b.deleted_at = Some("2026-01-03T00:00:00Z".parse().unwrap());
        b.final_lsn = Some("0/3000028".into());
        write(&store, &prefix("s1", "i-a"), &a, None).await.unwrap();
        write(&store, &prefix("s2", "i-b"), &b, None).await.unwrap();
        // Noise the rebuild must skip: WAL, backups, and a document in the wrong place.
        store
            .put("spaces/s1/instances/i-a/wal/000000010000000000000001", "x")
            .await
            .unwrap();
        store
            .put("spaces/s1/instances/i-a/base/b1/manifest.json", "{}")
            .await
            .unwrap();
        store
            .put("spaces/s3/instances/i-c/instance.json", a.to_json())
            .await
            .unwrap();
        store
            .put("spaces/s4/instances/i-d/instance.json", "not json")
            .await
            .unwrap();

        let index = rebuild_index(&store, None).await.unwrap();
        assert_eq!(index.docs, vec![a.clone(), b]);
        let bad: Vec<&str> = index.unreadable.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            bad,
            [
                "spaces/s3/instances/i-c/instance.json",
                "spaces/s4/instances/i-d/instance.json"
            ]
        );
        assert_eq!(
            read(&store, &prefix("s1", "i-a"), None).await.unwrap(),
            Some(a)
        );
        assert_eq!(
            read(&store, &prefix("s9", "none"), None).await.unwrap(),
            None
        );
    }

    fn keyring(id: &str) -> Keyring {
        Keyring::new(
            vec![(id.to_string(), crate::crypto::random_key_bytes())],
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_sealed_document_hides_its_names_and_reindex_opens_it_with_the_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::local(dir.path()).unwrap();
        let ring = keyring("k1");
        let (a, b) = (sample("s1", "i-a"), sample("s2", "i-b"));
        let (pa, pb) = (prefix("s1", "i-a"), prefix("s2", "i-b"));
        let key = keydoc::ensure(&store, Some(&ring), pa.as_str(), true)
            .await
            .unwrap()
            .map(ArchiveKey);
        write(&store, &pa, &a, key.as_ref()).await.unwrap();
        write(&store, &pb, &b, None).await.unwrap();
        let raw = store.get(&pa.instance_json()).await.unwrap().unwrap();
        assert!(is_sealed(&raw));
        assert!(
            !String::from_utf8_lossy(&raw).contains("orders"),
            "names hidden"
        );
        assert_eq!(
            read(&store, &pa, key.as_ref()).await.unwrap(),
            Some(a.clone())
        );
        assert!(read(&store, &pa, None).await.is_err());
        // Moved to another instance: does not open there.
        store.put(&pb.instance_json(), raw.clone()).await.unwrap();
        assert!(read(&store, &pb, key.as_ref()).await.is_err());
        write(&store, &pb, &b, None).await.unwrap();

        let index = rebuild_index(&store, Some(&ring)).await.unwrap();
        assert_eq!(index.docs, vec![a, b.clone()]);
        // Without the key: the other instance is indexed, this one reported, naming the key.
        let index = rebuild_index(&store, Some(&keyring("k9"))).await.unwrap();
        assert_eq!(index.docs, vec![b]);
        assert_eq!(index.unreadable.len(), 1);
        let (object, why) = &index.unreadable[0];
        assert_eq!(object, &pa.instance_json());
        assert!(why.contains("k1") && why.contains("i-a"), "{why}");
    }
}
