//! PostgreSQL: the database schema as versioned migrations
//! (`postgres.migrations`), applied with sqlx's migrator, plus the
//! connection logic that `migrate status` and `db partitions` share.

pub mod backup;
pub mod migrations;
pub mod role;

use serde_json::{Map, Value as Json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::PgPool;

use super::{Context, DriverError};

/// The fields that say how to reach a database and log in as an
/// administrator, shared by every `postgres.*` kind.
pub const CONNECTION_FIELDS: &[&str] = &[
    "url",
    "host",
    "port",
    "database",
    "username",
    "ssl_mode",
    "credentials_secret_arn",
    "password_env",
    "kubeconfig",
    "context",
    "cluster_endpoint",
    "cluster_ca",
    "cluster_name",
    "cluster_auth",
    "forward_namespace",
    "forward_image",
];

/// A kind's fields: the connection fields (`CONNECTION_FIELDS`), then
/// its own.
macro_rules! with_connection_fields {
    ($($own:expr),* $(,)?) => {
        [
        ::ralph_core::model::kinds::Field::new("url", ::ralph_core::model::kinds::Ty::String, "postgres://user@host:port/db, without a password (a tunnel, a bastion, the local cloud); when not empty it wins over `host`").check($crate::postgres::no_password_in_url),
        ::ralph_core::model::kinds::Field::new("host", ::ralph_core::model::kinds::Ty::String, "the database host, usually `${db.address}`"),
        ::ralph_core::model::kinds::Field::new("port", ::ralph_core::model::kinds::Ty::Int, "the database port")
            .default("5432")
            .check(::ralph_core::model::kinds::checks::tcp_port),
        ::ralph_core::model::kinds::Field::new("database", ::ralph_core::model::kinds::Ty::String, "the database name (default: the url's, or ralph)"),
        ::ralph_core::model::kinds::Field::new("username", ::ralph_core::model::kinds::Ty::String, "who connects to make the change (default: the secret's username)"),
        ::ralph_core::model::kinds::Field::new("ssl_mode", ::ralph_core::model::kinds::Ty::String, "disable, prefer, require, verify-full").default("\"prefer\"").check($crate::postgres::ssl),
        ::ralph_core::model::kinds::Field::new("credentials_secret_arn", ::ralph_core::model::kinds::Ty::String, "a secret with the password (a Secrets Manager ARN such as `${db.master_user_secret_arn}`, or a Secret Manager name projects/P/secrets/S): plain text, or JSON with username and password"),
        ::ralph_core::model::kinds::Field::new("password_env", ::ralph_core::model::kinds::Ty::String, "or: an environment variable holding the password"),
        ::ralph_core::model::kinds::Field::new("kubeconfig", ::ralph_core::model::kinds::Ty::String, "reach a private database through this cluster (a kubeconfig file, relative to the stack file): a proxy pod and a port-forward through its API server, from a machine outside the network; or the three cluster_* settings"),
        ::ralph_core::model::kinds::Field::new("context", ::ralph_core::model::kinds::Ty::String, "the kubeconfig context (default: its current context)"),
        ::ralph_core::model::kinds::Field::new("cluster_endpoint", ::ralph_core::model::kinds::Ty::String, "reach a private database through the cluster at this API endpoint, usually `${eks.endpoint}` (a proxy pod and a port-forward through the API server); empty: connect straight to `host`"),
        ::ralph_core::model::kinds::Field::new("cluster_ca", ::ralph_core::model::kinds::Ty::String, "that cluster's CA (base64 PEM)"),
        ::ralph_core::model::kinds::Field::new("cluster_name", ::ralph_core::model::kinds::Ty::String, "that EKS cluster's name, for its token"),
        ::ralph_core::model::kinds::Field::new("cluster_auth", ::ralph_core::model::kinds::Ty::String, "eks or gke: how to log in at `cluster_endpoint` (default eks)").check($crate::kubernetes::cluster_auth),
        ::ralph_core::model::kinds::Field::new("forward_namespace", ::ralph_core::model::kinds::Ty::String, "the namespace of the proxy pods (default ralph-deploy, created with restricted pod security)"),
        ::ralph_core::model::kinds::Field::new("forward_image", ::ralph_core::model::kinds::Ty::String, "the proxy pods' image, a socat (default alpine/socat:1.8.0.3; a mirror the nodes can pull)"),
            $($own),*
        ]
    };
}
pub(crate) use with_connection_fields;

pub fn no_password_in_url(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if s.is_empty() {
        return Ok(());
    }
    match s.parse::<sqlx::postgres::PgConnectOptions>() {
        Err(e) => Err(format!("not a PostgreSQL url: {e}")),
        Ok(_) if s.split('@').next().is_some_and(|userinfo| userinfo.contains("://") && userinfo.split("://").nth(1).is_some_and(|u| u.contains(':'))) => {
            Err("the url carries a password, which would land in the state: use `credentials_secret_arn` or `password_env`".into())
        }
        Ok(_) => Ok(()),
    }
}

pub fn ssl(v: &Json) -> Result<(), String> {
    ralph_core::model::kinds::checks::choice(
        v,
        &["disable", "prefer", "require", "verify-full"],
        "ssl_mode",
    )
}

/// How many times a connection through the cluster is tried when the stream
/// is cut before the database answers.
const FORWARD_ATTEMPTS: u32 = 3;

/// How to reach a database, from a resource's properties. The password
/// comes from a Secrets Manager secret or an environment variable at the
/// moment of connecting; it is never a property and never in the state.
pub async fn connect(cx: &Context, props: &Map<String, Json>) -> Result<PgPool, DriverError> {
    let mut target = resolve(cx, props).await?;
    let at = target.shown();
    let mut attempt = 1;
    let (e, refused) = loop {
        let connecting = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(ralph_core::remote::api_timeout())
            .connect_with(target.options());
        let connected = ralph_core::remote::bounded(
            ralph_core::remote::Party::Postgres,
            &at,
            "connecting to the database",
            connecting,
        )
        .await
        .map_err(DriverError::new)?;
        let e = match connected {
            Ok(pool) => return Ok(pool),
            Err(e) => e,
        };
        let refused = match &target.forward {
            Some(f) => f.last_error().await,
            None => None,
        };
        // A stream through the API server and the kubelet can be cut
        // while it is being set up (a node's port-forward restarting, a
        // proxy pod that just became ready): worth another try, unlike a
        // refusal the cluster states (a NetworkPolicy, a store the pod
        // cannot reach) or a wrong password.
        let cut = |s: &str| {
            let s = s.to_ascii_lowercase();
            [
                "reset by peer",
                "unexpected end of file",
                "broken pipe",
                "connection closed",
            ]
            .iter()
            .any(|w| s.contains(w))
        };
        let transient =
            target.forward.is_some() && cut(&e.to_string()) && refused.as_deref().is_none_or(cut);
        // The proxy pod gone (its node scaled away): through a new one.
        let lost = match &target.forward {
            Some(f) if attempt < FORWARD_ATTEMPTS && f.lost().await => {
                crate::kubernetes::forward::forget(f).await;
                true
            }
            _ => false,
        };
        if lost {
            tracing::debug!(%at, attempt, "the proxy pod is gone; forwarding through a new one");
            target = resolve(cx, props).await?;
            attempt += 1;
            continue;
        }
        if !transient || attempt == FORWARD_ATTEMPTS {
            break (e, refused);
        }
        tracing::debug!(%at, attempt, error = %e, "the connection through the cluster was cut; connecting again");
        tokio::time::sleep(std::time::Duration::from_millis(250 * attempt as u64)).await;
        attempt += 1;
    };
    Err({
        if let Some(why) = refused {
            DriverError::new(format!("cannot connect to the database at {at}: {why}"))
        } else if e.to_string().contains("timed out") {
            DriverError::new(ralph_core::remote::no_answer(
                ralph_core::remote::Party::Postgres,
                &at,
                "connecting to the database",
            ))
        } else {
            DriverError::new(format!("cannot connect to the database at {at}: {e}"))
        }
    })
}

/// Where and as whom to connect, the password included (in memory only).
pub struct Target {
    options: PgConnectOptions,
    password: Option<String>,
    ssl_mode: String,
    /// The forward through the cluster it connects by, if any.
    forward: Option<std::sync::Arc<crate::kubernetes::forward::Forward>>,
}

impl Target {
    pub fn options(&self) -> PgConnectOptions {
        match &self.password {
            Some(p) => self.options.clone().password(p),
            None => self.options.clone(),
        }
    }

    pub fn database(&self) -> String {
        self.options.get_database().unwrap_or("ralph").to_string()
    }

    /// Where this connects, for messages (no password).
    pub fn shown(&self) -> String {
        match &self.forward {
            Some(f) => format!(
                "postgresql://{}@{}/{} (through the cluster)",
                self.options.get_username(),
                f.target(),
                self.database()
            ),
            None => format!(
                "postgresql://{}@{}:{}/{}",
                self.options.get_username(),
                self.options.get_host(),
                self.options.get_port(),
                self.database()
            ),
        }
    }

    /// The same server, another database.
    pub fn with_database(&self, database: &str) -> Target {
        Target {
            options: self.options.clone().database(database),
            password: self.password.clone(),
            ssl_mode: self.ssl_mode.clone(),
            forward: self.forward.clone(),
        }
    }

    /// The libpq environment for pg_dump and pg_restore (the password as
    /// PGPASSWORD: never on a command line, where `ps` would show it).
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.options.get_host().to_string()),
            ("PGPORT", self.options.get_port().to_string()),
            ("PGUSER", self.options.get_username().to_string()),
            ("PGDATABASE", self.database()),
            ("PGSSLMODE", self.ssl_mode.clone()),
            ("PGCONNECT_TIMEOUT", "15".to_string()),
        ];
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", p.clone()));
        }
        env
    }
}

