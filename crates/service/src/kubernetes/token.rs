//! Bearer tokens for a managed cluster's API server, made per request.
//!
//! An EKS token is a presigned STS request that EKS accepts for 15 minutes
//! after it was signed; a Google access token lives about an hour. A client
//! built with one token stops working in the middle of a long wait (a
//! rollout, a failover) once it expires. So a client reached through
//! `cluster_endpoint` carries no token of its own: a layer in front of it
//! puts a token on every request. EKS tokens are signed locally (no call to
//! AWS; the SDK's credentials provider caches and renews what it signs
//! with); Google's credentials hand out their cached token until shortly
//! before it expires, then fetch the next.

use http::header::{HeaderValue, AUTHORIZATION};
use kube::client::Body;
use tower::filter::AsyncFilterLayer;

use ralph_aws::eks_token::{self, AwsSigner};
use ralph_core::driver::DriverError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a cluster's tokens come from.
#[derive(Clone, Debug)]
pub enum Source {
    Eks { signer: AwsSigner, cluster: String },
    Gke(google_cloud_auth::credentials::AccessTokenCredentials),
}

impl Source {
    pub fn eks(aws: &ralph_aws::AwsClients, cluster: &str) -> Source {
        Source::Eks {
            signer: AwsSigner::of(aws),
            cluster: cluster.to_string(),
        }
    }

    /// Application Default Credentials, as GKE takes them (or set
    /// `kubeconfig`).
    pub fn gke() -> Result<Source, DriverError> {
        ralph_gcp::default_credentials().map(Source::Gke)
    }

    /// A token good for the next request.
    pub async fn token(&self) -> Result<String, DriverError> {
        match self {
            Source::Eks { signer, cluster } => eks_token::token(signer, cluster).await,
            Source::Gke(credentials) => {
                credentials
                    .access_token()
                    .await
                    .map(|t| t.token)
                    .map_err(|e| {
                        DriverError::new(format!(
                            "getting a Google access token for the GKE cluster: {e}"
                        ))
                    })
            }
        }
    }

    /// The layer that signs every request of a client with a fresh token.
    pub fn layer(
        self,
    ) -> AsyncFilterLayer<
        impl Fn(
                http::Request<Body>,
            )
                -> futures::future::BoxFuture<'static, Result<http::Request<Body>, BoxError>>
            + Clone,
    > {
        AsyncFilterLayer::new(move |mut request: http::Request<Body>| {
            let source = self.clone();
            let fut: futures::future::BoxFuture<'static, Result<http::Request<Body>, BoxError>> =
                Box::pin(async move {
                    let token = source.token().await?;
                    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))?;
                    value.set_sensitive(true);
                    request.headers_mut().insert(AUTHORIZATION, value);
                    Ok(request)
                });
            fut
        })
    }
}
