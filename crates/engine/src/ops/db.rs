//! Database operations on the stack's schema resources (`Role::Schema`):
//! migration status (read-only, no lock) and partition maintenance, which
//! runs DDL: under the lock with a `partitions` intent, so it never runs
//! beside an apply or a restore. Its statements are idempotent (each
//! partition is created if missing), so a killed run's intent only needs
//! closing, and running it again finishes the work.

use ralph_core::driver::Context;
use ralph_service::postgres;

pub use ralph_service::postgres::migrations::MigrationStatus;

use crate::apply::recover::PARTITIONS;
use crate::state::Intent;

use super::{locked_without_copy, OpError, Role, Session, Unapplied};

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
    locked_without_copy(s, cx, PARTITIONS, |l| async move {
        let mut out = Vec::new();
        for (address, props) in s.resolved_in(&l.state, Role::Schema, Unapplied::Refuse)? {
            let kind = s.driver_at(&address)?.schema().kind;
            let intent = Intent::operation(
                &address,
                kind,
                PARTITIONS,
                &months_ahead.to_string(),
                Default::default(),
            );
            s.backend.open_intent(&intent).await?;
            let n = postgres::ensure_partitions(cx, &props, months_ahead)
                .await
                .map_err(|e| OpError::Resource {
                    address: address.clone(),
                    message: e.message,
                })?;
            s.backend.close_intent(&intent.id).await?;
            out.push((address, n));
        }
        s.backend.compact().await?;
        Ok(out)
    })
    .await
}
