//! AWS drivers, through the official aws-sdk-rust crates.
//!
//! Configuration comes the way every AWS tool takes it (AWS_REGION,
//! AWS_PROFILE, AWS_ENDPOINT_URL, the standard credential chain); the stack's
//! `cloud.aws` settings override region, profile and endpoint.

mod acm_certificate;
mod arn_tags;
mod ec2_listing;
mod eip;
mod eks;
mod eks_access;
mod eks_addon;
pub mod eks_token;
mod elasticache;
mod elasticache_auth;
mod iam_oidc;
mod iam_role;
mod internet_gateway;
mod log_group;
mod nat_gateway;
pub mod rds;
mod route_table;
mod route_table_association;
mod s3_bucket;
mod s3_objects;
pub mod secret;
mod security_group;
mod subnet;
mod subnet_group;
mod vpc;
mod wafv2_web_acl;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use serde_json::{Map, Value as Json};

use ralph_core::driver::{
    Context, Desired, Driver, DriverError, Owner, TAG_ADDRESS, TAG_ENVIRONMENT, TAG_STACK,
};
use ralph_core::model::{json_to_text, AwsSettings};

use ec2_listing::Ec2;

pub fn drivers() -> Vec<Box<dyn Driver>> {
    vec![
        Box::new(Ec2(vpc::Vpc)),
        Box::new(Ec2(subnet::Subnet)),
        Box::new(Ec2(internet_gateway::InternetGateway)),
        Box::new(Ec2(eip::ElasticIp)),
        Box::new(Ec2(nat_gateway::NatGateway)),
        Box::new(Ec2(route_table::RouteTable)),
        Box::new(route_table_association::RouteTableAssociation),
        Box::new(Ec2(security_group::SecurityGroup)),
        Box::new(iam_role::IamRole),
        Box::new(iam_oidc::OidcProvider),
        Box::new(secret::Secret),
        Box::new(s3_bucket::S3Bucket),
        Box::new(log_group::LogGroup),
        Box::new(acm_certificate::AcmCertificate),
        Box::new(wafv2_web_acl::WebAcl),
        Box::new(eks::EksCluster),
        Box::new(eks::EksNodegroup),
        Box::new(eks_access::EksAccessEntry),
        Box::new(eks_addon::EksAddon),
        Box::new(subnet_group::SubnetGroup(&rds::DbSubnets)),
        Box::new(rds::ParameterGroup),
        Box::new(rds::Instance),
        Box::new(subnet_group::SubnetGroup(&elasticache::CacheSubnets)),
        Box::new(elasticache::ReplicationGroup),
        Box::new(elasticache_auth::Rotation),
    ]
}

/// SDK clients, built once per run from the shared configuration.
pub struct AwsClients {
    /// Certificates for the load balancers.
    pub acm: aws_sdk_acm::Client,
    /// Web ACLs for the load balancers.
    pub wafv2: aws_sdk_wafv2::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub eks: aws_sdk_eks::Client,
    pub rds: aws_sdk_rds::Client,
    /// Metrics (a replica's lag before a failover).
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub elasticache: aws_sdk_elasticache::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub s3: aws_sdk_s3::Client,
    /// Log groups (the control plane's and the application's logs).
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub iam: aws_sdk_iam::Client,
    pub region: String,
    /// Credentials and region, for requests signed by hand (EKS tokens).
    pub sdk: aws_config::SdkConfig,
}

