//! The local runtime: clusters on this machine, under `<data_dir>/clusters/<instance>/`.
//! (Stub: being implemented.)

use std::path::PathBuf;

use secrecy::SecretString;

use super::{Applied, ClusterSpec, ClusterStatus, RuntimeError};
use crate::config::PostgresSettings;
use crate::domain::InstanceId;

pub struct LocalRuntime {
    #[allow(dead_code)]
    data_dir: PathBuf,
    #[allow(dead_code)]
    settings: PostgresSettings,
}

impl LocalRuntime {
    pub fn new(data_dir: PathBuf, settings: PostgresSettings) -> Self {
        Self { data_dir, settings }
    }
    pub async fn prepare(&self) -> Result<(), RuntimeError> {
        todo!()
    }
    pub async fn create_cluster(&self, _spec: &ClusterSpec) -> Result<(), RuntimeError> {
        todo!()
    }
    pub async fn start(&self, _id: &InstanceId) -> Result<(), RuntimeError> {
        todo!()
    }
    pub async fn stop(&self, _id: &InstanceId) -> Result<(), RuntimeError> {
        todo!()
    }
    pub async fn status(&self, _id: &InstanceId) -> Result<ClusterStatus, RuntimeError> {
        todo!()
    }
    pub async fn destroy(&self, _id: &InstanceId) -> Result<(), RuntimeError> {
        todo!()
    }
    pub async fn apply_settings(&self, _spec: &ClusterSpec) -> Result<Applied, RuntimeError> {
        todo!()
    }
    pub async fn ensure_database(
        &self,
        _id: &InstanceId,
        _database: &str,
        _owner_role: &str,
    ) -> Result<(), RuntimeError> {
        todo!()
    }
    pub async fn create_login_role(
        &self,
        _id: &InstanceId,
        _role: &str,
        _password: &SecretString,
        _owner_role: &str,
    ) -> Result<(), RuntimeError> {
        todo!()
    }
    pub async fn drop_login_role(
        &self,
        _id: &InstanceId,
        _role: &str,
        _owner_role: &str,
    ) -> Result<(), RuntimeError> {
        todo!()
    }
}
