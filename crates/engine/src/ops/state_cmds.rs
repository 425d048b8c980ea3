//! State commands that change the record only: push, rm, mv, migrate.
//! Each runs under the lock (the one runner), after open intents are
//! settled, and writes one new serial; nothing in the cloud is touched.

use super::{locked, OpError, Session, StateLocation};
use crate::state::{Backend, LockInfo, State};
use ralph_core::driver::Context;
use ralph_core::model::address::is_under;

/// `state push FILE`: makes `incoming` the current state. An older serial
/// or another lineage is refused unless `force`.
pub async fn push(
    s: &Session,
    cx: &Context,
    mut incoming: State,
    force: bool,
) -> Result<u64, OpError> {
    locked(s, cx, "state push", |l| async move {
        if incoming.stack != s.stack.name || incoming.environment != s.stack.environment {
            return Err(OpError::refused(format!(
                "the file is the state of stack `{}` environment `{}`, not `{}` `{}`; nothing was changed",
                incoming.stack, incoming.environment, s.stack.name, s.stack.environment
            )));
        }
        if l.existed && !force {
            if incoming.lineage != l.state.lineage {
                return Err(OpError::refused(format!(
                    "the file is of another lineage ({}; the stored state is {}): it is another deployment's state. Nothing was changed; --force replaces it anyway",
                    incoming.lineage, l.state.lineage
                )));
            }
            if incoming.serial < l.state.serial {
                return Err(OpError::refused(format!(
                    "the file has serial {}, older than the stored serial {}: pushing it would undo later changes. Nothing was changed; --force pushes it anyway",
                    incoming.serial, l.state.serial
                )));
            }
        }
        if l.existed {
            // Written as the next serial of the stored state, whatever the
            // file says, so compare-and-swap stores accept it.
            incoming.lineage = l.state.lineage.clone();
            incoming.serial = l.state.serial + 1;
        } else {
            incoming.serial = incoming.serial.max(1);
        }
        s.backend.write(&incoming).await?;
        Ok(incoming.serial)
    })
    .await
}

/// `state rm ADDRESS...`: forgets entries (and everything under a
/// component or `for_each` address). Returns the addresses removed.
pub async fn rm(s: &Session, cx: &Context, addresses: &[String]) -> Result<Vec<String>, OpError> {
    locked(s, cx, "state rm", |l| async move {
        let mut state = l.state;
        let mut removed = Vec::new();
        for a in addresses {
            let hits: Vec<String> = state
                .resources
                .keys()
                .filter(|k| is_under(k, a))
                .cloned()
                .collect();
            if hits.is_empty() {
                let hint =
                    ralph_core::model::did_you_mean(a, state.resources.keys().map(String::as_str))
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                return Err(OpError::refused(format!(
                    "`{a}` is not in the state{hint}; nothing was changed"
                )));
            }
            for h in hits {
                state.resources.remove(&h);
                removed.push(h);
            }
        }
        for r in state.resources.values_mut() {
            r.depends_on.retain(|d| !removed.contains(d));
        }
        state.serial += 1;
        s.backend.write(&state).await?;
        Ok(removed)
    })
    .await
}

/// `state mv FROM TO`: renames entries, as a `moved` entry would.
pub async fn mv(
    s: &Session,
    cx: &Context,
    from: &str,
    to: &str,
) -> Result<Vec<(String, String)>, OpError> {
    for a in [from, to] {
        ralph_core::model::address::parse(a).map_err(OpError::refused)?;
    }
    locked(s, cx, "state mv", |l| async move {
        let mut state = l.state;
        if state.resources.keys().any(|k| is_under(k, to)) {
            return Err(OpError::refused(format!(
                "`{to}` is already in the state; nothing was changed"
            )));
        }
        let done = state.apply_moves(&[(from.to_string(), to.to_string())]);
        if done.is_empty() {
            return Err(OpError::refused(format!(
                "`{from}` is not in the state; nothing was changed"
            )));
        }
        state.serial += 1;
        s.backend.write(&state).await?;
        Ok(done)
    })
    .await
}

