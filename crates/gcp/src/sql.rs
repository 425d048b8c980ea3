//! Cloud SQL: `gcp.sql_instance` (PostgreSQL; tier, REGIONAL availability,
//! backups and point-in-time recovery, private IP on the VPC, deletion
//! protection honoured as RDS's is; or a read replica of another instance
//! with `master_instance`), `gcp.sql_database` and `gcp.sql_user`
//! (its password read from a secret at apply time and sent only to Cloud
//! SQL: the state keeps the secret's version, never the value).
//!
//! Instances carry the ownership labels in `settings.userLabels` and are
//! listed once with a label filter. Databases and users have no labels:
//! they are listed per recorded instance, and a create that finds one
//! already there (a run killed after making it) takes it over.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value as Json};

use super::OpState;
use super::{
    call, call_create, call_opt, from_labels, json, label_filter, labels, message, observed,
};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
    READY_ATTR, STATUS_ATTR,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

const SERVICE: &str = "sqladmin";
const INSTANCE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const CHILD_TIMEOUT: Duration = Duration::from_secs(10 * 60);

fn availability(v: &Json) -> Result<(), String> {
    ralph_core::model::kinds::checks::choice(v, &["REGIONAL", "ZONAL"], "availability_type")
}

fn hh_mm(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = s.len() == 5
        && s.as_bytes()[2] == b':'
        && s[..2].parse::<u8>().is_ok_and(|h| h < 24)
        && s[3..].parse::<u8>().is_ok_and(|m| m < 60);
    checks::require(ok, || {
        format!("`{s}` is not a time of day as HH:MM (UTC), such as \"03:00\"")
    })
}

/// Cloud SQL for PostgreSQL's versions (the API's enum names).
fn database_version(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = s == "POSTGRES_9_6"
        || s.strip_prefix("POSTGRES_")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (10..=18).contains(&n));
    checks::require(ok, || {
        format!(
            "`{s}` is not a Cloud SQL for PostgreSQL version: POSTGRES_9_6 or POSTGRES_10 to POSTGRES_18, such as POSTGRES_15"
        )
    })
}

/// Cloud SQL machine tiers: shared-core (db-f1-micro, db-g1-small),
/// custom (db-custom-CPUS-MEMORY_MIB: 1 or an even number of vCPUs up to
/// 96, 0.9 to 6.5 GB a vCPU in multiples of 256 MiB), predefined
/// (db-n1-standard-N, db-n1-highmem-N) and Enterprise Plus
/// (db-perf-optimized-N-N).
fn tier(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let bad = |why: &str| {
        Err(format!(
            "`{s}` is not a Cloud SQL tier{why}: db-custom-CPUS-MEMORY_MIB (such as db-custom-4-16384), db-f1-micro, db-g1-small, db-n1-standard-N, db-n1-highmem-N or db-perf-optimized-N-N"
        ))
    };
    if matches!(s, "db-f1-micro" | "db-g1-small") {
        return Ok(());
    }
    let number = |t: &str| t.parse::<u32>().ok().filter(|n| *n > 0);
    if let Some(rest) = s.strip_prefix("db-custom-") {
        let Some((cpus, mem)) = rest
            .split_once('-')
            .and_then(|(c, m)| Some((number(c)?, number(m)?)))
        else {
            return bad("");
        };
        if !(cpus == 1 || cpus % 2 == 0 && cpus <= 96) {
            return bad(" (vCPUs: 1 or an even number up to 96)");
        }
        let per_cpu = f64::from(mem) / f64::from(cpus);
        if mem % 256 != 0 || !(921.6..=6656.0).contains(&per_cpu) {
            return bad(" (memory: 0.9 to 6.5 GB a vCPU, a multiple of 256 MiB)");
        }
        return Ok(());
    }
    for prefix in ["db-n1-standard-", "db-n1-highmem-", "db-perf-optimized-N-"] {
        if let Some(n) = s.strip_prefix(prefix) {
            return if number(n).is_some() { Ok(()) } else { bad("") };
        }
    }
    bad("")
}