impl AwsClients {
    pub async fn connect(
        settings: AwsSettings,
        requests: Arc<AtomicU64>,
        operations: Arc<AtomicU64>,
        limits: Arc<ralph_core::driver::limits::ServiceLimits>,
    ) -> Result<AwsClients, DriverError> {
        // Throttling, 5xx, timeouts and resets are retried with exponential
        // backoff and jitter (standard mode); concurrency per service adapts
        // in the engine (see drivers::limits). AWS_RETRY_MODE=adaptive adds
        // the SDK's own client-side rate limiter, which slows each service's client
        // down while that service throttles, and speeds it up again after.
        let attempts = std::env::var("AWS_MAX_ATTEMPTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let retry = match std::env::var("AWS_RETRY_MODE").as_deref() {
            Ok("adaptive") => aws_config::retry::RetryConfig::adaptive(),
            _ => aws_config::retry::RetryConfig::standard(),
        };
        let retry = retry
            .with_max_attempts(attempts)
            .with_initial_backoff(std::time::Duration::from_millis(100))
            .with_max_backoff(std::time::Duration::from_secs(20));
        // A dead or hanging endpoint must fail within a bound the user can
        // set, not after every retry of a long attempt timeout.
        let total = api_timeout();
        let attempt = attempt_timeout(total);
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(5).min(total))
            .read_timeout(attempt)
            .operation_attempt_timeout(attempt)
            .operation_timeout(total)
            .build();
        let mut loader = ralph_core::remote::aws_defaults()
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(p) = &settings.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &settings.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(e) = &settings.endpoint {
            loader = loader.endpoint_url(e);
        }
        let config = loader.load().await;
        check_credentials(&config, settings.profile.as_deref()).await?;
        let custom_endpoint = ralph_core::remote::aws_configured_endpoint(&settings);
        let _ =
            ralph_core::remote::AWS_ENDPOINT.set(custom_endpoint.clone().unwrap_or_else(|| {
                format!(
                    "the AWS endpoints of region {}",
                    config.region().map(|r| r.to_string()).unwrap_or_default()
                )
            }));
        let region = config.region().map(|r| r.to_string()).ok_or_else(|| {
            DriverError::new("no AWS region is set: put `region` under `cloud.aws` in the stack, set AWS_REGION, or choose a profile that has one")
        })?;
        let counter = RequestCounter(requests, operations, limits, "");
        // A custom endpoint (an S3-compatible store, the local cloud) is
        // addressed by path, as such endpoints expect.
        let custom_endpoint = custom_endpoint.is_some();
        macro_rules! client {
            ($krate:ident, $service:expr) => {
                $krate::Client::from_conf(
                    $krate::config::Builder::from(&config)
                        .interceptor(RequestCounter(
                            counter.0.clone(),
                            counter.1.clone(),
                            counter.2.clone(),
                            $service,
                        ))
                        .build(),
                )
            };
        }
        Ok(AwsClients {
            acm: client!(aws_sdk_acm, "acm"),
            wafv2: client!(aws_sdk_wafv2, "wafv2"),
            ec2: client!(aws_sdk_ec2, "ec2"),
            eks: client!(aws_sdk_eks, "eks"),
            rds: client!(aws_sdk_rds, "rds"),
            cloudwatch: client!(aws_sdk_cloudwatch, "cloudwatch"),
            logs: client!(aws_sdk_cloudwatchlogs, "logs"),
            elasticache: client!(aws_sdk_elasticache, "elasticache"),
            secrets: client!(aws_sdk_secretsmanager, "secretsmanager"),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&config)
                    .interceptor(RequestCounter(
                        counter.0.clone(),
                        counter.1.clone(),
                        counter.2.clone(),
                        "s3",
                    ))
                    .force_path_style(custom_endpoint)
                    .build(),
            ),
            iam: client!(aws_sdk_iam, "iam"),
            region,
            sdk: config.clone(),
        })
    }
}

