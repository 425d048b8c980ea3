//! The remote parties the tool talks to: the AWS and Google Cloud APIs,
//! Kubernetes API servers, PostgreSQL (state store and the stack's
//! databases), Redis and downloads. Every call to one of them is bounded by
//! one deadline (`RALPH_DEPLOY_API_TIMEOUT`), and a party that is slow to
//! answer is named within seconds, with the setting that changes the bound.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::events::{Event, Reporter};

/// The environment variable that bounds every call to a remote party,
/// retries included.
pub const API_TIMEOUT_ENV: &str = "RALPH_DEPLOY_API_TIMEOUT";
const DEFAULT_API_TIMEOUT_S: u64 = 120;

/// When the first "still waiting" line is said.
pub const FIRST_NOTICE: Duration = Duration::from_secs(5);

/// The bound on one call to a remote party, retries included:
/// RALPH_DEPLOY_API_TIMEOUT seconds (default 120). Long waits (a cluster
/// becoming ACTIVE) are many calls, each bounded by this, within the
/// resource's own timeout.
pub fn api_timeout() -> Duration {
    let secs = std::env::var(API_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().trim_end_matches('s').parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_API_TIMEOUT_S);
    Duration::from_secs(secs)
}

/// Who is at the other end, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    Aws,
    Gcp,
    Kubernetes,
    Postgres,
    Redis,
    Download,
}

impl Party {
    pub fn name(self) -> &'static str {
        match self {
            Party::Aws => "the AWS API",
            Party::Gcp => "the Google Cloud API",
            Party::Kubernetes => "the Kubernetes API server",
            Party::Postgres => "PostgreSQL",
            Party::Redis => "Redis",
            Party::Download => "the download server",
        }
    }

    /// Where the address of this party is set, for advice.
    pub fn set_by(self) -> &'static str {
        match self {
            Party::Aws => "AWS_ENDPOINT_URL or cloud.aws.endpoint",
            Party::Gcp => "RALPH_DEPLOY_GCP_ENDPOINT or cloud.gcp.endpoint",
            Party::Kubernetes => "the kubeconfig or `cluster_endpoint`",
            Party::Postgres => "the database URL",
            Party::Redis => "the Redis URL",
            Party::Download => "the URL",
        }
    }

    /// The party a resource kind talks to.
    pub fn of_kind(kind: &str) -> Party {
        match kind.split('.').next().unwrap_or_default() {
            "gcp" => Party::Gcp,
            "kubernetes" => Party::Kubernetes,
            "postgres" => Party::Postgres,
            _ => Party::Aws,
        }
    }
}

/// The Kubernetes API servers this process has connected to (for messages
/// that have only a client in hand).
static KUBE_SERVERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records a Kubernetes API server this process talks to.
pub fn note_kube_server(url: &str) {
    if let Ok(mut s) = KUBE_SERVERS.lock() {
        if !s.iter().any(|u| u == url) {
            s.push(url.to_string());
        }
    }
}

/// The Kubernetes API servers in use, as one phrase.
pub fn kube_servers() -> String {
    let s = KUBE_SERVERS.lock().map(|s| s.clone()).unwrap_or_default();
    if s.is_empty() {
        "the cluster the stack names".into()
    } else {
        s.join(", ")
    }
}

/// Where "still waiting" lines go: the command's reporter, once it has
/// one; standard error before that.
static NOTICES: Mutex<Option<Arc<dyn Reporter>>> = Mutex::new(None);

/// Sends later notices through `reporter` (the command's progress view or
/// JSON stream).
pub fn set_reporter(reporter: Arc<dyn Reporter>) {
    if let Ok(mut n) = NOTICES.lock() {
        *n = Some(reporter);
    }
}

fn notice(message: String) {
    let reporter = NOTICES.lock().ok().and_then(|n| n.clone());
    match reporter {
        Some(r) => r.report(Event::Warning { message }),
        None => eprintln!("warning: {message}"),
    }
}

/// The message for a party that did not answer within the bound.
pub fn no_answer(party: Party, endpoint: &str, what: &str) -> String {
    no_answer_within(api_timeout(), party, endpoint, what)
}

fn no_answer_within(bound: Duration, party: Party, endpoint: &str, what: &str) -> String {
    format!(
        "{what}: no answer from {} at {endpoint} within {}s. Check the address ({}), proxies and the network; {API_TIMEOUT_ENV}=SECONDS sets this bound",
        party.name(),
        bound.as_secs(),
        party.set_by(),
    )
}

