//! Cloud Logging: where the orchestrator's logs are kept, and for how long.
//!
//! GKE's logging agent sends every container's lines to the project's
//! `_Default` sink, whose bucket keeps them 30 days, shared with everything
//! else in the project. The stack states its own retention the way it does
//! on AWS (a CloudWatch log group with `retention_days`):
//!
//! - `gcp.log_bucket`: a log bucket with `retention_days` (1-3650). A
//!   deleted bucket is not gone: Google keeps it DELETE_REQUESTED for 7 days,
//!   during which its id cannot be taken again. A bucket of this resource in
//!   that state is undeleted and set as the stack says; refresh treats it as
//!   absent.
//! - `gcp.log_sink`: a project sink routing the entries its `filter`
//!   matches (the orchestrator's namespace's containers) into the bucket.
//!   A sink into a log bucket of the same project needs no grant for its
//!   writer identity.
//!
//! Neither has labels: ownership is the description marker the Compute
//! kinds use, and refresh lists the project's buckets (every location, `-`)
//! and sinks. google-cloud-rust's logging crate is not a dependency: both
//! speak Cloud Logging's REST API (v2) through `rest::Rest`.

use serde_json::{json, Value as Json};

use super::rest::Rest;
use super::{describe, from_description, observed, take_over};
use ralph_core::driver::{Context, Delete, Desired, Driver, DriverError, Known, Observed, Update};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

const SERVICE: &str = "logging";
const DEFAULT_ENDPOINT: &str = "https://logging.googleapis.com";
/// The prefix of a sink's destination when it is a log bucket.
const BUCKET_DESTINATION: &str = "logging.googleapis.com/";

/// Bucket and sink ids: 1-100 letters, digits, `_`, `-` or `.`, starting
/// with a letter or digit (ids starting with `_` are Google's own:
/// `_Default`, `_Required`).
fn log_id(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = (1..=100).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    checks::require(ok, || {
        format!(
            "`{s}` is not a Cloud Logging id: 1-100 letters, digits, _, - or ., starting with a letter or digit (ids starting with _ are Google's)"
        )
    })
}

fn retention(v: &Json) -> Result<(), String> {
    match v.as_i64() {
        Some(1..=3650) => Ok(()),
        _ => Err(format!(
            "retention_days is {v}: Cloud Logging keeps a bucket's entries 1 to 3650 days"
        )),
    }
}

fn destination(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let known = [
        BUCKET_DESTINATION,
        "storage.googleapis.com/",
        "bigquery.googleapis.com/",
        "pubsub.googleapis.com/",
    ];
    checks::require(
        known.iter().any(|p| s.starts_with(p) && s.len() > p.len()),
        || {
            format!(
            "`{s}` is not a sink destination: name a log bucket as logging.googleapis.com/projects/P/locations/L/buckets/B (a gcp.log_bucket's `destination`), or a storage, BigQuery or Pub/Sub destination"
        )
        },
    )
}

static BUCKET: KindSchema = KindSchema::new("gcp.log_bucket", SERVICE, "A Cloud Logging bucket that keeps the log entries routed to it `retention_days` days (the project's _Default bucket keeps everything 30).")
    .fields(&[
        Field::name("the bucket's id, such as ralph-production")
            .check(log_id),
        Field::new(
            "location",
            Ty::String,
            "`global` or a region such as europe-west1 (where the entries are stored)",
        )
        .default("\"global\"")
        .forces_replace(),
        Field::new(
            "retention_days",
            Ty::Int,
            "how many days the bucket keeps an entry (1-3650)",
        )
        .default("30")
        .check(retention),
        Field::new("description", Ty::String, "what the bucket holds")
            .default("\"Managed by ralph-deploy\""),
    ])
    .attrs(&[
        Attr::string("id", "projects/PROJECT/locations/LOCATION/buckets/NAME"),
        Attr::string("destination", "the bucket as a sink names it: logging.googleapis.com/projects/..."),
    ]);