/// `state migrate --to URL`: copies the current state and its
/// before-command snapshots to another store, holding both locks; returns
/// the state's serial and how many snapshots were copied. The target must be empty, or hold an
/// older serial of the same lineage.
pub async fn migrate(
    s: &Session,
    cx: &Context,
    target: Box<dyn Backend>,
) -> Result<(u64, usize), OpError> {
    locked(s, cx, "state migrate", |l| async move {
        if !l.existed {
            return Err(OpError::refused(format!(
                "there is no state at {} to migrate",
                s.backend.describe()
            )));
        }
        let lock = LockInfo::for_operation("state migrate");
        if let Some(stale) = target.lock(&lock).await? {
            cx.reporter.report(ralph_core::events::Event::Warning {
                message: format!(
                    "took over a stale lock on {}: `{}` on {} no longer holds it",
                    target.describe(),
                    stale.operation,
                    stale.host
                ),
            });
        }
        let result = async {
            if let Some(there) = target.read().await? {
                if there.lineage != l.state.lineage || there.serial >= l.state.serial {
                    return Err(OpError::refused(format!(
                        "{} already holds a state (lineage {}, serial {}); nothing was copied",
                        target.describe(),
                        there.lineage,
                        there.serial
                    )));
                }
            }
            // The before-command snapshots first (their names keep their
            // time and serial), then the state itself.
            let mut copied = 0;
            for snap in s.backend.snapshots().await? {
                let old = s.backend.read_snapshot(&snap.name).await?;
                target
                    .put_snapshot(snap.name.trim_end_matches(".json"), &snap.operation, &old)
                    .await?;
                copied += 1;
            }
            target.write(&l.state).await?;
            Ok((l.state.serial, copied))
        }
        .await;
        let _ = target.unlock(&lock).await;
        result
    })
    .await
}

/// `state rekey`: rewrites the current state sealed with the current key
/// (`RALPH_DEPLOY_STATE_KEY` or the KMS key), having read it with either the
/// current or the previous one (`RALPH_DEPLOY_STATE_OLD_KEY`).
pub async fn rekey(s: &Session, cx: &Context) -> Result<u64, OpError> {
    locked(s, cx, "state rekey", |l| async move {
        if !l.existed {
            return Err(OpError::refused(format!(
                "there is no state at {} to rekey",
                s.backend.describe()
            )));
        }
        let mut state = l.state;
        state.serial += 1;
        s.backend.write(&state).await?;
        Ok(state.serial)
    })
    .await
}

/// The backend a URL or directory names, for `state migrate --to`.
pub fn backend_at(s: &Session, to: &StateLocation) -> Result<Box<dyn Backend>, OpError> {
    super::backend_for(to, &s.stack).map_err(OpError::refused)
}

/// What `import` recorded.
pub struct Imported {
    pub kind: String,
    pub id: String,
}

/// `import ADDRESS ID`: adopts a resource made outside the tool into the
/// state at an address the stack declares. The cloud is only read; the
/// next plan shows what differs from the stack (and the ownership tags the
/// next apply adds).
pub async fn import(
    s: &Session,
    cx: &Context,
    address: &str,
    id: &str,
) -> Result<Imported, OpError> {
    let Some(r) = s.stack.resources.get(address) else {
        let hint =
            ralph_core::model::did_you_mean(address, s.stack.resources.keys().map(String::as_str))
                .map(|x| format!(" (did you mean `{x}`?)"))
                .unwrap_or_default();
        return Err(OpError::refused(format!(
            "`{address}` is not declared in the stack{hint}: declare the resource first, then import it; nothing was changed"
        )));
    };
    let kind = r.kind.kind;
    let driver = s
        .registry
        .driver(kind)
        .ok_or_else(|| OpError::refused(format!("no driver for {kind}")))?;
    locked(s, cx, "import", |l| async move {
        let mut state = l.state;
        if let Some(existing) = state.resources.get(address) {
            return Err(OpError::refused(format!(
                "`{address}` is already in the state ({} {}); `ralph-deploy state rm` it first to import another; nothing was changed",
                existing.kind, existing.id
            )));
        }
        if let Some((other, _)) = state.resources.iter().find(|(_, x)| x.kind == kind && x.id == id) {
            return Err(OpError::refused(format!(
                "{kind} {id} is already in the state as `{other}`; nothing was changed"
            )));
        }
        let obs = super::find_to_import(driver, cx, address, kind, id).await?;
        // Settings the cloud does not report (a secret's source, what
        // happens at deletion) cannot be read back: they are recorded as the
        // stack says, so the next plan shows only what differs in the cloud.
        let mut inputs = serde_json::Map::new();
        for f in r.kind.fields {
            if obs.attrs.get(f.name).is_some_and(|v| !v.is_null()) {
                continue;
            }
            if let Some(v) = r.stated(f.name) {
                inputs.insert(f.name.to_string(), v);
            }
        }
        let deps = r
            .dependencies()
            .into_iter()
            .filter(|d| s.stack.resources.contains_key(d))
            .collect();
        state.resources.insert(
            address.to_string(),
            crate::state::ResourceState::reported(
                kind,
                &obs.id,
                inputs,
                obs.attrs.clone(),
                deps,
                r.protect,
            ),
        );
        state.serial += 1;
        s.backend.write(&state).await?;
        Ok(Imported {
            kind: kind.to_string(),
            id: obs.id,
        })
    })
    .await
}
