//! `gcp.service_networking_connection`: private services access, the VPC
//! peering between the stack's network and Google's service producers over
//! reserved ranges (`gcp.global_address` with purpose VPC_PEERING). Cloud SQL
//! private IP and Memorystore's PRIVATE_SERVICE_ACCESS are refused by Google
//! until this connection exists.
//!
//! google-cloud-rust has no Service Networking client, so this kind speaks
//! the REST API (v1) through `rest::Rest`. Connections have
//! no labels: a connection is identified by its service and network, which
//! is also how an interrupted create is found again.

use std::time::Duration;

use serde_json::{json, Map, Value as Json};

use super::rest::Rest;
use ralph_core::driver::{Context, Delete, Desired, Driver, DriverError, Known, Observed, Update};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

const SERVICE: &str = "servicenetworking";
const DEFAULT_ENDPOINT: &str = "https://servicenetworking.googleapis.com";
const TIMEOUT: Duration = Duration::from_secs(10 * 60);

static SCHEMA: KindSchema = KindSchema::new("gcp.service_networking_connection", SERVICE, "Private services access: the peering Cloud SQL private IP and Memorystore (PRIVATE_SERVICE_ACCESS) need, over reserved ranges.")
    .fields(&[
        Field::fixed("network", Ty::String, "the VPC, usually `${vpc.id}`"),
        Field::new(
            "reserved_ranges",
            Ty::List(&Ty::String),
            "names of the reserved ranges (`gcp.global_address` with purpose VPC_PEERING), usually `[\"${private_services.name}\"]`; changed in place",
        )
        .required(),
        Field::new(
            "service",
            Ty::String,
            "the producer service",
        )
        .default("\"servicenetworking.googleapis.com\"")
        .forces_replace(),
    ])
    .attrs(&[
        Attr::string("id", "SERVICE|NETWORK"),
        Attr::string("peering", "the VPC peering Google made"),
    ]);

pub struct ServiceNetworkingConnection;

/// `projects/P/global/networks/N` from a self link or a relative name.
fn network_name(v: &str) -> String {
    match v.find("projects/") {
        Some(i) => v[i..].to_string(),
        None => v.to_string(),
    }
}

fn id_of(service: &str, network: &str) -> String {
    format!("{service}|{}", network_name(network))
}

/// The connection's name in the API: the service with dots as dashes.
fn connection_name(service: &str) -> String {
    service.replace('.', "-")
}

