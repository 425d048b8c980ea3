//! Database operations on the stack's schema resources (`Role::Schema`):
//! migration status and partition maintenance. Both read only the state
//! (for hosts and secrets) and need no lock: they change no resource.

use ralph_core::driver::Context;
use ralph_service::postgres;

pub use ralph_service::postgres::migrations::MigrationStatus;

use super::{OpError, Role, Session, Unapplied};

/// Per migrations resource: where it points and each file's status.
pub struct Status {
    pub address: String,
    pub target: String,
    pub migrations: Vec<MigrationStatus>,
}

pub async fn migrate_status(s: &Session, cx: &Context) -> Result<Vec<Status>, OpError> {
    let mut out = Vec::new();
    for (address, props) in s.resolved_targets(Role::Schema, Unapplied::Refuse).await? {
        let migrations = postgres::migrations::status(cx, &props)
            .await
            .map_err(|e| OpError::Resource {
                address: address.clone(),
                message: e.message,
            })?;
        out.push(Status {
            target: postgres::describe_target(&props),
            address,
            migrations,
        });
    }
    Ok(out)
}

/// Creates the monthly partitions up to `months_ahead` months after the
/// current one; returns (address, partitions created) per resource.
pub async fn partitions(
    s: &Session,
    cx: &Context,
    months_ahead: i32,
) -> Result<Vec<(String, i32)>, OpError> {
    let mut out = Vec::new();
    for (address, props) in s.resolved_targets(Role::Schema, Unapplied::Refuse).await? {
        let n = postgres::ensure_partitions(cx, &props, months_ahead)
            .await
            .map_err(|e| OpError::Resource {
                address: address.clone(),
                message: e.message,
            })?;
        out.push((address, n));
    }
    Ok(out)
}
