//! `aws.acm_certificate`: a public certificate from AWS Certificate Manager,
//! validated by DNS. It is what an Application Load Balancer serves on its
//! HTTPS listener (the AWS Load Balancer Controller reads it from the
//! Ingress's `alb.ingress.kubernetes.io/certificate-arn`); cert-manager's
//! certificates live in Kubernetes Secrets, which an ALB cannot use.
//!
//! ACM issues the certificate once the CNAME record it asks for exists in
//! the domain's DNS. Apply does not wait for that: it records the records to
//! create (`validation_records`, also an output of the shipped stack), and
//! the load balancer's listener follows once ACM reports `ISSUED`.

use aws_sdk_acm::types::{Tag, ValidationMethod};
use serde_json::{json, Value as Json};

use super::{api_error, observed_with, read_tag_pairs, removed_tag_keys, strings};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

fn domain(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let host = s.strip_prefix("*.").unwrap_or(s);
    let ok = !host.is_empty()
        && s.len() <= 253
        && host.contains('.')
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    checks::require(ok, || {
        format!(
            "`{s}` is not a domain name ACM can issue for (labels of letters, digits and hyphens, such as ralph.example.com or *.example.com)"
        )
    })
}

fn domains(v: &Json) -> Result<(), String> {
    let names = v.as_array().map(Vec::as_slice).unwrap_or_default();
    if names.len() > 99 {
        return Err(format!(
            "{} names; ACM allows the domain name and at most 99 more",
            names.len()
        ));
    }
    names.iter().try_for_each(domain)
}

fn method(v: &Json) -> Result<(), String> {
    match v.as_str() {
        Some("DNS" | "EMAIL") => Ok(()),
        other => Err(format!(
            "`{}` is not a validation method: DNS (a CNAME record, renewed without anyone) or EMAIL",
            other.unwrap_or_default()
        )),
    }
}

static SCHEMA: KindSchema = KindSchema::new("aws.acm_certificate", "acm", "A public TLS certificate from AWS Certificate Manager, validated by DNS (the certificate an ALB serves).")
    .fields(&[
        Field::fixed("domain_name", Ty::String, "the name the certificate is for")
            .check(domain),
        Field::new(
            "subject_alternative_names",
            Ty::Set(&Ty::String),
            "further names it covers",
        )
        .default("[]")
        .forces_replace()
        .check(domains),
        Field::new(
            "validation_method",
            Ty::String,
            "DNS (a CNAME record in the domain, which also renews it) or EMAIL",
        )
        .default("\"DNS\"")
        .forces_replace()
        .check(method),
        Field::tags(),
    ])
    .attrs(&[
        Attr::string("id", "the certificate ARN"),
        Attr::string("arn", "the certificate ARN (the Ingress's alb.ingress.kubernetes.io/certificate-arn)"),
        Attr::string("status", "PENDING_VALIDATION until the DNS records exist, then ISSUED"),
        Attr::new("validation_records", Ty::List(&Ty::StringMap), "the DNS records ACM asks for, one per name: domain, name, type and value"),
        Attr::new("in_use_by", Ty::List(&Ty::String), "the load balancers that serve it"),
    ]);

pub struct AcmCertificate;

async fn read_one(cx: &Context, arn: &str) -> Result<Option<Observed>, DriverError> {
    let acm = &crate::clients(cx).await?.acm;
    let answer = acm.describe_certificate().certificate_arn(arn).send().await;
    let found = super::found(
        "DescribeCertificate",
        answer,
        &["ResourceNotFoundException"],
    )?;
    let Some(cert) = found.and_then(|out| out.certificate) else {
        return Ok(None);
    };
    let tags = acm
        .list_tags_for_certificate()
        .certificate_arn(arn)
        .send()
        .await
        .map_err(|e| api_error("ListTagsForCertificate", e))?;
    let tags = read_tag_pairs(
        tags.tags()
            .iter()
            .map(|t| (t.key(), t.value().unwrap_or_default())),
    );
    let domain_name = cert.domain_name().unwrap_or_default().to_string();
    // ACM lists the domain name among the alternative names; the stack does not.
    let sans: Vec<Json> = cert
        .subject_alternative_names()
        .iter()
        .filter(|n| **n != domain_name)
        .map(|n| Json::String(n.clone()))
        .collect();
    let options = cert.domain_validation_options();
    let method = options
        .iter()
        .find_map(|o| o.validation_method())
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "DNS".to_string());
    let records: Vec<Json> = options
        .iter()
        .filter_map(|o| {
            let r = o.resource_record()?;
            Some(json!({
                "domain": o.domain_name(),
                "name": r.name(),
                "type": r.r#type().as_str(),
                "value": r.value(),
            }))
        })
        .collect();
    Ok(Some(observed_with(
        arn,
        tags,
        vec![
            ("arn", Json::String(arn.to_string())),
            ("domain_name", Json::String(domain_name)),
            ("subject_alternative_names", Json::Array(sans)),
            ("validation_method", Json::String(method)),
            (
                "status",
                Json::String(
                    cert.status()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                ),
            ),
            ("validation_records", Json::Array(records)),
            (
                "in_use_by",
                Json::Array(
                    cert.in_use_by()
                        .iter()
                        .map(|s| Json::String(s.clone()))
                        .collect(),
                ),
            ),
        ],
    )))
}

