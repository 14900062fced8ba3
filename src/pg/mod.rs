//! PostgreSQL process driver (stub: being implemented).

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Other(String),
}

impl PgError {
    pub fn is_permanent(&self) -> bool {
        false
    }
}
