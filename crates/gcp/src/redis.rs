//! `gcp.redis_instance`: a Memorystore for Redis instance (BASIC or
//! STANDARD_HA), reached over private services access, with AUTH and
//! in-transit encryption. Size, labels and AUTH change in place; the AUTH
//! string never enters the state: a secret source
//! `memorystore:projects/P/locations/L/instances/I` reads it when the
//! orchestrator's Secret is made.

use std::time::Duration;

use serde_json::{json, Value as Json};

use super::OpState;
use super::{call, call_create, call_opt, from_labels, labels, message, observed};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
    READY_ATTR, STATUS_ATTR,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

const SERVICE: &str = "redis";
const TIMEOUT: Duration = Duration::from_secs(3600);
pub const AUTH_SOURCE: &str = "memorystore:";

fn tier(v: &Json) -> Result<(), String> {
    checks::choice(v, &["BASIC", "STANDARD_HA"], "tier")
}

/// The versions Memorystore for Redis offers (the API's enum).
fn redis_version(v: &Json) -> Result<(), String> {
    checks::choice(
        v,
        &[
            "REDIS_3_2",
            "REDIS_4_0",
            "REDIS_5_0",
            "REDIS_6_X",
            "REDIS_7_0",
            "REDIS_7_2",
        ],
        "redis_version",
    )
}

fn connect_mode(v: &Json) -> Result<(), String> {
    checks::choice(
        v,
        &["DIRECT_PEERING", "PRIVATE_SERVICE_ACCESS"],
        "connect_mode",
    )
}

fn transit(v: &Json) -> Result<(), String> {
    checks::choice(
        v,
        &["SERVER_AUTHENTICATION", "DISABLED"],
        "transit_encryption",
    )
}

static SCHEMA: KindSchema = KindSchema::new("gcp.redis_instance", SERVICE, "A Memorystore for Redis instance.")
    .fields(&[
        Field::name("the instance id")
            .check(super::compute::rfc1035),
        super::region_field(),
        Field::new(
            "tier",
            Ty::String,
            "BASIC or STANDARD_HA (a replica with automatic failover)",
        )
        .default("\"STANDARD_HA\"")
        .forces_replace()
        .check(tier),
        Field::new(
            "memory_size_gb",
            Ty::Int,
            "the size in GiB (changes in place)",
        )
        .required()
        .check(ralph_core::model::kinds::checks::range::<1, 300>),
        Field::new("redis_version", Ty::String, "such as REDIS_7_0")
            .default("\"REDIS_7_0\"")
            .forces_replace()
            .check(redis_version),
        Field::fixed("authorized_network",
            Ty::String,
            "the VPC network, usually `${vpc.id}`"),
        Field::new(
            "connect_mode",
            Ty::String,
            "PRIVATE_SERVICE_ACCESS (the reserved range) or DIRECT_PEERING",
        )
        .default("\"PRIVATE_SERVICE_ACCESS\"")
        .forces_replace()
        .check(connect_mode),
        Field::new("auth_enabled", Ty::Bool, "require the AUTH string").default("true"),
        Field::new(
            "transit_encryption",
            Ty::String,
            "SERVER_AUTHENTICATION (TLS) or DISABLED",
        )
        .default("\"SERVER_AUTHENTICATION\"")
        .forces_replace()
        .check(transit),
        Field::labels(),
    ])
    .attrs(&[
        Attr::string("id", "the instance's resource name"),
        Attr::string("host", "the primary endpoint's address"),
        Attr::new("port", Ty::Int, "the port"),
        Attr::string("auth_secret", "the secret source that reads the AUTH string (memorystore:NAME)"),
        Attr::string("server_ca", "the server's CA certificates (PEM) that a TLS client verifies the instance with; empty without TLS"),
    ])
    .name_field("name");

pub struct RedisInstance;