/// Runs `work` within the bound; while it has not finished, says so after
/// five seconds and then at widening intervals, naming the party, where it
/// is and the setting. `Err` is the message for a call that never finished.
pub async fn bounded<T>(
    party: Party,
    endpoint: &str,
    what: &str,
    work: impl Future<Output = T>,
) -> Result<T, String> {
    bounded_within(api_timeout(), party, endpoint, what, work).await
}

async fn bounded_within<T>(
    bound: Duration,
    party: Party,
    endpoint: &str,
    what: &str,
    work: impl Future<Output = T>,
) -> Result<T, String> {
    let started = Instant::now();
    let deadline = started + bound;
    tokio::pin!(work);
    let mut next = FIRST_NOTICE;
    loop {
        let wake = (started + next).min(deadline);
        tokio::select! {
            done = &mut work => return Ok(done),
            _ = tokio::time::sleep_until(wake) => {
                if started.elapsed() >= bound {
                    return Err(no_answer_within(bound, party, endpoint, what));
                }
                notice(format!(
                    "{what}: no answer yet from {} at {endpoint} after {}s (gives up after {}s; {API_TIMEOUT_ENV}=SECONDS changes that)",
                    party.name(),
                    next.as_secs(),
                    bound.as_secs(),
                ));
                next = (next * 2).min(next + Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_their_party() {
        assert_eq!(Party::of_kind("gcp.sql_instance"), Party::Gcp);
        assert_eq!(Party::of_kind("kubernetes.orchestrator"), Party::Kubernetes);
        assert_eq!(Party::of_kind("postgres.migrations"), Party::Postgres);
        assert_eq!(Party::of_kind("aws.vpc"), Party::Aws);
    }

    #[tokio::test]
    async fn a_silent_party_is_named_with_the_setting() {
        let out = bounded_within(
            Duration::from_millis(300),
            Party::Postgres,
            "postgresql://db:5432/x",
            "reading the state",
            std::future::pending::<()>(),
        )
        .await;
        let message = out.unwrap_err();
        assert!(message.contains("postgresql://db:5432/x"), "{message}");
        assert!(message.contains(API_TIMEOUT_ENV), "{message}");
        assert!(message.contains("PostgreSQL"), "{message}");
    }
}

/// The AWS SDK's settings loader with the project's HTTPS client: rustls
/// with ring, as every other client here (the SDK's default client would
/// compile aws-lc, a C library, for the AWS SDK alone). Certificates are
/// the platform's, as with the default client.
pub fn aws_defaults() -> aws_config::ConfigLoader {
    use aws_smithy_http_client::tls;
    let client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(client)
}

/// Where AWS requests go, for messages (set once the AWS clients are built).
pub static AWS_ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The endpoint set by the stack (`cloud.aws.endpoint`) or by
/// `AWS_ENDPOINT_URL`, if any: what the SDK sends requests to instead of
/// the region's AWS endpoints.
pub fn aws_configured_endpoint(settings: &crate::model::AwsSettings) -> Option<String> {
    settings.endpoint.clone().or_else(|| {
        std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|e| !e.is_empty())
    })
}

/// Where AWS requests go: the endpoint URL, or the region's endpoints.
pub fn aws_endpoint_description() -> String {
    AWS_ENDPOINT
        .get()
        .cloned()
        .unwrap_or_else(|| "the AWS endpoint".into())
}

/// Where AWS requests go under `settings`, for messages.
pub fn aws_endpoint(settings: &crate::model::AwsSettings) -> String {
    aws_configured_endpoint(settings).unwrap_or_else(aws_endpoint_description)
}

/// Where Google Cloud requests go when the stack names no endpoint: the
/// variable overrides every service's endpoint, as AWS_ENDPOINT_URL does
/// for AWS (a private service connect endpoint, a proxy, an emulator).
pub const GCP_ENDPOINT_ENV: &str = "RALPH_DEPLOY_GCP_ENDPOINT";

/// The Google Cloud endpoint the stack or the environment names, if any.
pub fn gcp_endpoint(settings: &crate::model::GcpSettings) -> Option<String> {
    settings
        .endpoint
        .clone()
        .or_else(|| std::env::var(GCP_ENDPOINT_ENV).ok())
        .filter(|e| !e.is_empty())
}