/// Resolves the credentials once, before any request, so that a missing
/// or misnamed profile is one clear sentence instead of every request's
/// dispatch failure (the SDK's chain otherwise ends at the instance
/// metadata service). The resolved credentials are cached by the SDK, so
/// this costs nothing more than the first request would.
async fn check_credentials(
    config: &aws_config::SdkConfig,
    profile: Option<&str>,
) -> Result<(), DriverError> {
    use aws_credential_types::provider::ProvideCredentials;
    let Some(provider) = config.credentials_provider() else {
        return Err(DriverError::new(
            "no AWS credentials provider is configured",
        ));
    };
    let Err(e) = provider.provide_credentials().await else {
        return Ok(());
    };
    let profile = profile
        .map(|p| (p.to_string(), "cloud.aws.profile in the stack"))
        .or_else(|| {
            std::env::var("AWS_PROFILE")
                .ok()
                .filter(|p| !p.is_empty())
                .map(|p| (p, "AWS_PROFILE"))
        });
    let home = std::env::var("HOME").unwrap_or_default();
    let config_file =
        std::env::var("AWS_CONFIG_FILE").unwrap_or_else(|_| format!("{home}/.aws/config"));
    let creds_file = std::env::var("AWS_SHARED_CREDENTIALS_FILE")
        .unwrap_or_else(|_| format!("{home}/.aws/credentials"));
    let mut msg = String::from("no AWS credentials were found");
    if let Some((name, from)) = &profile {
        let declared = [&config_file, &creds_file].iter().any(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| {
                t.lines().any(|l| {
                    let l = l.trim();
                    l == format!("[{name}]") || l == format!("[profile {name}]")
                })
            })
        });
        if declared {
            msg.push_str(&format!(": the profile `{name}` (from {from}) gave none"));
        } else {
            let missing = [&config_file, &creds_file]
                .iter()
                .all(|f| !std::path::Path::new(f).exists());
            msg.push_str(&format!(
                ": the profile `{name}` (from {from}) is not in {config_file} or {creds_file}{}; fix the name, or run `aws configure --profile {name}`",
                if missing { " (neither file exists)" } else { "" }
            ));
        }
    }
    let first = e.to_string();
    let first = first.split(". (").next().unwrap_or(&first);
    msg.push_str(&format!(
        ". Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile with credentials (AWS_PROFILE or cloud.aws.profile), or run where a role provides them. Nothing was changed. (The SDK said: {first})"
    ));
    Err(DriverError::new(msg))
}

/// Counts operations and the HTTP requests the SDK sends for them (the
/// difference is the number of retries), and tells the service's limiter
/// when an answer is a throttle.
struct RequestCounter(
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Arc<ralph_core::driver::limits::ServiceLimits>,
    &'static str,
);

impl std::fmt::Debug for RequestCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestCounter({})", self.3)
    }
}

