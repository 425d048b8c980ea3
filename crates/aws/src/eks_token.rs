//! A bearer token for an EKS cluster, made the way `aws eks get-token` makes
//! it: a presigned STS GetCallerIdentity URL (valid 60 s) that also signs
//! the header `x-k8s-aws-id: CLUSTER`, base64url-encoded without padding
//! behind `k8s-aws-v1.`. The cluster's authenticator replays the request to
//! STS to learn who is calling; no call to AWS is made here.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use base64::Engine;

use ralph_core::driver::DriverError;

/// A fresh token for `cluster`. Cheap (no request to AWS; the SDK's provider
/// caches and renews the credentials), so callers make one per request.
pub async fn token(aws: &AwsSigner, cluster: &str) -> Result<String, DriverError> {
    let provider = aws.sdk.credentials_provider().ok_or_else(|| {
        DriverError::new(
            "no AWS credentials to make an EKS token with: set a profile or AWS_ACCESS_KEY_ID",
        )
    })?;
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|e| DriverError::new(format!("AWS credentials for the EKS token: {e}")))?;
    presigned_token(&credentials, &aws.region, cluster, SystemTime::now())
}

/// What signing a token needs of the AWS clients: credentials and region.
#[derive(Clone, Debug)]
pub struct AwsSigner {
    pub sdk: aws_config::SdkConfig,
    pub region: String,
}

impl AwsSigner {
    pub fn of(aws: &super::AwsClients) -> AwsSigner {
        AwsSigner {
            sdk: aws.sdk.clone(),
            region: aws.region.clone(),
        }
    }
}

pub fn presigned_token(
    credentials: &Credentials,
    region: &str,
    cluster: &str,
    now: SystemTime,
) -> Result<String, DriverError> {
    let url =
        format!("https://sts.{region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15");
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(60));
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| DriverError::new(format!("signing the EKS token: {e}")))?;
    let signable = SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::once(("x-k8s-aws-id", cluster)),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| DriverError::new(format!("signing the EKS token: {e}")))?;
    let (instructions, _signature) = sign(signable, &params.into())
        .map_err(|e| DriverError::new(format!("signing the EKS token: {e}")))?
        .into_parts();
    let mut request = http::Request::builder()
        .method("GET")
        .uri(&url)
        .header("x-k8s-aws-id", cluster)
        .body(())
        .map_err(|e| DriverError::new(format!("signing the EKS token: {e}")))?;
    instructions.apply_to_request_http1x(&mut request);
    let presigned = request.uri().to_string();
    Ok(format!(
        "k8s-aws-v1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(presigned)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_a_presigned_get_caller_identity() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let t = presigned_token(
            &creds,
            "eu-west-1",
            "ralph-production",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .expect("token");
        let body = t.strip_prefix("k8s-aws-v1.").expect("prefix");
        assert!(!body.contains('='), "no padding");
        let url = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .expect("base64url"),
        )
        .expect("utf8");
        assert!(
            url.starts_with("https://sts.eu-west-1.amazonaws.com/?"),
            "{url}"
        );
        for part in [
            "Action=GetCallerIdentity",
            "Version=2011-06-15",
            "X-Amz-Expires=60",
            "X-Amz-SignedHeaders=host%3Bx-k8s-aws-id",
            "X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Feu-west-1%2Fsts%2Faws4_request",
            "X-Amz-Signature=",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        assert!(!url.contains("secret"), "the secret key never appears");
    }
}