static INSTANCE: KindSchema = KindSchema::new("gcp.sql_instance", SERVICE, "A Cloud SQL for PostgreSQL instance.")
    .fields(&[
        Field::new(
            "name",
            Ty::String,
            "the instance's name (or `name_prefix`: Cloud SQL renames no instance, so a failover can keep only a generated name)",
        )
        .forces_replace()
        .check(super::compute::rfc1035),
        Field::new(
            ralph_core::model::kinds::NAME_PREFIX,
            Ty::String,
            "the instance is named this, a hyphen and 8 random hex digits, chosen at creation and kept in the state (`${db.name}` reads it); a failover then records the promoted replica, under its own name, as the primary",
        )
        .forces_replace()
        .check(name_prefix),
        Field::new("database_version", Ty::String, "such as POSTGRES_15")
            .default("\"POSTGRES_15\"")
            .forces_replace()
            .check(database_version),
        super::region_field(),
        Field::new(
            "tier",
            Ty::String,
            "the machine, such as db-custom-4-16384 (4 vCPU, 16 GB)",
        )
        .required()
        .check(tier),
        Field::new(
            "availability_type",
            Ty::String,
            "REGIONAL (a standby in another zone, automatic failover) or ZONAL",
        )
        .default("\"REGIONAL\"")
        .check(availability),
        Field::new("disk_size_gb", Ty::Int, "storage in GB (it can only grow)")
            .default("100")
            .check(ralph_core::model::kinds::checks::range::<10, 65536>),
        Field::new(
            "backup_start_time",
            Ty::String,
            "when the daily backup starts, HH:MM UTC",
        )
        .default("\"03:00\"")
        .check(hh_mm),
        Field::new(
            "backup_retention",
            Ty::Int,
            "how many daily backups are kept",
        )
        .default("30")
        .check(ralph_core::model::kinds::checks::range::<1, 365>),
        Field::new(
            "point_in_time_recovery",
            Ty::Bool,
            "keep write-ahead logs for point-in-time recovery",
        )
        .default("true"),
        Field::new(
            "private_network",
            Ty::String,
            "the VPC network for a private IP, usually `${vpc.id}` (needs private services access)",
        )
        .forces_replace(),
        Field::new("ipv4_enabled", Ty::Bool, "a public IP as well").default("false"),
        Field::new(
            "deletion_protection",
            Ty::Bool,
            "Cloud SQL refuses to delete it (destroy lifts it only with --allow-protected)",
        )
        .default("true"),
        Field::labels(),
        Field::new(
            "master_instance",
            Ty::String,
            "makes this a read replica of that instance, usually `${db.name}`: its databases and users are the primary's, it keeps no backups of its own (Cloud SQL refuses them on a replica, and the backup fields are ignored), and `database_version` must be the primary's",
        )
        .forces_replace()
        .check(super::compute::rfc1035),
    ])
    .attrs(&[
        Attr::string("id", "the instance's name"),
        Attr::string("connection_name", "PROJECT:REGION:NAME, for the Cloud SQL Auth Proxy"),
        Attr::string("address", "the private IP (or the public one without a private network)"),
        Attr::new("port", Ty::Int, "5432"),
    ])
    .name_field("name")
    .exactly_one_of(&["name", ralph_core::model::kinds::NAME_PREFIX]);

/// A prefix that leaves room for the generated suffix (`-` and 8 hex
/// digits) within Cloud SQL's 63 characters.
fn name_prefix(v: &Json) -> Result<(), String> {
    super::compute::rfc1035(v)?;
    let len = v.as_str().map_or(0, str::len);
    if len > 54 {
        return Err(format!(
            "the prefix has {len} characters: at most 54, so the generated name (9 more) fits in 63"
        ));
    }
    Ok(())
}

static DATABASE: KindSchema = KindSchema::new(
    "gcp.sql_database",
    SERVICE,
    "A database in a Cloud SQL instance.",
)
.fields(&[
    Field::fixed("instance", Ty::String, "the instance, usually `${db.name}`"),
    Field::name("the database's name"),
    Field::new("charset", Ty::String, "the character set")
        .default("\"UTF8\"")
        .forces_replace(),
])
.attrs(&[Attr::string("id", "INSTANCE/databases/NAME")]);