fn observe(i: &google_cloud_redis_v1::model::Instance) -> Observed {
    use google_cloud_redis_v1::model::instance::State;
    let v = super::json(i);
    let (owner, address, user) = from_labels(v.get("labels"));
    let state = i.state.name().unwrap_or("STATE_UNSPECIFIED").to_string();
    let ready = matches!(i.state, State::Ready);
    let region = i.name.split('/').nth(3).unwrap_or_default().to_string();
    observed(
        i.name.clone(),
        owner,
        address,
        vec![
            ("id", json!(i.name)),
            ("name", json!(super::short_name(&i.name))),
            ("region", json!(region)),
            ("tier", json!(i.tier.name())),
            ("memory_size_gb", json!(i.memory_size_gb)),
            ("redis_version", json!(i.redis_version)),
            (
                "authorized_network",
                json!(relative_network(&i.authorized_network)),
            ),
            ("connect_mode", json!(i.connect_mode.name())),
            ("auth_enabled", json!(i.auth_enabled)),
            (
                "transit_encryption",
                json!(i.transit_encryption_mode.name()),
            ),
            ("labels", Json::Object(user)),
            ("host", json!(i.host)),
            ("port", json!(i.port)),
            ("auth_secret", json!(format!("{AUTH_SOURCE}{}", i.name))),
            (
                "server_ca",
                json!(i
                    .server_ca_certs
                    .iter()
                    .map(|c| c.cert.trim_end().to_string() + "\n")
                    .collect::<String>()),
            ),
            (STATUS_ATTR, json!(state)),
            (READY_ATTR, json!(ready)),
        ],
    )
}

/// Networks are compared as `projects/P/global/networks/N`.
fn relative_network(n: &str) -> String {
    match n.find("projects/") {
        Some(i) => n[i..].to_string(),
        None => n.to_string(),
    }
}

async fn read(cx: &Context, name: &str) -> Result<Option<Observed>, DriverError> {
    let g = crate::clients(cx).await?;
    Ok(call_opt(cx, SERVICE, &format!("reading {name}"), || {
        g.redis.get_instance().set_name(name).send()
    })
    .await?
    .as_ref()
    .map(observe))
}