/// Resolves a resource's connection properties (and its secret) into a
/// [`Target`].
pub async fn resolve(cx: &Context, props: &Map<String, Json>) -> Result<Target, DriverError> {
    let s = |k: &str| crate::given(props, k);
    let url_has_user = s("url")
        .and_then(|u| u.parse::<PgConnectOptions>().ok())
        .is_some_and(|o| !o.get_username().is_empty() && s("url").is_some_and(|u| u.contains('@')));
    let mut opts = match s("url") {
        Some(url) => url
            .parse::<PgConnectOptions>()
            .map_err(|e| DriverError::new(format!("the connection url is not valid: {e}")))?,
        None => {
            let host = s("host")
                .ok_or_else(|| DriverError::new("no `host` and no `url` to connect to"))?;
            let port = match props.get("port").and_then(Json::as_i64) {
                None => 5432,
                Some(p) => u16::try_from(p).map_err(|_| {
                    DriverError::new(format!("`port` is {p}; a port is 1 to 65535"))
                })?,
            };
            PgConnectOptions::new()
                .host(&host)
                .port(port)
                .database("ralph")
        }
    };
    // A url says everything about where to connect; `database` is for `host`.
    if let Some(db) = s("database").filter(|_| s("url").is_none()) {
        opts = opts.database(&db);
    }
    if let Some(user) = s("username") {
        opts = opts.username(&user);
    }
    // A url carries its own sslmode when it says one.
    let url_sets_ssl = s("url").is_some_and(|u| u.contains("sslmode="));
    if let Some(mode) = s("ssl_mode").filter(|_| !url_sets_ssl) {
        opts = opts.ssl_mode(match mode.as_str() {
            "disable" => PgSslMode::Disable,
            "require" => PgSslMode::Require,
            "verify-full" => PgSslMode::VerifyFull,
            _ => PgSslMode::Prefer,
        });
    }
    let ssl_mode = match opts.get_ssl_mode() {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
    .to_string();
    let mut password = None;
    if let Some(arn) = s("credentials_secret_arn") {
        let (secret, _) = crate::read_secret_source(cx, "the database credentials", &arn).await?;
        let text = secret.as_str();
        // RDS-managed secrets are {"username": ..., "password": ...}.
        match serde_json::from_str::<Json>(text) {
            Ok(Json::Object(m)) => {
                if let Some(u) = m.get("username").and_then(Json::as_str) {
                    if s("username").is_none() && !url_has_user {
                        opts = opts.username(u);
                    }
                }
                if let Some(p) = m.get("password").and_then(Json::as_str) {
                    password = Some(p.to_string());
                }
            }
            _ => password = Some(text.to_string()),
        }
    } else if let Some(var) = s("password_env") {
        let value = std::env::var(&var).map_err(|_| {
            DriverError::new(format!(
                "the database password comes from the environment variable {var}, which is not set"
            ))
        })?;
        password = Some(value);
    }
    // A private database from outside its network: through the cluster.
    let mut forward = None;
    if s("url").is_none() && crate::kubernetes::forward::names_a_cluster(props) {
        if ssl_mode == "verify-full" {
            return Err(DriverError::new(
                "ssl_mode verify-full cannot be checked through the cluster (the connection is to a local port): use require, or a `url` to a tunnel",
            ));
        }
        let f =
            crate::kubernetes::forward::shared(cx, props, opts.get_host(), opts.get_port()).await?;
        opts = opts.host("127.0.0.1").port(f.local_addr().port());
        forward = Some(f);
    }
    Ok(Target {
        options: opts,
        password,
        ssl_mode,
        forward,
    })
}

/// `host:port/database` for ids and messages (never credentials).
pub fn describe_target(props: &Map<String, Json>) -> String {
    let s = |k: &str| crate::given(props, k);
    if let Some(url) = s("url") {
        if let Ok(o) = url.parse::<PgConnectOptions>() {
            let db = o
                .get_database()
                .map(str::to_string)
                .or_else(|| s("database"))
                .unwrap_or_default();
            return format!("{}:{}/{}", o.get_host(), o.get_port(), db);
        }
    }
    format!(
        "{}:{}/{}",
        s("host").unwrap_or_default(),
        props.get("port").and_then(Json::as_i64).unwrap_or(5432),
        s("database").unwrap_or_default()
    )
}

/// Creates the monthly partitions of the next `months_ahead` months that do
/// not exist yet (the function comes with the migrations); returns how many.
pub async fn ensure_partitions(
    cx: &Context,
    props: &Map<String, Json>,
    months_ahead: i32,
) -> Result<i32, DriverError> {
    let pool = connect(cx, props).await?;
    let created: i32 = sqlx::query_scalar("SELECT ralph.ensure_partitions($1)")
        .bind(months_ahead)
        .fetch_one(&pool)
        .await
        .map_err(|e| DriverError::new(format!("ralph.ensure_partitions failed: {e}")))?;
    pool.close().await;
    Ok(created)
}
