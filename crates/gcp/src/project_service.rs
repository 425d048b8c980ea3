//! `gcp.project_service`: an API enabled on the project (Service Usage). A
//! new project refuses every call to an API it has not enabled (403
//! SERVICE_DISABLED, "... has not been used in project N before or it is
//! disabled"), so the other Google Cloud resources of a stack come after
//! the APIs they call. Enabling is idempotent; destroying the resource
//! leaves the API on unless `disable_on_destroy` says otherwise (other
//! things in the project may be using it).
//!
//! google-cloud-rust has no Service Usage client: this kind speaks its REST
//! API (v1) through `rest::Rest`.

use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::rest::Rest;
use ralph_core::driver::{Context, Delete, Desired, Driver, DriverError, Known, Observed, Update};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

const SERVICE: &str = "serviceusage";
const DEFAULT_ENDPOINT: &str = "https://serviceusage.googleapis.com";
const TIMEOUT: Duration = Duration::from_secs(10 * 60);

static SCHEMA: KindSchema = KindSchema::new("gcp.project_service", SERVICE, "An API enabled on the project: a new project refuses calls to every API it has not enabled (403 SERVICE_DISABLED), so the stack's other Google Cloud resources depend on these.")
    .fields(&[
        Field::fixed("service",
            Ty::String,
            "the API, such as compute.googleapis.com")
        .check(api_name),
        Field::new(
            "project",
            Ty::String,
            "the project (default: the stack's)",
        )
        .forces_replace(),
        Field::new(
            "disable_on_destroy",
            Ty::Bool,
            "turn the API off when this resource is destroyed (by default it stays on: other things in the project may use it)",
        )
        .default("false"),
    ])
    .attrs(&[
        Attr::string("id", "PROJECT|SERVICE"),
        Attr::string("title", "the API's display name"),
    ]);

pub fn api_name(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = s.strip_suffix(".googleapis.com").is_some_and(|n| {
        n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    });
    checks::require(ok, || {
        format!(
            "`{s}` is not an API's service name: write it as NAME.googleapis.com, such as compute.googleapis.com"
        )
    })
}

pub struct ProjectService;

fn id_of(project: &str, service: &str) -> String {
    format!("{project}|{service}")
}

async fn project_of(cx: &Context, props: &Map<String, Json>) -> Result<String, DriverError> {
    match props
        .get("project")
        .and_then(Json::as_str)
        .filter(|p| !p.is_empty())
    {
        Some(p) => Ok(p.to_string()),
        None => Ok(crate::clients(cx).await?.project.clone()),
    }
}

/// The API as enabled, or None when it is off.
async fn read(
    rest: &Rest<'_>,
    project: &str,
    service: &str,
) -> Result<Option<Observed>, DriverError> {
    let got = rest
        .send(
            "GET",
            &format!("v1/projects/{project}/services/{service}"),
            None,
            &format!("reading whether {service} is enabled"),
        )
        .await?;
    Ok(got
        .filter(|v| v["state"] == "ENABLED")
        .map(|v| observed(project, service, &v)))
}

/// The APIs enabled on a project: one paged list.
async fn enabled(rest: &Rest<'_>, project: &str) -> Result<Map<String, Json>, DriverError> {
    let services = rest
        .list_all(
            &format!("v1/projects/{project}/services?filter=state:ENABLED"),
            "services",
            &format!("listing the APIs enabled on project {project}"),
        )
        .await?;
    Ok(services
        .into_iter()
        .filter_map(|s| Some((s["config"]["name"].as_str()?.to_string(), s)))
        .collect())
}

fn observed(project: &str, service: &str, v: &Json) -> Observed {
    let id = id_of(project, service);
    let mut attrs = Map::new();
    attrs.insert("id".into(), Json::String(id.clone()));
    attrs.insert("service".into(), Json::String(service.to_string()));
    attrs.insert("project".into(), Json::String(project.to_string()));
    attrs.insert("title".into(), v["config"]["title"].clone());
    Observed {
        address: None,
        owner: None,
        id,
        attrs,
    }
}

async fn enable(cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
    let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
    let project = project_of(cx, want.props).await?;
    let service = want.required_str("service")?;
    let what = format!("enabling {service} on project {project}");
    let op = rest
        .send(
            "POST",
            &format!("v1/projects/{project}/services/{service}:enable"),
            Some(Json::Object(Map::new())),
            &what,
        )
        .await?
        .unwrap_or_default();
    rest.wait(want.address, op, &what, TIMEOUT).await?;
    read(&rest, &project, service).await?.ok_or_else(|| {
        DriverError::new(format!(
            "{what}: the API is still not enabled after the operation finished"
        ))
    })
}

#[async_trait::async_trait]
impl Driver for ProjectService {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    fn typical_seconds(&self) -> u64 {
        30
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        if known.is_empty() {
            return Ok(Vec::new());
        }
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        // One list per project, however many APIs the stack enables.
        let mut lists: std::collections::BTreeMap<String, Map<String, Json>> = Default::default();
        let mut out = Vec::new();
        for k in known {
            let (project, service) = match k.id.split_once('|') {
                Some((p, s)) => (p.to_string(), s.to_string()),
                None => match k.inputs.get("service").and_then(Json::as_str) {
                    Some(s) => (project_of(cx, &k.inputs).await?, s.to_string()),
                    None => continue,
                },
            };
            if !lists.contains_key(&project) {
                let list = enabled(&rest, &project).await?;
                lists.insert(project.clone(), list);
            }
            if let Some(v) = lists.get(&project).and_then(|l| l.get(&service)) {
                out.push(observed(&project, &service, v));
            }
        }
        Ok(out)
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        enable(cx, want).await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, .. } = u;
        // Only `disable_on_destroy` changes in place, and it is the state's.
        enable(cx, want).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        if d.have.attrs.get("disable_on_destroy") != Some(&Json::Bool(true)) {
            return Ok(());
        }
        let (project, service) = d
            .have
            .id
            .split_once('|')
            .ok_or_else(|| DriverError::new(format!("{} is not PROJECT|SERVICE", d.have.id)))?;
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let what = format!("disabling {service} on project {project}");
        let op = rest
            .send(
                "POST",
                &format!("v1/projects/{project}/services/{service}:disable"),
                Some(serde_json::json!({ "disableDependentServices": false, "checkIfServiceHasUsage": "CHECK" })),
                &what,
            )
            .await?;
        if let Some(op) = op {
            let address = d.address();
            rest.wait(&address, op, &what, TIMEOUT).await?;
        }
        Ok(())
    }
}