static SINK: KindSchema = KindSchema::new("gcp.log_sink", SERVICE, "A project log sink: routes the entries its filter matches to a destination, such as a gcp.log_bucket.")
    .fields(&[
        Field::name("the sink's id, such as ralph-production-orchestrator")
            .check(log_id),
        Field::new(
            "destination",
            Ty::String,
            "where the entries go: a gcp.log_bucket's `destination`",
        )
        .required()
        .check(destination),
        Field::new(
            "filter",
            Ty::String,
            "which entries, in the Logging query language (empty: every entry of the project)",
        )
        .default("\"\""),
        Field::new("description", Ty::String, "what the sink routes")
            .default("\"Managed by ralph-deploy\""),
        Field::new("disabled", Ty::Bool, "stop routing without deleting the sink").default("false"),
    ])
    .attrs(&[
        Attr::string("id", "projects/PROJECT/sinks/NAME"),
        Attr::string("writer_identity", "the service account the sink writes as (grant it the destination when that is not a log bucket of this project)"),
    ]);

pub fn drivers() -> Vec<Box<dyn Driver>> {
    vec![Box::new(LogBucket), Box::new(LogSink)]
}

pub struct LogBucket;
pub struct LogSink;

/// Everything of one collection of the stack's project that the owner has:
/// one paged list of `v2/projects/PROJECT/{collection}`, kept by the
/// description marker.
async fn owned(
    cx: &Context,
    collection: &str,
    key: &str,
    noun: &str,
    observe: impl Fn(&str, &Json) -> Option<Observed>,
) -> Result<Vec<Observed>, DriverError> {
    let project = crate::clients(cx).await?.project.clone();
    let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
    let all = rest
        .list_all(
            &format!("v2/projects/{project}/{collection}"),
            key,
            &format!("listing the {noun} of project {project}"),
        )
        .await?;
    Ok(all
        .iter()
        .filter_map(|v| observe(&project, v))
        .filter(|o| crate::ours(cx, o))
        .collect())
}

/// Deletes `id` (a 404, gone already, is done).
async fn delete_named(cx: &Context, id: &str, noun: &str) -> Result<(), DriverError> {
    let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
    rest.send(
        "DELETE",
        &format!("v2/{id}"),
        None,
        &format!("deleting {noun} {id}"),
    )
    .await?;
    Ok(())
}

/// A bucket as the kind's attributes; `None` for one Google is deleting.
fn observe_bucket(v: &Json) -> Option<Observed> {
    if v["lifecycleState"] == "DELETE_REQUESTED" {
        return None;
    }
    let name = v["name"].as_str()?;
    let parts: Vec<&str> = name.split('/').collect();
    let [_, _, _, location, _, bucket] = parts[..] else {
        return None;
    };
    let (owner, address, user) = from_description(v["description"].as_str().unwrap_or_default());
    Some(observed(
        name,
        owner,
        address,
        vec![
            ("id", json!(name)),
            ("name", json!(bucket)),
            ("location", json!(location)),
            (
                "retention_days",
                json!(v["retentionDays"].as_i64().unwrap_or(30)),
            ),
            ("description", json!(user)),
            ("destination", json!(format!("{BUCKET_DESTINATION}{name}"))),
        ],
    ))
}

fn observe_sink(project: &str, v: &Json) -> Option<Observed> {
    let name = v["name"].as_str()?;
    let id = format!("projects/{project}/sinks/{name}");
    let (owner, address, user) = from_description(v["description"].as_str().unwrap_or_default());
    Some(observed(
        id.clone(),
        owner,
        address,
        vec![
            ("id", json!(id)),
            ("name", json!(name)),
            ("destination", v["destination"].clone()),
            ("filter", json!(v["filter"].as_str().unwrap_or_default())),
            ("description", json!(user)),
            ("disabled", json!(v["disabled"].as_bool().unwrap_or(false))),
            ("writer_identity", v["writerIdentity"].clone()),
        ],
    ))
}

fn bucket_body(cx: &Context, want: &Desired<'_>) -> Result<Json, DriverError> {
    Ok(json!({
        "description": describe(&cx.owner, want.address, want.str("description").unwrap_or_default()),
        "retentionDays": want.int::<i64>("retention_days")?.unwrap_or(30),
    }))
}