struct Api<'a> {
    rest: Rest<'a>,
    /// Project id -> number, read once per Api (a create both sends and
    /// reads back by the numbered network).
    numbers: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl<'a> Api<'a> {
    async fn new(cx: &'a Context) -> Result<Api<'a>, DriverError> {
        Ok(Api {
            rest: Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?,
            numbers: Default::default(),
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Json>,
        what: &str,
    ) -> Result<Option<Json>, DriverError> {
        self.rest.send(method, path, body, what).await
    }

    async fn wait(&self, address: &str, op: Json, what: &str) -> Result<(), DriverError> {
        self.rest.wait(address, op, what, TIMEOUT).await.map(|_| ())
    }

    /// The project's number, which Service Networking names networks by.
    async fn numbered(&self, network: &str) -> Result<String, DriverError> {
        let network = network_name(network);
        let mut parts = network.splitn(3, '/');
        let (Some("projects"), Some(project), Some(rest)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(DriverError::new(format!(
                "`network` `{network}` is not projects/PROJECT/global/networks/NAME"
            )));
        };
        if project.chars().all(|c| c.is_ascii_digit()) {
            return Ok(network.clone());
        }
        let known = self
            .numbers
            .lock()
            .ok()
            .and_then(|m| m.get(project).cloned());
        let number = match known {
            Some(n) => n,
            None => {
                let g = crate::clients(self.rest.cx).await?;
                let p = super::call(
                    self.rest.cx,
                    "resourcemanager",
                    "reading the project's number",
                    || {
                        g.projects
                            .get_project()
                            .set_name(format!("projects/{project}"))
                            .send()
                    },
                )
                .await?;
                let n = p.name.trim_start_matches("projects/").to_string();
                if let Ok(mut m) = self.numbers.lock() {
                    m.insert(project.to_string(), n.clone());
                }
                n
            }
        };
        Ok(format!("projects/{number}/{rest}"))
    }

    async fn read(&self, service: &str, network: &str) -> Result<Option<Observed>, DriverError> {
        let numbered = self.numbered(network).await?;
        let list = self
            .send(
                "GET",
                &format!(
                    "v1/services/{service}/connections?network={}",
                    url_escape(&numbered)
                ),
                None,
                "listing private service connections",
            )
            .await?
            .unwrap_or_default();
        let found = list["connections"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["service"].as_str().is_none_or(|s| s.ends_with(service)))
                .cloned()
        });
        Ok(found.map(|c| {
            let mut attrs = Map::new();
            attrs.insert("network".into(), Json::String(network_name(network)));
            attrs.insert("service".into(), Json::String(service.to_string()));
            attrs.insert(
                "reserved_ranges".into(),
                c.get("reservedPeeringRanges").cloned().unwrap_or(json!([])),
            );
            attrs.insert(
                "peering".into(),
                c.get("peering").cloned().unwrap_or(Json::Null),
            );
            let id = id_of(service, network);
            attrs.insert("id".into(), Json::String(id.clone()));
            Observed {
                address: None,
                owner: None,
                id,
                attrs,
            }
        }))
    }
}

/// The Connection body of a create or a range change.
fn connection(numbered: &str, want: &Desired<'_>) -> Json {
    json!({
        "network": numbered,
        "reservedPeeringRanges": want.props.get("reserved_ranges").cloned().unwrap_or(json!([])),
    })
}

enum Write {
    Create,
    Ranges,
}

/// Creates the connection, or changes its ranges in place, waits for the
/// operation and reads the connection back.
async fn write(cx: &Context, want: &Desired<'_>, how: Write) -> Result<Observed, DriverError> {
    let api = Api::new(cx).await?;
    let network = want.required_str("network")?;
    let service = want
        .str("service")
        .unwrap_or("servicenetworking.googleapis.com");
    let numbered = api.numbered(network).await?;
    let (method, path, what) = match how {
        Write::Create => (
            "POST",
            format!("v1/services/{service}/connections"),
            "creating the private service connection",
        ),
        Write::Ranges => (
            "PATCH",
            format!(
                "v1/services/{service}/connections/{}?updateMask=reservedPeeringRanges&force=true",
                connection_name(service)
            ),
            "changing the private service connection's ranges",
        ),
    };
    let op = api
        .send(method, &path, Some(connection(&numbered, want)), what)
        .await?
        .unwrap_or_default();
    api.wait(want.address, op, what).await?;
    api.read(service, network).await?.ok_or_else(|| {
        DriverError::new(format!(
            "the private service connection of {network} is not listed after {what} finished"
        ))
    })
}

fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[async_trait::async_trait]
impl Driver for ServiceNetworkingConnection {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    fn typical_seconds(&self) -> u64 {
        60
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let api = Api::new(cx).await?;
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for k in known {
            let (service, network) = match k.id.split_once('|') {
                Some((s, n)) => (s.to_string(), n.to_string()),
                None => (
                    k.inputs
                        .get("service")
                        .and_then(Json::as_str)
                        .unwrap_or("servicenetworking.googleapis.com")
                        .to_string(),
                    match k.inputs.get("network").and_then(Json::as_str) {
                        Some(n) => n.to_string(),
                        None => continue,
                    },
                ),
            };
            if !seen.insert(id_of(&service, &network)) {
                continue;
            }
            if let Some(o) = api.read(&service, &network).await? {
                out.push(o);
            }
        }
        Ok(out)
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        write(cx, want, Write::Create).await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, .. } = u;
        write(cx, want, Write::Ranges).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let api = Api::new(cx).await?;
        let (service, network) = d
            .have
            .id
            .split_once('|')
            .ok_or_else(|| DriverError::new(format!("{} is not SERVICE|NETWORK", d.have.id)))?;
        let numbered = api.numbered(network).await?;
        let address = d.address();
        let op = api
            .send(
                "POST",
                &format!(
                    "v1/services/{service}/connections/{}",
                    connection_name(service)
                ),
                Some(json!({ "consumerNetwork": numbered })),
                "removing the private service connection",
            )
            .await?;
        if let Some(op) = op {
            api.wait(&address, op, "removing the private service connection")
                .await?;
        }
        Ok(())
    }
}