/// Throttling, in any of the protocols' shapes: 429, an error type header,
/// or the error code in an XML body (EC2 RequestLimitExceeded, query
/// Throttling, S3 SlowDown).
fn is_throttle(resp: &aws_smithy_runtime_api::http::Response) -> bool {
    let status = resp.status().as_u16();
    if status == 429 {
        return true;
    }
    if status != 400 && status != 503 {
        return false;
    }
    let marks: [&[u8]; 5] = [
        b"Throttling",
        b"RequestLimitExceeded",
        b"SlowDown",
        b"TooManyRequests",
        b"RequestThrottled",
    ];
    if let Some(t) = resp.headers().get("x-amzn-ErrorType") {
        if marks
            .iter()
            .any(|m| t.as_bytes().windows(m.len()).any(|w| w == *m))
        {
            return true;
        }
    }
    resp.body()
        .bytes()
        .is_some_and(|b| marks.iter().any(|m| b.windows(m.len()).any(|w| w == *m)))
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "ralph-deploy-request-counter"
    }
    fn read_before_execution(
        &self,
        _: &aws_sdk_ec2::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_ec2::error::BoxError> {
        self.1.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn read_after_attempt(
        &self,
        context: &aws_sdk_ec2::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_ec2::error::BoxError> {
        if context.response().is_some_and(is_throttle) {
            self.2.service(self.3).throttled();
        }
        Ok(())
    }
    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_ec2::error::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A resource's ARN as refresh recorded it (empty when it has none).
pub fn arn_of(have: &Observed) -> String {
    have.attrs
        .get("arn")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string()
}

/// This run's AWS clients, built on the first call.
pub async fn clients(cx: &Context) -> Result<&AwsClients, DriverError> {
    cx.clients(ralph_core::driver::Clients::Aws, || {
        AwsClients::connect(
            cx.cloud.aws.clone().unwrap_or_default(),
            cx.requests.clone(),
            cx.operations.clone(),
            cx.limits.clone(),
        )
    })
    .await
}

pub async fn ec2(cx: &Context) -> Result<&aws_sdk_ec2::Client, DriverError> {
    Ok(&crate::clients(cx).await?.ec2)
}

/// The bound on one AWS operation, retries included (ralph_core::remote).
pub use ralph_core::remote::{api_timeout, API_TIMEOUT_ENV};

/// How long one attempt of a call may take: 30 s, or a quarter of the bound
/// on the whole call when that is more, so a user who raises the bound for
/// a slow party gives each attempt the time too (never more than the bound).
fn attempt_timeout(total: std::time::Duration) -> std::time::Duration {
    (total / 4)
        .max(std::time::Duration::from_secs(30))
        .min(total)
}

/// What an error chain says was wrong with a certificate (rustls:
/// "invalid peer certificate: UnknownIssuer").
fn certificate_reason(chain: &str) -> String {
    const PEER: &str = "invalid peer certificate: ";
    match chain.find(PEER) {
        Some(at) => {
            let rest = &chain[at + PEER.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            format!("{PEER}{}", &rest[..end])
        }
        None => "a certificate problem".to_string(),
    }
}

/// An SDK failure as one line: the service's code and message, or what was
/// reached (or not) and what was expected.
pub fn api_error<E>(
    op: &str,
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> DriverError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let endpoint = ralph_core::remote::aws_endpoint_description();
    let text = match (err.code(), err.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ if matches!(err, SdkError::TimeoutError(_)) => format!(
            "no answer from {endpoint} within {}s per attempt, {}s in all (retries included). Check the endpoint (AWS_ENDPOINT_URL, cloud.aws.endpoint), proxies and the network; {API_TIMEOUT_ENV}=SECONDS sets the bound in all (an attempt gets a quarter of it, at least 30s)",
            attempt_timeout(api_timeout()).as_secs(),
            api_timeout().as_secs()
        ),
        _ if matches!(err, SdkError::DispatchFailure(_)) => {
            let chain = DisplayErrorContext(&err).to_string();
            let why = match &err {
                // A certificate the platform's roots do not vouch for (a
                // proxy that intercepts TLS, a private endpoint's own CA)
                // is an I/O error to the SDK: say which it is.
                SdkError::DispatchFailure(_) if chain.contains("certificate") => format!(
                    "the TLS handshake refused its certificate ({}); a proxy that intercepts TLS or an endpoint with a CA of its own needs that CA in the system's trust store or in SSL_CERT_FILE",
                    certificate_reason(&chain)
                ),
                SdkError::DispatchFailure(d) if d.is_timeout() => {
                    "the connection timed out".to_string()
                }
                SdkError::DispatchFailure(d) if d.is_io() => {
                    "the connection failed (refused, reset or unreachable)".to_string()
                }
                _ => first_line(&DisplayErrorContext(&err).to_string()),
            };
            format!("could not reach {endpoint}: {why}. Check the endpoint (AWS_ENDPOINT_URL, cloud.aws.endpoint), proxies, the network and the credentials")
        }
        _ if err.raw_response().is_some() => {
            let status = err.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            let body = err
                .raw_response()
                .and_then(|r| r.body().bytes())
                .map(|b| first_line(&String::from_utf8_lossy(b)))
                .unwrap_or_default();
            format!(
                "{endpoint} answered HTTP {status} without an AWS error code{}; it does not look like the AWS API this call expects. Check the endpoint (AWS_ENDPOINT_URL, cloud.aws.endpoint)",
                if body.is_empty() { String::new() } else { format!(" ({body})") }
            )
        }
        _ => {
            // Without a service code the SDK's text can carry a whole raw
            // response: keep the first line's worth.
            let full = DisplayErrorContext(&err).to_string();
            let mut short: String = full.chars().take(300).collect();
            if full.chars().count() > 300 {
                short.push_str("...");
            }
            short
        }
    };
    DriverError::new(format!("{op}: {text}"))
}

/// At most 200 characters of the first non-empty line.
fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut short: String = line.chars().take(200).collect();
    if line.chars().count() > 200 {
        short.push_str("...");
    }
    short
}

/// The id a create call's answer gave the new resource: an answer without
/// one is an error naming the call.
pub fn made_id(op: &str, id: Option<&str>) -> Result<String, DriverError> {
    id.map(str::to_string)
        .ok_or_else(|| DriverError::new(format!("{op} returned no id")))
}

/// A create's answer: what it made, or `None` where the service says it is
/// there already (`exists`, its code), for the caller to claim with
/// [`ours_or_refuse`]: a run killed after the create made it.
pub fn made<T, E>(
    op: &str,
    answer: Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
    exists: &str,
) -> Result<Option<T>, DriverError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    found(op, answer, &[exists])
}

/// A read's answer: what it found, or `None` where the service says there is
/// no such thing (`missing` lists its "not found" codes).
pub fn found<T, E>(
    op: &str,
    answer: Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
    missing: &[&str],
) -> Result<Option<T>, DriverError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match answer {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.code().is_some_and(|c| missing.contains(&c)) => Ok(None),
        Err(e) => Err(api_error(op, e)),
    }
}

/// The answer to a delete call that a resource still in use refuses
/// (`in_use` lists those codes): gone (deleted now, or already: `gone`
/// lists the "not found" codes), or still in use.
pub fn delete_attempt<T, E>(
    op: &str,
    answer: Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
    gone: &[&str],
    in_use: &[&str],
) -> Result<ralph_core::driver::DeleteAttempt, DriverError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use ralph_core::driver::DeleteAttempt;
    match answer {
        Err(e) if e.code().is_some_and(|c| in_use.contains(&c)) => Ok(DeleteAttempt::InUse),
        other => found(op, other, gone).map(|_| DeleteAttempt::Gone),
    }
}