fn bucket_path(project: &str, want: &Desired<'_>) -> Result<String, DriverError> {
    Ok(format!(
        "v2/projects/{project}/locations/{}/buckets/{}",
        want.str("location").unwrap_or("global"),
        want.required_str("name")?
    ))
}

async fn set_bucket(
    rest: &Rest<'_>,
    cx: &Context,
    path: &str,
    want: &Desired<'_>,
    what: &str,
) -> Result<Observed, DriverError> {
    let got = rest
        .send(
            "PATCH",
            &format!("{path}?updateMask=description,retentionDays"),
            Some(bucket_body(cx, want)?),
            what,
        )
        .await?
        .ok_or_else(|| DriverError::new(format!("{what}: the bucket is gone")))?;
    observe_bucket(&got)
        .ok_or_else(|| DriverError::new(format!("{what}: the answer is not a live bucket")))
}

#[async_trait::async_trait]
impl Driver for LogBucket {
    fn schema(&self) -> &'static KindSchema {
        &BUCKET
    }

    async fn refresh(&self, cx: &Context, _known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        owned(
            cx,
            "locations/-/buckets",
            "buckets",
            "log buckets",
            |_, v| observe_bucket(v),
        )
        .await
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let got = rest
            .send(
                "GET",
                &format!("v2/{id}"),
                None,
                &format!("reading log bucket {id}"),
            )
            .await?;
        Ok(got.as_ref().and_then(observe_bucket))
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let project = crate::clients(cx).await?.project.clone();
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let path = bucket_path(&project, want)?;
        let (parent, id) = path.rsplit_once("/buckets/").expect("a bucket path");
        let what = format!("creating log bucket {}", &path[3..]);
        let made = rest
            .create(
                &format!("{parent}/buckets?bucketId={id}"),
                bucket_body(cx, want)?,
                &what,
            )
            .await?;
        if let Ok(v) = made {
            return observe_bucket(&v)
                .ok_or_else(|| DriverError::new(format!("{what}: the answer is not a bucket")));
        }
        // Taken: this resource's own bucket from a run killed after the
        // create, or one deleted less than 7 days ago (undeleted here), or
        // someone else's.
        let held = rest.send("GET", &path, None, &what).await?;
        let mine = held.as_ref().is_some_and(|v| {
            let (owner, address, _) =
                from_description(v["description"].as_str().unwrap_or_default());
            owner.as_ref() == Some(&cx.owner) && address.as_deref() == Some(want.address)
        });
        if mine
            && held
                .as_ref()
                .is_some_and(|v| v["lifecycleState"] == "DELETE_REQUESTED")
        {
            rest.send("POST", &format!("{path}:undelete"), Some(json!({})), &what)
                .await?;
        } else {
            let found = held.as_ref().and_then(observe_bucket);
            let what = format!(
                "log bucket {id} in project {project}{}",
                if found.is_none() && held.is_some() {
                    " (deleted less than 7 days ago, so its id is still taken)"
                } else {
                    ""
                }
            );
            // A bucket Google is deleting is nobody's to take over.
            let holder = found.or_else(|| {
                held.as_ref()
                    .map(|_| observed(path.as_str(), None, None, Vec::new()))
            });
            take_over(cx, want.address, &what, holder)?;
        }
        set_bucket(&rest, cx, &path, want, &what).await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, .. } = u;
        let project = crate::clients(cx).await?.project.clone();
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let path = bucket_path(&project, want)?;
        let what = format!("updating log bucket {}", &path[3..]);
        set_bucket(&rest, cx, &path, want, &what).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        delete_named(cx, &d.have.id, "log bucket").await
    }
}

fn sink_body(cx: &Context, want: &Desired<'_>) -> Result<Json, DriverError> {
    Ok(json!({
        "name": want.required_str("name")?,
        "destination": want.required_str("destination")?,
        "filter": want.str("filter").unwrap_or_default(),
        "description": describe(&cx.owner, want.address, want.str("description").unwrap_or_default()),
        "disabled": want.bool("disabled").unwrap_or(false),
    }))
}