/// Waits for a Memorystore operation, then for the instance to be READY.
async fn wait(
    cx: &Context,
    address: &str,
    op: google_cloud_longrunning::model::Operation,
    name: &str,
    timeout: Duration,
    gone: bool,
) -> Result<Option<Observed>, DriverError> {
    let g = crate::clients(cx).await?;
    let op_name = &op.name;
    let what = format!("Memorystore operation {op_name}");
    crate::wait_operation(cx, address, &what, timeout, || async move {
        let op = call(cx, SERVICE, "reading an operation", || {
            g.redis.get_operation().set_name(op_name).send()
        })
        .await?;
        if !op.done {
            // The instance's own state says more than the operation's.
            let state = if gone { None } else { read(cx, name).await? };
            let status = state
                .and_then(|o| {
                    o.attrs
                        .get(STATUS_ATTR)
                        .and_then(Json::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "RUNNING".into());
            return Ok(OpState::Running(status));
        }
        Ok(match &op.result {
            Some(google_cloud_longrunning::model::operation::Result::Error(e)) => {
                OpState::Failed(e.message.clone())
            }
            _ => OpState::Done,
        })
    })
    .await?;
    if gone {
        return Ok(None);
    }
    read(cx, name).await
}

/// The AUTH string of an instance, for a `memorystore:NAME` secret source.
pub async fn read_auth(
    cx: &Context,
    what: &str,
    source: &str,
) -> Result<(String, String), DriverError> {
    let g = crate::clients(cx).await?;
    let name = source.trim_start_matches(AUTH_SOURCE);
    let out = call(cx, SERVICE, &format!("reading {what}"), || {
        g.redis.get_instance_auth_string().set_name(name).send()
    })
    .await?;
    use sha2::Digest;
    // The version is a digest of the string: a new AUTH string restarts the pods.
    let version = hex::encode(&sha2::Sha256::digest(out.auth_string.as_bytes())[..8]);
    Ok((out.auth_string, version))
}

fn body(
    cx: &Context,
    want: &Desired<'_>,
) -> Result<google_cloud_redis_v1::model::Instance, DriverError> {
    let p = want.props;
    message(
        "Redis instance",
        json!({
            "tier": p.get("tier"),
            "memorySizeGb": p.get("memory_size_gb"),
            "redisVersion": p.get("redis_version"),
            "authorizedNetwork": p.get("authorized_network"),
            "connectMode": p.get("connect_mode"),
            "authEnabled": p.get("auth_enabled"),
            "transitEncryptionMode": p.get("transit_encryption"),
            "labels": labels(&cx.owner, want.address, p.get("labels")),
            "displayName": want.address,
        }),
    )
}

fn region(cx_region: &str, want: &Desired<'_>) -> String {
    want.str("region")
        .filter(|r| !r.is_empty())
        .unwrap_or(cx_region)
        .to_string()
}

#[async_trait::async_trait]
impl Driver for RedisInstance {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    fn typical_seconds(&self) -> u64 {
        420
    }

    async fn refresh(&self, cx: &Context, _known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let g = crate::clients(cx).await?;
        // `-`: every region, one paged listing.
        let parent = g.location_path("-");
        crate::every_page(|token| {
            let parent = &parent;
            async move {
                let page = call(cx, SERVICE, "listing Redis instances", || {
                    g.redis
                        .list_instances()
                        .set_parent(parent)
                        .set_page_size(1000)
                        .set_page_token(&token)
                        .send()
                })
                .await?;
                let items = page.instances.iter().map(observe);
                Ok((
                    items.filter(|o| crate::ours(cx, o)).collect(),
                    Some(page.next_page_token),
                ))
            }
        })
        .await
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        let g = crate::clients(cx).await?;
        let name = if id.contains('/') {
            id.to_string()
        } else {
            format!("{}/instances/{id}", g.location_path(&g.region))
        };
        read(cx, &name).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let g = crate::clients(cx).await?;
        let id = want.required_str("name")?;
        let parent = g.location_path(&region(&g.region, want));
        let name = format!("{parent}/instances/{id}");
        let b = body(cx, want)?;
        let Some(op) = call_create(
            cx,
            SERVICE,
            &format!("creating Redis instance {id}"),
            || {
                g.redis
                    .create_instance()
                    .set_parent(&parent)
                    .set_instance_id(id)
                    .set_instance(b.clone())
                    .send()
            },
        )
        .await?
        else {
            // Asked for by a run that was killed: ours, once it is READY.
            let found = read(cx, &name).await?;
            super::take_over(cx, want.address, &name, found)?;
            return wait_ready(cx, want.address, &name, want.timeouts.create_or(TIMEOUT)).await;
        };
        match wait(
            cx,
            want.address,
            op,
            &name,
            want.timeouts.create_or(TIMEOUT),
            false,
        )
        .await
        {
            Ok(found) => found_again(found, "Redis instance", &name),
            Err(e) => match read(cx, &name).await {
                Ok(Some(o)) => Err(e.with_partial(o)),
                _ => Err(e),
            },
        }
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let (want, have, changed) = (u.want, u.have, u.changed);
        let g = crate::clients(cx).await?;
        let mut paths = Vec::new();
        for c in changed {
            match c.as_str() {
                "memory_size_gb" => paths.push("memory_size_gb"),
                "labels" => paths.push("labels"),
                "auth_enabled" => paths.push("auth_enabled"),
                _ => {}
            }
        }
        if paths.is_empty() {
            // Only waiting for readiness.
            return wait_ready(cx, want.address, &have.id, want.timeouts.update_or(TIMEOUT)).await;
        }
        let mut b = body(cx, want)?;
        b.name = have.id.clone();
        let mask = google_cloud_wkt::FieldMask::default().set_paths(paths);
        let op = call(cx, SERVICE, &format!("updating {}", have.id), || {
            g.redis
                .update_instance()
                .set_instance(b.clone())
                .set_update_mask(mask.clone())
                .send()
        })
        .await?;
        wait(
            cx,
            want.address,
            op,
            &have.id,
            want.timeouts.update_or(TIMEOUT),
            false,
        )
        .await
        .and_then(|found| found_again(found, "Redis instance", &have.id))
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let g = crate::clients(cx).await?;
        let address = d.address();
        match call_opt(cx, SERVICE, &format!("deleting {}", d.have.id), || {
            g.redis.delete_instance().set_name(&d.have.id).send()
        })
        .await?
        {
            None => Ok(()),
            Some(op) => wait(
                cx,
                &address,
                op,
                &d.have.id,
                d.timeouts.delete_or(TIMEOUT),
                true,
            )
            .await
            .map(|_| ()),
        }
    }
}

async fn wait_ready(
    cx: &Context,
    address: &str,
    name: &str,
    timeout: Duration,
) -> Result<Observed, DriverError> {
    super::wait_ready(cx, address, name, timeout, || read(cx, name)).await
}
