//! ralph-service: the drivers of what runs on a cluster and of its
//! database: Kubernetes manifests and the orchestrator ([`kubernetes`]), the
//! PostgreSQL schema, roles and backups ([`postgres`]).

pub mod kubernetes;
pub mod postgres;

use ralph_core::driver::{Context, Driver, DriverError};

/// A string property the stack gave (an empty one counts as not given).
pub(crate) fn given(
    props: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Option<String> {
    props
        .get(key)
        .and_then(serde_json::Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// This crate's drivers.
pub fn drivers() -> Vec<Box<dyn Driver>> {
    vec![
        Box::new(postgres::migrations::Migrations),
        Box::new(postgres::role::Role),
        Box::new(kubernetes::manifests::Manifests),
        Box::new(kubernetes::orchestrator::Orchestrator),
    ]
}

/// The value a secret source names, and what identifies its version: an
/// environment variable (`env:NAME`), a Secret Manager secret
/// (`projects/P/secrets/S`), a Memorystore instance's AUTH string
/// (`memorystore:NAME`), or a Secrets Manager ARN or name. `#key` picks one
/// key of a JSON secret. `what` names the value in errors; the value itself
/// never appears in one.
pub async fn read_secret_source(
    cx: &Context,
    what: &str,
    source: &str,
) -> Result<(String, String), DriverError> {
    if ralph_gcp::holds_secret_source(source) {
        return ralph_gcp::read_secret_source(cx, what, source).await;
    }
    let read = ralph_aws::secret::read_source(cx, what, source).await?;
    ralph_core::driver::nonempty_secret(what, source, read)
}