async fn set_sink(
    rest: &Rest<'_>,
    cx: &Context,
    project: &str,
    want: &Desired<'_>,
    what: &str,
) -> Result<Observed, DriverError> {
    let name = want.required_str("name")?;
    let got = rest
        .send(
            "PATCH",
            &format!(
                "v2/projects/{project}/sinks/{name}?updateMask=destination,filter,description,disabled"
            ),
            Some(sink_body(cx, want)?),
            what,
        )
        .await?
        .ok_or_else(|| DriverError::new(format!("{what}: the sink is gone")))?;
    observe_sink(project, &got)
        .ok_or_else(|| DriverError::new(format!("{what}: the answer is not a sink")))
}

#[async_trait::async_trait]
impl Driver for LogSink {
    fn schema(&self) -> &'static KindSchema {
        &SINK
    }

    async fn refresh(&self, cx: &Context, _known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        owned(cx, "sinks", "sinks", "log sinks", observe_sink).await
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let project = id.split('/').nth(1).unwrap_or_default().to_string();
        let got = rest
            .send(
                "GET",
                &format!("v2/{id}"),
                None,
                &format!("reading log sink {id}"),
            )
            .await?;
        Ok(got.as_ref().and_then(|v| observe_sink(&project, v)))
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let project = crate::clients(cx).await?.project.clone();
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let name = want.required_str("name")?;
        let what = format!("creating log sink {name} in project {project}");
        let made = rest
            .create(
                &format!("v2/projects/{project}/sinks?uniqueWriterIdentity=true"),
                sink_body(cx, want)?,
                &what,
            )
            .await?;
        if let Ok(v) = made {
            return observe_sink(&project, &v)
                .ok_or_else(|| DriverError::new(format!("{what}: the answer is not a sink")));
        }
        let held = rest
            .send(
                "GET",
                &format!("v2/projects/{project}/sinks/{name}"),
                None,
                &what,
            )
            .await?;
        take_over(
            cx,
            want.address,
            &format!("log sink {name} in project {project}"),
            held.as_ref().and_then(|v| observe_sink(&project, v)),
        )?;
        set_sink(&rest, cx, &project, want, &what).await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, .. } = u;
        let project = crate::clients(cx).await?.project.clone();
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let what = format!(
            "updating log sink {} in project {project}",
            want.required_str("name")?
        );
        set_sink(&rest, cx, &project, want, &what).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        delete_named(cx, &d.have.id, "log sink").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_retention_are_checked_as_google_does() {
        assert!(log_id(&json!("ralph-production.logs_1")).is_ok());
        assert!(log_id(&json!("_Default")).is_err());
        assert!(log_id(&json!("")).is_err());
        assert!(log_id(&json!("a/b")).is_err());
        assert!(log_id(&json!("x".repeat(101))).is_err());
        assert!(retention(&json!(3650)).is_ok());
        assert!(retention(&json!(0)).is_err());
        assert!(retention(&json!(3651)).is_err());
        assert!(destination(&json!(
            "logging.googleapis.com/projects/p/locations/global/buckets/b"
        ))
        .is_ok());
        assert!(destination(&json!("projects/p/locations/global/buckets/b")).is_err());
    }

    #[test]
    fn a_bucket_being_deleted_is_absent() {
        let v = json!({"name": "projects/p/locations/global/buckets/b", "lifecycleState": "DELETE_REQUESTED"});
        assert!(observe_bucket(&v).is_none());
        let v = json!({"name": "projects/p/locations/europe-west1/buckets/b", "lifecycleState": "ACTIVE", "retentionDays": 90, "description": "logs"});
        let o = observe_bucket(&v).unwrap();
        assert_eq!(o.attrs["location"], "europe-west1");
        assert_eq!(o.attrs["retention_days"], 90);
        assert_eq!(
            o.attrs["destination"],
            "logging.googleapis.com/projects/p/locations/europe-west1/buckets/b"
        );
    }
}