fn acm_tags(want: &Desired<'_>) -> Vec<Tag> {
    super::tag_map(want)
        .into_iter()
        .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
        .collect()
}

/// The same request, the same certificate: ACM answers a repeated
/// RequestCertificate with this token (within an hour) with the first ARN,
/// so a run killed between the request and the state's record makes no
/// second certificate. The token covers what is asked (the names, the
/// validation) and the certificate it replaces: another host, or a new
/// certificate where the last one was deleted, is another request, which a
/// token of the address alone would have answered with the old (perhaps
/// deleted) certificate. ACM allows 32 word characters.
fn idempotency_token(want: &Desired<'_>) -> String {
    let sans = strings(want.props.get("subject_alternative_names")).join(",");
    let domain = want.str("domain_name").unwrap_or_default();
    let validation = want.str("validation_method").unwrap_or("DNS");
    super::create_token(want, &[domain, &sans, validation])
}

#[async_trait::async_trait]
impl Driver for AcmCertificate {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    /// An interrupted request has no ARN to look for: the next request,
    /// with the same idempotency token, answers the first one's.
    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        super::read_each(&super::arns(known), |arn| async move {
            read_one(cx, &arn).await
        })
        .await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let sans = strings(want.props.get("subject_alternative_names"));
        let out = crate::clients(cx)
            .await?
            .acm
            .request_certificate()
            .domain_name(want.required_str("domain_name")?)
            .set_subject_alternative_names((!sans.is_empty()).then_some(sans))
            .validation_method(ValidationMethod::from(
                want.str("validation_method").unwrap_or("DNS"),
            ))
            .idempotency_token(idempotency_token(want))
            .set_tags(Some(acm_tags(want)))
            .send()
            .await
            .map_err(|e| api_error("RequestCertificate", e))?;
        let arn = out.certificate_arn().unwrap_or_default().to_string();
        // ACM fills in the validation records a few seconds after the
        // request; they are what the user needs from this apply.
        let email = want.str("validation_method") == Some("EMAIL");
        let result = cx
            .wait_until(
                want.address,
                "ACM to name the certificate's DNS validation records",
                std::time::Duration::from_secs(120),
                || async {
                    let Some(o) = read_one(cx, &arn).await? else {
                        return Err(DriverError::new(format!(
                            "certificate {arn} vanished right after it was requested"
                        )));
                    };
                    let ready = email
                        || o.attrs
                            .get("validation_records")
                            .and_then(Json::as_array)
                            .is_some_and(|r| !r.is_empty());
                    let status = o
                        .attrs
                        .get("status")
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_string();
                    Ok((ready.then_some(o), status))
                },
            )
            .await;
        match result {
            Err(e) => match read_one(cx, &arn).await {
                Ok(Some(partial)) => Err(e.with_partial(partial)),
                _ => Err(e),
            },
            ok => ok,
        }
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        if u.changes("tags") {
            let acm = &crate::clients(cx).await?.acm;
            let removed = removed_tag_keys(have, want);
            let keys = removed
                .iter()
                .filter_map(|k| Tag::builder().key(k).build().ok());
            let untag = acm.remove_tags_from_certificate().certificate_arn(&have.id);
            let untag = untag.set_tags(Some(keys.collect()));
            let tag = acm.add_tags_to_certificate().certificate_arn(&have.id);
            let tag = tag.set_tags(Some(acm_tags(want)));
            super::retag(
                &removed,
                ("RemoveTagsFromCertificate", untag.send()),
                ("AddTagsToCertificate", tag.send()),
            )
            .await?;
        }
        found_again(read_one(cx, &have.id).await?, "certificate", &have.id)
    }

    /// A certificate a load balancer still serves cannot be deleted: the
    /// controller removes its load balancer after the Ingress goes, so the
    /// delete is retried until then, within the delete timeout.
    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let acm = &crate::clients(cx).await?.acm;
        ralph_core::driver::delete_once_released(
            cx,
            d,
            "the load balancers that serve the certificate",
            || async {
                let answer = acm.delete_certificate().certificate_arn(&d.have.id).send();
                super::delete_attempt(
                    "DeleteCertificate",
                    answer.await,
                    &["ResourceNotFoundException"],
                    &["ResourceInUseException"],
                )
            },
        )
        .await
    }
}