/// The answer to a delete call: done, or already gone (`gone` lists the
/// service's "not found" codes), which is the outcome wanted too.
pub fn delete_answer<T, E>(
    op: &str,
    answer: Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
    gone: &[&str],
) -> Result<(), DriverError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    found(op, answer, gone).map(drop)
}

pub fn error_code<E, R>(err: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    err.code()
}

/// Filters that select what this stack and environment own.
pub fn owner_filters(owner: &Owner) -> Vec<Filter> {
    vec![
        Filter::builder()
            .name(format!("tag:{TAG_STACK}"))
            .values(&owner.stack)
            .build(),
        Filter::builder()
            .name(format!("tag:{TAG_ENVIRONMENT}"))
            .values(&owner.environment)
            .build(),
    ]
}

/// A filter on one resource id (an id that does not exist gives an empty
/// answer, where the `...Ids` parameters give an error).
pub fn id_filter(name: &str, id: &str) -> Filter {
    Filter::builder().name(name).values(id).build()
}

/// The user's tags plus the ownership tags.
/// The user's tags plus the ownership tags, for any service.
pub fn tag_map(want: &Desired<'_>) -> BTreeMap<String, String> {
    let mut tags: BTreeMap<String, String> = user_tags(want.props);
    tags.insert(TAG_STACK.into(), want.owner.stack.clone());
    tags.insert(TAG_ENVIRONMENT.into(), want.owner.environment.clone());
    tags.insert(
        TAG_ADDRESS.into(),
        ralph_core::model::address::to_tag(want.address),
    );
    tags
}

