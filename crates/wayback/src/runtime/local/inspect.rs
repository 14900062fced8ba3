//! Inspections of a local cluster on demand (issue 19): the blocking tree, the top
//! statements and the diagnose facts, each one read-only superuser session
//! ([`crate::pg::inspect`]). A cluster stopped when idle (parked) or not running is refused
//! with `NotRunning`: reading it must never wake it, and connecting over the unix socket could
//! not (the wake listener holds only the TCP port), but a parked cluster says so first.
//! No per-instance lock: an inspection must not wait for a backup or a restart, and it changes
//! nothing. Must not import `osb`, `broker`, `store` or `jobs`.

use super::{rt, LocalRuntime};
use crate::domain::InstanceId;
use crate::pg::{inspect, PgError};
use crate::runtime::{InspectKind, Inspection, RuntimeError};

impl LocalRuntime {
    pub async fn inspect(
        &self,
        id: &InstanceId,
        kind: InspectKind,
    ) -> Result<Inspection, RuntimeError> {
        self.existing(id)?;
        if self.is_parked(id) {
            return Err(rt(PgError::NotRunning {
                instance: id.to_string(),
            }));
        }
        // `NotRunning` when no postmaster is live: nothing is started for this.
        let opts = self.admin_options(id).await?;
        Ok(match kind {
            InspectKind::Locks => Inspection::Locks(inspect::locks(&opts).await.map_err(rt)?),
            InspectKind::Outliers => {
                Inspection::Outliers(inspect::outliers(&opts).await.map_err(rt)?)
            }
            InspectKind::Diagnose => {
                Inspection::Diagnose(Box::new(inspect::diagnose_facts(&opts).await.map_err(rt)?))
            }
        })
    }
}