static USER: KindSchema = KindSchema::new("gcp.sql_user", SERVICE, "A built-in database user of a Cloud SQL instance, its password from a secret.")
    .fields(&[
        Field::fixed("instance", Ty::String, "the instance, usually `${db.name}`"),
        Field::name("the user's name"),
        Field::new("password_secret", Ty::String, "the secret holding the password: a Secret Manager name (projects/P/secrets/S, `#key` picks a JSON key) or `env:VARIABLE`").required().check(ralph_core::driver::secret_value::secret_source),
        Field::new("password_version", Ty::String, "the secret's current version, usually `${admin_password.version_id}`: a new one sets the new password"),
    ])
    .attrs(&[Attr::string("id", "INSTANCE/users/NAME")]);

pub fn drivers() -> Vec<Box<dyn Driver>> {
    vec![Box::new(Instance), Box::new(Database), Box::new(User)]
}

pub struct Instance;
pub struct Database;
pub struct User;

pub(super) fn observe_instance(i: &google_cloud_sql_v1::model::DatabaseInstance) -> Observed {
    use google_cloud_sql_v1::model::database_instance::SqlInstanceState;
    let v = json(i);
    let settings = v.get("settings").cloned().unwrap_or(Json::Null);
    let (owner, address, user) = from_labels(settings.get("userLabels"));
    let ip = |kind: &str| {
        i.ip_addresses
            .iter()
            .find(|a| a.r#type.name() == Some(kind))
            .map(|a| a.ip_address.clone())
    };
    let addr = ip("PRIVATE").or_else(|| ip("PRIMARY")).unwrap_or_default();
    let s = i.settings.clone().unwrap_or_default();
    let backup = s.backup_configuration.clone().unwrap_or_default();
    let ipc = s.ip_configuration.clone().unwrap_or_default();
    let state = i
        .state
        .name()
        .unwrap_or("SQL_INSTANCE_STATE_UNSPECIFIED")
        .to_string();
    // Cloud SQL names a replica's primary PROJECT:INSTANCE.
    let master = (!i.master_instance_name.is_empty()).then(|| {
        i.master_instance_name
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string()
    });
    let replica = master.is_some();
    observed(
        i.name.clone(),
        owner,
        address,
        vec![
            ("id", json!(i.name)),
            ("name", json!(i.name)),
            ("database_version", json!(i.database_version.name())),
            ("region", json!(i.region)),
            ("tier", json!(s.tier)),
            ("availability_type", json!(s.availability_type.name())),
            (
                "disk_size_gb",
                super::s(&settings, "dataDiskSizeGb")
                    .as_str()
                    .and_then(|d| d.parse::<i64>().ok())
                    .map(Json::from)
                    .unwrap_or_else(|| super::s(&settings, "dataDiskSizeGb")),
            ),
            ("master_instance", json!(master)),
            (
                "backup_start_time",
                if replica {
                    json!(REPLICA_BACKUPS.0)
                } else {
                    json!(backup.start_time)
                },
            ),
            (
                "backup_retention",
                if replica {
                    json!(REPLICA_BACKUPS.1)
                } else {
                    super::s(
                        &settings,
                        "backupConfiguration.backupRetentionSettings.retainedBackups",
                    )
                },
            ),
            (
                "point_in_time_recovery",
                json!(!replica && backup.point_in_time_recovery_enabled.unwrap_or(false)),
            ),
            ("private_network", json!(ipc.private_network)),
            ("ipv4_enabled", json!(ipc.ipv4_enabled.unwrap_or(false))),
            (
                "deletion_protection",
                json!(s.deletion_protection_enabled.unwrap_or(false)),
            ),
            ("labels", Json::Object(user)),
            ("connection_name", json!(i.connection_name)),
            ("address", json!(addr)),
            ("port", json!(5432)),
            (STATUS_ATTR, json!(state)),
            (
                READY_ATTR,
                json!(matches!(i.state, SqlInstanceState::Runnable)),
            ),
        ],
    )
}

/// Every Cloud SQL instance the filter (Cloud SQL's syntax) finds.
pub(super) async fn list_instances(
    cx: &Context,
    filter: &str,
) -> Result<Vec<google_cloud_sql_v1::model::DatabaseInstance>, DriverError> {
    let g = crate::clients(cx).await?;
    crate::every_page(|token| async move {
        let page = call(cx, SERVICE, "listing Cloud SQL instances", || {
            g.sql
                .list()
                .set_project(&g.project)
                .set_filter(filter)
                .set_max_results(500u32)
                .set_page_token(&token)
                .send()
        })
        .await?;
        Ok((page.items, Some(page.next_page_token)))
    })
    .await
}

pub(super) async fn read_instance(
    cx: &Context,
    name: &str,
) -> Result<Option<Observed>, DriverError> {
    let g = crate::clients(cx).await?;
    Ok(call_opt(
        cx,
        SERVICE,
        &format!("reading Cloud SQL instance {name}"),
        || {
            g.sql
                .get()
                .set_project(&g.project)
                .set_instance(name)
                .send()
        },
    )
    .await?
    .as_ref()
    .map(observe_instance))
}

/// Waits for a Cloud SQL operation; its errors fail.
pub(super) async fn wait_op(
    cx: &Context,
    address: &str,
    op: &google_cloud_sql_v1::model::Operation,
    timeout: Duration,
) -> Result<(), DriverError> {
    let g = crate::clients(cx).await?;
    let name = &op.name;
    let what = format!("Cloud SQL operation {name}");
    crate::wait_operation(cx, address, &what, timeout, || async move {
        let op = call(cx, SERVICE, "reading a Cloud SQL operation", || {
            g.sql_ops
                .get()
                .set_project(&g.project)
                .set_operation(name)
                .send()
        })
        .await?;
        Ok(match op.status.name().unwrap_or("PENDING") {
            "DONE" => match op.error.as_ref().filter(|e| !e.errors.is_empty()) {
                Some(errors) => OpState::Failed(
                    errors
                        .errors
                        .iter()
                        .map(|e| format!("{}: {}", e.code, e.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                None => OpState::Done,
            },
            status => OpState::Running(status.to_string()),
        })
    })
    .await
}

/// What a replica's backup fields read as, in the plan and from the cloud:
/// it has no backups of its own.
const REPLICA_BACKUPS: (&str, i64, bool) = ("", 0, false);

/// The primary `props` make a read replica of, if any.
pub(super) fn master_of(props: &serde_json::Map<String, Json>) -> Option<&str> {
    props
        .get("master_instance")
        .and_then(Json::as_str)
        .filter(|m| !m.is_empty())
}

fn settings(cx: &Context, want: &Desired<'_>) -> Json {
    let p = want.props;
    let mut ip = json!({"ipv4Enabled": p.get("ipv4_enabled")});
    if let Some(net) = want.str("private_network").filter(|n| !n.is_empty()) {
        ip["privateNetwork"] = json!(net);
    }
    let mut settings = json!({
        "tier": p.get("tier"),
        "availabilityType": p.get("availability_type"),
        "dataDiskSizeGb": p.get("disk_size_gb").map(ralph_core::model::json_to_text),
        "backupConfiguration": {
            "enabled": true,
            "startTime": p.get("backup_start_time"),
            "pointInTimeRecoveryEnabled": p.get("point_in_time_recovery"),
            "backupRetentionSettings": {"retentionUnit": "COUNT", "retainedBackups": p.get("backup_retention")},
        },
        "ipConfiguration": ip,
        "deletionProtectionEnabled": p.get("deletion_protection"),
        "userLabels": labels(&cx.owner, want.address, p.get("labels")),
    });
    if master_of(p).is_some() {
        // Cloud SQL refuses a backup configuration on a read replica.
        settings
            .as_object_mut()
            .map(|s| s.remove("backupConfiguration"));
    }
    settings
}

#[async_trait::async_trait]
impl Driver for Instance {
    fn schema(&self) -> &'static KindSchema {
        &INSTANCE
    }

    fn snapshots(&self) -> Option<&dyn ralph_core::driver::capability::Snapshots> {
        Some(&OnDemandBackups)
    }
    fn promotion(&self) -> Option<&dyn ralph_core::driver::capability::Promotion> {
        Some(&super::sql_failover::CloudSqlPromotion)
    }
    fn typical_seconds(&self) -> u64 {
        900
    }

    /// A replica's backup fields as the cloud reports them (it has none).
    fn normalize(
        &self,
        _base: &std::path::Path,
        props: &mut serde_json::Map<String, Json>,
    ) -> Result<(), String> {
        if master_of(props).is_some() {
            props.insert("backup_start_time".into(), json!(REPLICA_BACKUPS.0));
            props.insert("backup_retention".into(), json!(REPLICA_BACKUPS.1));
            props.insert("point_in_time_recovery".into(), json!(REPLICA_BACKUPS.2));
        }
        Ok(())
    }

    async fn refresh(&self, cx: &Context, _known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let filter = label_filter(&cx.owner, "settings.userLabels.");
        let all = list_instances(cx, &filter).await?;
        Ok(all
            .iter()
            .map(observe_instance)
            .filter(|o| crate::ours(cx, o))
            .collect())
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        read_instance(cx, id).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let g = crate::clients(cx).await?;
        let name = want.required_str("name")?;
        let region = want
            .str("region")
            .filter(|r| !r.is_empty())
            .unwrap_or(&g.region)
            .to_string();
        let mut body = json!({
            "name": name,
            "databaseVersion": want.props.get("database_version"),
            "region": region,
            "settings": settings(cx, want),
        });
        if let Some(master) = master_of(want.props) {
            body["masterInstanceName"] = json!(master);
            body["instanceType"] = json!("READ_REPLICA_INSTANCE");
        }
        let body: google_cloud_sql_v1::model::DatabaseInstance =
            message("Cloud SQL instance", body)?;
        let Some(op) = call_create(
            cx,
            SERVICE,
            &format!("creating Cloud SQL instance {name}"),
            || {
                g.sql
                    .insert()
                    .set_project(&g.project)
                    .set_body(body.clone())
                    .send()
            },
        )
        .await?
        else {
            // Asked for by a run that was killed: ours, once it is RUNNABLE.
            let found = read_instance(cx, name).await?;
            let have = super::take_over(cx, want.address, name, found)?;
            let changed = [READY_ATTR.to_string()];
            let u = Update {
                want,
                have: &have,
                changed: &changed,
            };
            return self.update(cx, u).await;
        };
        if let Err(e) = wait_op(
            cx,
            want.address,
            &op,
            want.timeouts.create_or(INSTANCE_TIMEOUT),
        )
        .await
        {
            return match read_instance(cx, name).await {
                Ok(Some(o)) => Err(e.with_partial(o)),
                _ => Err(e),
            };
        }
        found_again(read_instance(cx, name).await?, "Cloud SQL instance", &name)
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let (want, have, changed) = (u.want, u.have, u.changed);
        let g = crate::clients(cx).await?;
        let only_ready = changed.iter().all(|c| c == READY_ATTR);
        if !only_ready {
            let body: google_cloud_sql_v1::model::DatabaseInstance = message(
                "Cloud SQL instance",
                json!({"settings": settings(cx, want)}),
            )?;
            let op = call(cx, SERVICE, &format!("updating {}", have.id), || {
                g.sql
                    .patch()
                    .set_project(&g.project)
                    .set_instance(&have.id)
                    .set_body(body.clone())
                    .send()
            })
            .await?;
            wait_op(
                cx,
                want.address,
                &op,
                want.timeouts.update_or(INSTANCE_TIMEOUT),
            )
            .await?;
        }
        super::wait_ready(
            cx,
            want.address,
            &have.id,
            want.timeouts.update_or(INSTANCE_TIMEOUT),
            || read_instance(cx, &have.id),
        )
        .await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let g = crate::clients(cx).await?;
        let address = d.address();
        // Only reached with --allow-protected: lift Cloud SQL's own protection first.
        if d.have.attrs.get("deletion_protection") == Some(&Json::Bool(true)) {
            let body: google_cloud_sql_v1::model::DatabaseInstance = message(
                "Cloud SQL instance",
                json!({"settings": {"deletionProtectionEnabled": false}}),
            )?;
            if let Some(op) = call_opt(
                cx,
                SERVICE,
                &format!("lifting the deletion protection of {}", d.have.id),
                || {
                    g.sql
                        .patch()
                        .set_project(&g.project)
                        .set_instance(&d.have.id)
                        .set_body(body.clone())
                        .send()
                },
            )
            .await?
            {
                wait_op(cx, &address, &op, d.timeouts.update_or(INSTANCE_TIMEOUT)).await?;
            }
        }
        match call_opt(cx, SERVICE, &format!("deleting {}", d.have.id), || {
            g.sql
                .delete()
                .set_project(&g.project)
                .set_instance(&d.have.id)
                .send()
        })
        .await?
        {
            None => Ok(()),
            Some(op) => wait_op(cx, &address, &op, d.timeouts.delete_or(INSTANCE_TIMEOUT)).await,
        }
    }
}

/// The instances whose children refresh lists: those of the recorded ones
/// (their inputs, or their id) and the ones the stack declares.
fn instances(known: &[Known]) -> BTreeSet<String> {
    known
        .iter()
        .filter_map(|k| {
            k.inputs
                .get("instance")
                .and_then(Json::as_str)
                .map(str::to_string)
                .or_else(|| k.id.split_once('/').map(|(i, _)| i.to_string()))
        })
        .collect()
}

fn child_id(instance: &str, kind: &str, name: &str) -> String {
    format!("{instance}/{kind}/{name}")
}

/// A database or user of `from` recorded as `to`'s (`Driver::moved_parent`).
fn moved_child(known: &Known, kind: &str, from: &str, to: &str) -> Option<Known> {
    let (instance, name) = split_child(&known.id);
    if instance != from {
        return None;
    }
    let mut moved = known.clone();
    moved.id = child_id(to, kind, &name);
    for m in [&mut moved.inputs, &mut moved.attrs] {
        if m.contains_key("instance") {
            m.insert("instance".into(), json!(to));
        }
    }
    if moved.attrs.contains_key("id") {
        moved.attrs.insert("id".into(), json!(moved.id));
    }
    Some(moved)
}

fn split_child(id: &str) -> (String, String) {
    let mut parts = id.splitn(3, '/');
    let instance = parts.next().unwrap_or_default().to_string();
    let _ = parts.next();
    (instance, parts.next().unwrap_or_default().to_string())
}

/// The databases or users of `instance` (`what` says which) as its list
/// call answers them, none when the instance is gone.
async fn children<T, F, Fut>(
    cx: &Context,
    instance: &str,
    what: &str,
    list: F,
) -> Result<Vec<T>, DriverError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, google_cloud_gax::error::Error>>,
{
    let listing = format!("listing the {what} of {instance}");
    Ok(call_opt(cx, SERVICE, &listing, list)
        .await?
        .unwrap_or_default())
}

async fn list_databases(cx: &Context, instance: &str) -> Result<Vec<Observed>, DriverError> {
    let g = crate::clients(cx).await?;
    let found = children(cx, instance, "databases", || async {
        let list = g.sql_databases.list().set_project(&g.project);
        list.set_instance(instance).send().await.map(|l| l.items)
    })
    .await?;
    Ok(found
        .iter()
        .map(|d| {
            let id = child_id(instance, "databases", &d.name);
            observed(
                id.clone(),
                None,
                None,
                vec![
                    ("id", json!(id)),
                    ("instance", json!(instance)),
                    ("name", json!(d.name)),
                    ("charset", json!(d.charset)),
                ],
            )
        })
        .collect())
}

#[async_trait::async_trait]
impl Driver for Database {
    fn schema(&self) -> &'static KindSchema {
        &DATABASE
    }
    fn moved_parent(&self, known: &Known, from: &str, to: &str) -> Option<Known> {
        moved_child(known, "databases", from, to)
    }
    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let mut out = Vec::new();
        for i in instances(known) {
            out.extend(list_databases(cx, &i).await?);
        }
        Ok(out)
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        let (instance, _) = split_child(id);
        Ok(list_databases(cx, &instance)
            .await?
            .into_iter()
            .find(|o| o.id == id))
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let g = crate::clients(cx).await?;
        let instance = want.required_str("instance")?;
        let name = want.required_str("name")?;
        let id = child_id(instance, "databases", name);
        let body: google_cloud_sql_v1::model::Database = message(
            "database",
            json!({"name": name, "instance": instance, "project": g.project, "charset": want.props.get("charset")}),
        )?;
        let existing = self.lookup(cx, &id).await?;
        if existing.is_none() {
            let op = call(cx, SERVICE, &format!("creating database {name}"), || {
                g.sql_databases
                    .insert()
                    .set_project(&g.project)
                    .set_instance(instance)
                    .set_body(body.clone())
                    .send()
            })
            .await?;
            wait_op(
                cx,
                want.address,
                &op,
                want.timeouts.create_or(CHILD_TIMEOUT),
            )
            .await?;
        }
        found_again(self.lookup(cx, &id).await?, "database", &id)
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { have, .. } = u;
        found_again(self.lookup(cx, &have.id).await?, "database", &have.id)
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let g = crate::clients(cx).await?;
        let (instance, name) = split_child(&d.have.id);
        delete_child(cx, &d, || {
            g.sql_databases
                .delete()
                .set_project(&g.project)
                .set_instance(&instance)
                .set_database(&name)
                .send()
        })
        .await
    }
}

async fn list_users(
    cx: &Context,
    instance: &str,
    known: &[Known],
) -> Result<Vec<Observed>, DriverError> {
    let g = crate::clients(cx).await?;
    let found = children(cx, instance, "users", || async {
        let list = g.sql_users.list().set_project(&g.project);
        list.set_instance(instance).send().await.map(|l| l.items)
    })
    .await?;
    Ok(found
        .iter()
        .map(|u| {
            let id = child_id(instance, "users", &u.name);
            // Cloud SQL never shows a password: the version last set is what
            // the state recorded.
            let recorded = known.iter().find(|k| k.id == id);
            let was = |name| recorded.and_then(|k| k.recorded(name)).cloned();
            observed(
                id.clone(),
                None,
                None,
                vec![
                    ("id", json!(id)),
                    ("instance", json!(instance)),
                    ("name", json!(u.name)),
                    (
                        "password_secret",
                        was("password_secret").unwrap_or(Json::Null),
                    ),
                    (
                        "password_version",
                        was("password_version").unwrap_or(Json::Null),
                    ),
                ],
            )
        })
        .collect())
}

async fn set_password(cx: &Context, want: &Desired<'_>, create: bool) -> Result<(), DriverError> {
    let g = crate::clients(cx).await?;
    let instance = want.required_str("instance")?;
    let name = want.required_str("name")?;
    let (password, _) = crate::read_secret_source(
        cx,
        &format!("the password of database user {name}"),
        want.required_str("password_secret")?,
    )
    .await?;
    let body: google_cloud_sql_v1::model::User = message(
        "user",
        json!({"name": name, "instance": instance, "project": g.project, "password": password}),
    )?;
    drop(password);
    let op = if create {
        call(
            cx,
            SERVICE,
            &format!("creating database user {name}"),
            || {
                g.sql_users
                    .insert()
                    .set_project(&g.project)
                    .set_instance(instance)
                    .set_body(body.clone())
                    .send()
            },
        )
        .await?
    } else {
        call(
            cx,
            SERVICE,
            &format!("setting the password of database user {name}"),
            || {
                g.sql_users
                    .update()
                    .set_project(&g.project)
                    .set_instance(instance)
                    .set_name(name)
                    .set_body(body.clone())
                    .send()
            },
        )
        .await?
    };
    wait_op(
        cx,
        want.address,
        &op,
        want.timeouts.create_or(CHILD_TIMEOUT),
    )
    .await
}

#[async_trait::async_trait]
impl Driver for User {
    fn schema(&self) -> &'static KindSchema {
        &USER
    }
    fn moved_parent(&self, known: &Known, from: &str, to: &str) -> Option<Known> {
        moved_child(known, "users", from, to)
    }
    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let mut out = Vec::new();
        for i in instances(known) {
            out.extend(list_users(cx, &i, known).await?);
        }
        Ok(out)
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        let (instance, _) = split_child(id);
        Ok(list_users(cx, &instance, &[])
            .await?
            .into_iter()
            .find(|o| o.id == id))
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let instance = want.required_str("instance")?;
        let name = want.required_str("name")?;
        let id = child_id(instance, "users", name);
        // Cloud SQL makes the `postgres` user with every instance; a user a
        // killed run made is there too: either way its password is set.
        let exists = self.lookup(cx, &id).await?.is_some();
        set_password(cx, want, !exists).await?;
        Ok(recorded(want, &id))
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        set_password(cx, want, false).await?;
        Ok(recorded(want, &have.id))
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let g = crate::clients(cx).await?;
        let (instance, name) = split_child(&d.have.id);
        if name == "postgres" {
            // The instance's own administrator goes with the instance.
            return Ok(());
        }
        delete_child(cx, &d, || {
            g.sql_users
                .delete()
                .set_project(&g.project)
                .set_instance(&instance)
                .set_name(&name)
                .send()
        })
        .await
    }
}