/// Tag keys the resource has and the stack no longer wants.
pub fn removed_tag_keys(have: &Observed, want: &Desired<'_>) -> Vec<String> {
    let wanted = user_tags(want.props);
    have.attrs
        .get("tags")
        .and_then(Json::as_object)
        .map(|m| {
            m.keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

pub fn all_tags(want: &Desired<'_>) -> Vec<Tag> {
    tag_map(want)
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

pub fn tag_spec(rt: ResourceType, want: &Desired<'_>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(rt)
        .set_tags(Some(all_tags(want)))
        .build()
}

pub fn user_tags(props: &Map<String, Json>) -> BTreeMap<String, String> {
    user_tags_of(props.get("tags"))
}

/// A string map property (labels, tags) as owned pairs.
pub fn user_tags_of<M: FromIterator<(String, String)>>(v: Option<&Json>) -> M {
    v.and_then(Json::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), json_to_text(v)))
        .collect()
}

/// Splits a resource's tags into the address it belongs to and the user's tags.
pub fn read_tags(tags: &[Tag]) -> (Option<String>, Option<Owner>, Json) {
    read_tag_pairs(tags.iter().filter_map(|t| Some((t.key()?, t.value()?))))
}

/// The same, from any service's (key, value) pairs.
pub fn read_tag_pairs<'a>(
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (Option<String>, Option<Owner>, Json) {
    let mut address = None;
    let (mut stack, mut environment) = (None, None);
    let mut user = Map::new();
    for (k, v) in tags {
        if k == TAG_ADDRESS {
            address = Some(ralph_core::model::address::from_tag(v));
        } else if k == TAG_STACK {
            stack = Some(v.to_string());
        } else if k == TAG_ENVIRONMENT {
            environment = Some(v.to_string());
        } else if !k.starts_with(ralph_core::driver::OWNER_TAG_PREFIX) {
            user.insert(k.to_string(), Json::String(v.to_string()));
        }
    }
    let owner = match (stack, environment) {
        (Some(stack), Some(environment)) => Some(Owner { stack, environment }),
        _ => None,
    };
    (address, owner, Json::Object(user))
}

/// Brings a resource's tags to what the stack wants through its service's
/// two calls, each given as (operation, the call's answer): `untag` drops
/// the `removed` keys (not sent when there are none), then `tag` adds or
/// overwrites the rest, the ownership tags included.
pub async fn retag<A, EA, B, EB>(
    removed: &[String],
    untag: (&str, impl std::future::Future<Output = SdkAnswer<A, EA>>),
    tag: (&str, impl std::future::Future<Output = SdkAnswer<B, EB>>),
) -> Result<(), DriverError>
where
    EA: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    EB: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if !removed.is_empty() {
        untag.1.await.map_err(|e| api_error(untag.0, e))?;
    }
    tag.1.await.map_err(|e| api_error(tag.0, e))?;
    Ok(())
}

/// What an SDK call answers.
pub type SdkAnswer<T, E> = Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>;

/// Brings a resource's user tags from what it has to what the stack wants.
pub async fn sync_tags(
    cx: &Context,
    id: &str,
    have: &Observed,
    want: &Desired<'_>,
) -> Result<(), DriverError> {
    let client = ec2(cx).await?;
    let wanted = user_tags(want.props);
    let current = user_tags(&have.attrs);
    let removed: Vec<Tag> = current
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .map(|k| Tag::builder().key(k).build())
        .collect();
    if !removed.is_empty() {
        client
            .delete_tags()
            .resources(id)
            .set_tags(Some(removed))
            .send()
            .await
            .map_err(|e| api_error("DeleteTags", e))?;
    }
    client
        .create_tags()
        .resources(id)
        .set_tags(Some(all_tags(want)))
        .send()
        .await
        .map_err(|e| api_error("CreateTags", e))?;
    Ok(())
}

use ralph_core::driver::Observed;

/// Builds an `Observed` from an id, tags and reported properties.
pub fn observed(id: &str, tags: &[Tag], attrs: Vec<(&str, Json)>) -> Observed {
    observed_with(id, read_tags(tags), attrs)
}

/// Builds an `Observed` from already-read tags.
pub fn observed_with(
    id: &str,
    tags: (Option<String>, Option<Owner>, Json),
    attrs: Vec<(&str, Json)>,
) -> Observed {
    let (address, owner, user) = tags;
    let mut map = Map::new();
    map.insert("id".into(), Json::String(id.to_string()));
    map.insert("tags".into(), user);
    for (k, v) in attrs {
        map.insert(k.to_string(), v);
    }
    Observed {
        address,
        owner,
        id: id.to_string(),
        attrs: map,
    }
}

pub fn opt_str(v: Option<&str>) -> Json {
    v.map(|s| Json::String(s.to_string())).unwrap_or(Json::Null)
}

/// The ownership and user tags as IAM takes them.
pub fn iam_tags(want: &Desired<'_>) -> Vec<aws_sdk_iam::types::Tag> {
    tag_map(want)
        .into_iter()
        .filter_map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .ok()
        })
        .collect()
}

