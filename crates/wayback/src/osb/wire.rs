//! OSB request and response bodies as they travel. Unknown fields are tolerated (the spec
//! says so); every field is optional here so that a missing one gets our own 400 message.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct MaintenanceInfo {
    pub version: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ProvisionBody {
    pub service_id: Option<String>,
    pub plan_id: Option<String>,
    pub organization_guid: Option<String>,
    pub space_guid: Option<String>,
    pub context: Option<serde_json::Map<String, Value>>,
    pub parameters: Option<Value>,
    pub maintenance_info: Option<MaintenanceInfo>,
}

#[derive(Debug, Deserialize)]
pub struct UpdateBody {
    pub service_id: Option<String>,
    pub plan_id: Option<String>,
    pub context: Option<serde_json::Map<String, Value>>,
    pub parameters: Option<Value>,
    pub maintenance_info: Option<MaintenanceInfo>,
}

#[derive(Debug, Deserialize)]
pub struct BindBody {
    pub service_id: Option<String>,
    pub plan_id: Option<String>,
    pub app_guid: Option<String>,
    pub bind_resource: Option<serde_json::Map<String, Value>>,
    pub parameters: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct OperationBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LastOperationBody {
    pub state: &'static str,
    pub description: String,
}
