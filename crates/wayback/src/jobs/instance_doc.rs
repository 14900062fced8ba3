//! Writes each instance's `instance.json` (`archive::instance_doc`) from the state database;
//! who created it and a clone's source come from its first audit row (`store::audit`), which
//! audit pruning keeps.
//!
//! The document is written when the instance becomes ready, on rename and plan change, on
//! deprovision (a step of its own, before the cluster is destroyed, which fails the deprovision
//! if the archive cannot take it) and when the reaper empties the archive. Apart from
//! deprovision a failed write never fails the user's request: the instance's stored hash is
//! cleared ("stale") and the broker's maintenance pass writes it again
//! ([`write_stale_docs`]); a periodic sweep ([`sync_instance_doc`] for every instance) also
//! repairs a document overwritten by a slower concurrent writer. When the instance's archive is
//! encrypted the document is sealed with its data key (unwrapped from `key.json` with the
//! state store's keyring). A follower has none: it has no archive of its own.

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::archive::instance_doc::{self, ClonedFrom, CreatedBy, InstanceDoc, NameEntry};
use crate::archive::keydoc::{self, ArchiveKey};
use crate::archive::layout::InstancePrefix;
use crate::catalog::Catalog;
use crate::domain::{InstanceId, SpaceGuid};
use crate::storage::ObjectStore;
use crate::store::{AuditEvent, AuditKind, InstanceRecord, Store};

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The archive prefix of a stored instance.
pub fn instance_prefix(instance: &InstanceRecord) -> anyhow::Result<InstancePrefix> {
    let space = SpaceGuid::parse(instance.space_guid.clone())
        .with_context(|| format!("space guid of instance {}", instance.id))?;
    Ok(InstancePrefix::new(&space, &instance.id))
}

/// The document the state database describes for `id`.
pub async fn build_instance_doc(
    store: &Store,
    catalog: &Catalog,
    id: &InstanceId,
) -> anyhow::Result<(InstancePrefix, InstanceDoc)> {
    let instance = store
        .get_instance(id)
        .await?
        .with_context(|| format!("instance {id} is not in the state database"))?;
    let names = store.instance_names(id).await?;
    let final_ = store.instance_final(id).await?;
    let reaped_at = store.instance_reaped_at(id).await?;
    let events = store.audit_events_of(id).await?;
    let origin = events
        .iter()
        .find(|e| matches!(e.kind, AuditKind::Provision | AuditKind::Clone));
    let doc = InstanceDoc {
        format: instance_doc::FORMAT,
        instance_id: instance.id.to_string(),
        space_guid: instance.space_guid.clone(),
        organization_guid: instance.organization_guid.clone(),
        service_id: instance.service_id.clone(),
        plan_id: instance.plan_id.clone(),
        plan_name: catalog
            .plan(&instance.service_id, &instance.plan_id)
            .map(|p| p.name.clone()),
        names: names
            .into_iter()
            .map(|n| NameEntry {
                name: n.name,
                source: n.source,
                recorded_at: time(n.recorded_at),
            })
            .collect(),
        created_at: time(instance.created_at),
        deleted_at: instance.deleted_at.map(time),
        state: instance.state.as_str().to_string(),
        final_lsn: final_.as_ref().map(|(lsn, _)| lsn.clone()),
        final_at: final_.map(|(_, at)| time(at)),
        reaped_at: reaped_at.map(time),
        created_by: origin.and_then(created_by),
        cloned_from: origin.and_then(cloned_from),
    };
    Ok((instance_prefix(&instance)?, doc))
}

/// Who created the instance, from its provision's audit row.
fn created_by(event: &AuditEvent) -> Option<CreatedBy> {
    event.originator.as_ref().map(|o| CreatedBy {
        platform: o.platform.clone(),
        user_id: o.user_id.clone(),
    })
}

/// A clone's source, from its provision's audit row (`broker::audit` writes `source`).
fn cloned_from(event: &AuditEvent) -> Option<ClonedFrom> {
    let source = event.detail.get("source")?;
    let text = |key: &str| source.get(key)?.as_str().map(str::to_string);
    Some(ClonedFrom {
        instance_id: text("instance_id")?,
        name: text("name")?,
        point_in_time: text("point_in_time")?,
    })
}