/// After a create answered that the resource exists: fine when its tags
/// say this stack made it (a run killed after the create), else the error
/// that says how to take it over. `what` names it for that error.
pub fn ours_or_refuse(
    found: Option<&Observed>,
    want: &Desired<'_>,
    what: &str,
    id: &str,
) -> Result<(), DriverError> {
    if found.and_then(|o| o.owner.as_ref()) == Some(want.owner) {
        return Ok(());
    }
    Err(DriverError::new(format!(
        "{what}, which this stack did not make; import it (`import: [{{to: {}, id: {id}}}]`) or remove it",
        want.address
    )))
}

/// An idempotency token for one create: 32 hex characters of a hash of the
/// resource's identity (stack, environment, address, what the create
/// replaces) and `request`, what is asked. The same for a create repeated
/// after a killed run; another for another request or a re-creation.
pub fn create_token(want: &Desired<'_>, request: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let identity = [
        want.owner.stack.as_str(),
        want.owner.environment.as_str(),
        want.address,
        want.replaces.unwrap_or_default(),
    ];
    for part in identity.iter().chain(request) {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn strings(v: Option<&Json>) -> Vec<String> {
    v.and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// How a slow resource reports progress: what it is called, the status
/// that means ready and those that mean it never will be.
pub struct Readiness {
    /// "the EKS cluster", "the database", ...
    pub what: &'static str,
    /// The status that means ready.
    pub ready: &'static str,
    /// Statuses that mean it will never be ready.
    pub failed: &'static [&'static str],
}

/// One wait for a resource: its address and id, for how long, and whether
/// it was just created.
#[derive(Clone, Copy)]
pub struct Waiting<'a> {
    pub address: &'a str,
    pub id: &'a str,
    pub timeout: std::time::Duration,
    /// A timed-out or interrupted wait after a create still returns the
    /// resource as `partial`, so that it is recorded and the next apply
    /// waits for it instead of creating another.
    pub created: bool,
}

impl<'a> Waiting<'a> {
    /// A wait for a resource this call created.
    pub fn created(address: &'a str, id: &'a str, timeout: std::time::Duration) -> Self {
        Waiting {
            address,
            id,
            timeout,
            created: true,
        }
    }

    /// A wait for a resource that was there before (an update, a resume).
    pub fn existing(address: &'a str, id: &'a str, timeout: std::time::Duration) -> Self {
        Waiting {
            address,
            id,
            timeout,
            created: false,
        }
    }
}

impl Readiness {
    /// Polls `read` until the resource's `status` is `ready`; fails on a
    /// `failed` status or if it disappears.
    pub async fn wait<F, Fut>(
        &self,
        cx: &Context,
        w: Waiting<'_>,
        read: F,
    ) -> Result<Observed, DriverError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Observed>, DriverError>>,
    {
        let (what, id) = (self.what, w.id);
        let result = cx
            .wait_until(
                w.address,
                &format!("{what} to become {}", self.ready),
                w.timeout,
                || async {
                    let Some(o) = read().await? else {
                        return Err(DriverError::new(format!(
                            "{what} {id} disappeared while waiting for it"
                        )));
                    };
                    let status = o
                        .attrs
                        .get(ralph_core::driver::STATUS_ATTR)
                        .and_then(Json::as_str)
                        .unwrap_or("unknown");
                    let status = status.to_string();
                    if self.failed.contains(&status.as_str()) {
                        return Err(DriverError::new(format!(
                            "{what} {id} is `{status}`; see its events in the console"
                        )));
                    }
                    Ok(((status == self.ready).then_some(o), status))
                },
            )
            .await;
        match result {
            Err(e) if w.created => match read().await {
                Ok(Some(partial)) => Err(e.with_partial(partial)),
                _ => Err(e),
            },
            other => other,
        }
    }
}