/// Deletes a database or user of an instance (`delete`) and waits for it;
/// one already gone is done.
async fn delete_child<F, Fut>(cx: &Context, d: &Delete<'_>, delete: F) -> Result<(), DriverError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = Result<google_cloud_sql_v1::model::Operation, google_cloud_gax::error::Error>,
    >,
{
    match call_opt(cx, SERVICE, &format!("deleting {}", d.have.id), delete).await? {
        None => Ok(()),
        Some(op) => wait_op(cx, &d.have.id, &op, d.timeouts.delete_or(CHILD_TIMEOUT)).await,
    }
}

fn recorded(want: &Desired<'_>, id: &str) -> Observed {
    let (instance, name) = split_child(id);
    observed(
        id.to_string(),
        None,
        None,
        vec![
            ("id", json!(id)),
            ("instance", json!(instance)),
            ("name", json!(name)),
            (
                "password_secret",
                want.props
                    .get("password_secret")
                    .cloned()
                    .unwrap_or(Json::Null),
            ),
            (
                "password_version",
                want.props
                    .get("password_version")
                    .cloned()
                    .unwrap_or(Json::Null),
            ),
        ],
    )
}

/// `backup --snapshot` on Cloud SQL: an on-demand backup run of the
/// primary (kept until deleted, unlike the automated ones), waited for.
pub struct OnDemandBackups;

#[async_trait::async_trait]
impl ralph_core::driver::capability::Snapshots for OnDemandBackups {
    fn is_primary(&self, props: &serde_json::Map<String, Json>) -> bool {
        master_of(props).is_none()
    }

    async fn snapshot(
        &self,
        cx: &Context,
        props: &serde_json::Map<String, Json>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, DriverError> {
        let g = crate::clients(cx).await?;
        let instance = props
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| DriverError::new("the instance has no name"))?;
        let description = format!(
            "ralph-deploy backup --snapshot at {}",
            now.format("%Y-%m-%dT%H:%M:%SZ")
        );
        let body: google_cloud_sql_v1::model::BackupRun = message(
            "an on-demand backup",
            serde_json::json!({"description": description}),
        )?;
        let what = format!("starting an on-demand backup of {instance}");
        let op = call(cx, SERVICE, &what, || {
            g.sql_backup_runs
                .insert()
                .set_project(&g.project)
                .set_instance(instance)
                .set_body(body.clone())
                .send()
        })
        .await?;
        wait_op(cx, instance, &op, Duration::from_secs(30 * 60)).await?;
        Ok(format!("{instance} on-demand backup ({})", op.name))
    }
}