/// The instance's archive data key (the document is sealed with it), if its archive is
/// encrypted; a key the keyring cannot unwrap fails the write (it is retried later).
async fn data_key(
    store: &Store,
    archive: &ObjectStore,
    prefix: &InstancePrefix,
) -> anyhow::Result<Option<ArchiveKey>> {
    let key = keydoc::data_key(archive, store.keyring().ok(), prefix.as_str())
        .await
        .with_context(|| format!("the archive data key of {}", prefix.as_str()))?;
    Ok(key.map(ArchiveKey))
}

/// Builds the document, lets `adjust` change it (deprovision writes the deleted state before
/// the record says so), writes it and records its hash.
pub async fn write_instance_doc(
    store: &Store,
    catalog: &Catalog,
    archive: &ObjectStore,
    id: &InstanceId,
    adjust: impl FnOnce(&mut InstanceDoc),
) -> anyhow::Result<()> {
    let (prefix, mut doc) = build_instance_doc(store, catalog, id).await?;
    adjust(&mut doc);
    let key = data_key(store, archive, &prefix).await?;
    instance_doc::write(archive, &prefix, &doc, key.as_ref())
        .await
        .with_context(|| format!("write {}", archive.location(&prefix.instance_json())))?;
    store
        .set_instance_doc_hash(id, Some(&doc.content_hash()))
        .await?;
    Ok(())
}

/// Writes the document if the stored copy differs from what the database says. Returns
/// whether it wrote.
pub async fn sync_instance_doc(
    store: &Store,
    catalog: &Catalog,
    archive: &ObjectStore,
    id: &InstanceId,
) -> anyhow::Result<bool> {
    // A follower has no archive of its own, so no document (its leader's archive is not its).
    if store
        .get_instance(id)
        .await?
        .is_some_and(|i| i.leader_id.is_some())
    {
        return Ok(false);
    }
    let (prefix, doc) = build_instance_doc(store, catalog, id).await?;
    let hash = doc.content_hash();
    if store.instance_doc_hash(id).await?.as_deref() == Some(hash.as_str()) {
        return Ok(false);
    }
    let key = data_key(store, archive, &prefix).await?;
    instance_doc::write(archive, &prefix, &doc, key.as_ref())
        .await
        .with_context(|| format!("write {}", archive.location(&prefix.instance_json())))?;
    store.set_instance_doc_hash(id, Some(&hash)).await?;
    Ok(true)
}

/// [`sync_instance_doc`] for a path that must not fail because of it (a rename, the end of
/// an operation): on failure, logs, marks the document stale and returns.
pub async fn sync_instance_doc_or_mark_stale(
    store: &Store,
    catalog: &Catalog,
    archive: &ObjectStore,
    id: &InstanceId,
    why: &str,
) {
    if let Err(e) = sync_instance_doc(store, catalog, archive, id).await {
        tracing::warn!(instance = %id, error = format!("{e:#}"), why, "cannot write instance.json now; the maintenance pass will retry");
        if let Err(e) = store.set_instance_doc_hash(id, None).await {
            tracing::warn!(instance = %id, error = %e, "cannot mark instance.json stale");
        }
    }
}

/// Writes every missing or stale document. Returns (written, failed); one instance's failure
/// does not stop the others and is returned, not logged, so that the caller can log it once.
pub async fn write_stale_docs(
    store: &Store,
    catalog: &Catalog,
    archive: &ObjectStore,
) -> anyhow::Result<(usize, Vec<(InstanceId, anyhow::Error)>)> {
    let mut written = 0;
    let mut failed = Vec::new();
    for instance in store.instances_with_stale_doc().await? {
        if instance.leader_id.is_some() {
            continue;
        }
        match sync_instance_doc(store, catalog, archive, &instance.id).await {
            Ok(_) => written += 1,
            Err(e) => failed.push((instance.id, e)),
        }
    }
    Ok((written, failed))
}