/// Reads each known id with `read`, concurrently; keeps those that exist.
pub async fn read_each<F, Fut>(
    known: &[ralph_core::driver::Known],
    read: F,
) -> Result<Vec<Observed>, DriverError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Observed>, DriverError>>,
{
    let found = futures::future::try_join_all(known.iter().map(|k| read(k.id.clone()))).await?;
    Ok(found.into_iter().flatten().collect())
}

/// The known ids that are ARNs, for a kind whose id is one: another (an
/// interrupted create that never got its ARN) names nothing to read.
pub fn arns(known: &[ralph_core::driver::Known]) -> Vec<ralph_core::driver::Known> {
    known
        .iter()
        .filter(|k| k.id.starts_with("arn:"))
        .cloned()
        .collect()
}

/// Polls `read` until the resource is gone, reporting its status meanwhile.
/// After a delete call failed: whether the resource is gone or already
/// being deleted (a run killed mid-delete, a retried request whose first
/// attempt took effect, a delete made by hand), which counts as done.
pub async fn gone_or_deleting<Fut>(read: Fut) -> Result<bool, DriverError>
where
    Fut: std::future::Future<Output = Result<Option<Observed>, DriverError>>,
{
    Ok(match read.await? {
        None => true,
        Some(o) => o
            .attrs
            .get(ralph_core::driver::STATUS_ATTR)
            .and_then(Json::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("deleting")),
    })
}

/// A delete call's answer, for a resource that takes a while to go: true
/// when it does not exist (nothing to wait for), false when it is going.
/// Another error stands unless `read` shows the resource gone or being
/// deleted (a delete retried after its first attempt took effect).
pub async fn delete_started<T, E, Fut>(
    op: &str,
    answer: Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
    not_found: &[&str],
    read: Fut,
) -> Result<bool, DriverError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Option<Observed>, DriverError>>,
{
    match answer {
        Ok(_) => Ok(false),
        Err(e) if e.code().is_some_and(|c| not_found.contains(&c)) => Ok(true),
        Err(_) if gone_or_deleting(read).await? => Ok(false),
        Err(e) => Err(api_error(op, e)),
    }
}

pub async fn wait_gone<F, Fut>(
    cx: &Context,
    have: &Observed,
    what: &str,
    timeout: std::time::Duration,
    read: F,
) -> Result<(), DriverError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Observed>, DriverError>>,
{
    let address = have.address.clone().unwrap_or_else(|| have.id.clone());
    cx.wait_until(
        &address,
        &format!("{what} to be deleted"),
        timeout,
        || async {
            match read().await? {
                Some(o) => Ok((
                    None,
                    o.attrs
                        .get(ralph_core::driver::STATUS_ATTR)
                        .and_then(Json::as_str)
                        .unwrap_or("deleting")
                        .to_string(),
                )),
                None => Ok((Some(()), "deleted".into())),
            }
        },
    )
    .await
}

#[cfg(test)]
mod timeout_tests {
    use super::attempt_timeout;
    use std::time::Duration;

    #[test]
    fn an_attempt_gets_a_quarter_of_the_bound_at_least_30s_never_more_than_the_bound() {
        let s = Duration::from_secs;
        assert_eq!(attempt_timeout(s(120)), s(30));
        assert_eq!(attempt_timeout(s(12)), s(12));
        assert_eq!(attempt_timeout(s(1800)), s(450));
    }
}
