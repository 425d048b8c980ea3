//! The REST calls of Google APIs that google-cloud-rust has no client for
//! (Service Networking, Service Usage, Cloud Logging): the same endpoint setting,
//! credentials (none for a local endpoint, Application Default Credentials
//! otherwise), request counting, bound and 429/503 retries as the other
//! `gcp.*` kinds, and long-running operations waited for.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value as Json};

use ralph_core::driver::{Context, DriverError};

/// A download's bytes as they arrive.
pub type Chunks = tokio::sync::mpsc::Receiver<Result<bytes::Bytes, DriverError>>;

/// A GET of `url` on a blocking thread: the first answer (or its status and
/// body) through the oneshot, then the body in chunks of at most 1 MiB.
fn start_download(
    url: String,
    token: Option<String>,
    what: String,
) -> (
    tokio::sync::oneshot::Receiver<Result<(), (u16, String)>>,
    Chunks,
) {
    let timeout = ralph_core::remote::api_timeout();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout_read(timeout)
            .build();
        let mut req = agent.get(&url);
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = match req.call() {
            Ok(resp) => resp,
            Err(ureq::Error::Status(code, resp)) => {
                let _ = first_tx.send(Err((code, resp.into_string().unwrap_or_default())));
                return;
            }
            Err(e) => {
                let _ = first_tx.send(Err((0, e.to_string())));
                return;
            }
        };
        let _ = first_tx.send(Ok(()));
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(DriverError::new(format!("{what}: {e}"))));
                    return;
                }
            }
        }
    });
    (first_rx, rx)
}

/// What a request carries.
#[derive(Clone)]
enum Payload {
    None,
    Json(Json),
    /// A media upload's bytes and their content type.
    Bytes(String, std::sync::Arc<Vec<u8>>),
}

pub struct Rest<'a> {
    pub cx: &'a Context,
    base: String,
    token: Option<String>,
    /// The limiter's service name (throttling slows this service only).
    service: &'static str,
}

impl<'a> Rest<'a> {
    pub async fn new(
        cx: &'a Context,
        service: &'static str,
        default_endpoint: &str,
    ) -> Result<Rest<'a>, DriverError> {
        let g = crate::clients(cx).await?;
        let base = g
            .endpoint
            .clone()
            .unwrap_or_else(|| default_endpoint.to_string());
        let token = if super::is_local(&base) {
            None
        } else {
            Some(g.access_token().await?)
        };
        Ok(Rest {
            cx,
            base: base.trim_end_matches('/').to_string(),
            token,
            service,
        })
    }

    /// One request with the shared retry rules; `Ok(None)` on 404.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Json>,
        what: &str,
    ) -> Result<Option<Json>, DriverError> {
        let payload = body.map(Payload::Json).unwrap_or(Payload::None);
        let (code, text) = self.exchange(method, path, payload, what).await?;
        self.answer(code, text, what)
    }

    /// A media upload (Cloud Storage's `uploadType=media`): `bytes` are the
    /// request's body; the answer is the JSON resource.
    pub async fn send_media(
        &self,
        path: &str,
        content_type: &str,
        bytes: Vec<u8>,
        what: &str,
    ) -> Result<Option<Json>, DriverError> {
        let payload = Payload::Bytes(content_type.to_string(), std::sync::Arc::new(bytes));
        let (code, text) = self.exchange("POST", path, payload, what).await?;
        self.answer(code, text, what)
    }

    /// A download (`alt=media`) as chunks of at most 1 MiB, read as they
    /// arrive; `Ok(None)` on 404.
    pub async fn download(&self, path: &str, what: &str) -> Result<Option<Chunks>, DriverError> {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.cx.requests.fetch_add(1, Ordering::Relaxed);
            let (first, rx) = start_download(url.clone(), self.token.clone(), what.to_string());
            let (code, text) = match first.await {
                Ok(Ok(())) => return Ok(Some(rx)),
                Ok(Err(failed)) => failed,
                Err(_) => (0, "the download stopped".to_string()),
            };
            if code == 429 {
                self.cx.limits.service(self.service).throttled();
            }
            // Throttled or unavailable before the first byte: again, as
            // every other request is.
            if matches!(code, 429 | 503) && attempt < 10 && !self.cx.stop.load(Ordering::SeqCst) {
                let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 + 1);
                tokio::time::sleep(backoff / 2 + Duration::from_millis(jitter / 2)).await;
                backoff = (backoff * 2).min(Duration::from_secs(20));
                continue;
            }
            return match code {
                404 => Ok(None),
                0 => Err(DriverError::new(format!(
                    "{what}: {text} (requests go to {})",
                    self.base
                ))),
                _ => self.answer(code, text, what).map(|_| None),
            };
        }
    }

    /// Every page of a list at `path` whose page size parameter is
    /// `size_param` (Cloud Storage's `maxResults`), the items under `key`.
    pub async fn list_pages(
        &self,
        path: &str,
        key: &str,
        size_param: &str,
        what: &str,
    ) -> Result<Vec<Json>, DriverError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        crate::every_page(|token| async move {
            let mut url = format!("{path}{sep}{size_param}=200");
            if !token.is_empty() {
                url.push_str(&format!("&pageToken={token}"));
            }
            let page = self
                .send("GET", &url, None, what)
                .await?
                .unwrap_or_default();
            let items = page[key].as_array().into_iter().flatten().cloned();
            let next = page["nextPageToken"].as_str().map(str::to_string);
            Ok((items.collect(), next))
        })
        .await
    }

    /// Every page of a list at `path` (which has no query string yet), the
    /// items under `key` of each.
    pub async fn list_all(
        &self,
        path: &str,
        key: &str,
        what: &str,
    ) -> Result<Vec<Json>, DriverError> {
        self.list_pages(path, key, "pageSize", what).await
    }

    /// A create: `Ok(Err(answer))` when the name is taken (409
    /// ALREADY_EXISTS), so the caller can look at what holds it.
    pub async fn create(
        &self,
        path: &str,
        body: Json,
        what: &str,
    ) -> Result<Result<Json, Json>, DriverError> {
        let (code, text) = self
            .exchange("POST", path, Payload::Json(body), what)
            .await?;
        if code == 409 {
            return Ok(Err(serde_json::from_str(&text).unwrap_or_default()));
        }
        Ok(Ok(self.answer(code, text, what)?.unwrap_or_default()))
    }

    fn answer(&self, code: u16, text: String, what: &str) -> Result<Option<Json>, DriverError> {
        if code == 404 {
            return Ok(None);
        }
        if (200..300).contains(&code) {
            let v = if text.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&text)
                    .map_err(|e| DriverError::new(format!("{what}: the answer is not JSON: {e}")))?
            };
            return Ok(Some(v));
        }
        let answer = serde_json::from_str::<Json>(&text).unwrap_or_default();
        let disabled = answer["error"]["details"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["reason"] == "SERVICE_DISABLED");
        let message = answer["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or(text);
        let mut err = DriverError::new(format!("{what}: {code} {message}"));
        err.api_disabled = disabled;
        Err(err)
    }

    /// Sends until the answer is final: 429 and 503 are tried again with
    /// jittered backoff (at most 10 times, or until the run is stopped).
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Payload,
        what: &str,
    ) -> Result<(u16, String), DriverError> {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            self.cx.requests.fetch_add(1, Ordering::Relaxed);
            let (url2, method2, body2, token) = (
                url.clone(),
                method.to_string(),
                body.clone(),
                self.token.clone(),
            );
            let timeout = ralph_core::remote::api_timeout();
            let answer = tokio::task::spawn_blocking(move || {
                let agent = ureq::AgentBuilder::new().timeout(timeout).build();
                let mut req = agent.request(&method2, &url2);
                if let Some(t) = token {
                    req = req.set("Authorization", &format!("Bearer {t}"));
                }
                let r = match body2 {
                    Payload::Json(b) => req
                        .set("Content-Type", "application/json")
                        .send_string(&b.to_string()),
                    Payload::Bytes(content_type, b) => {
                        req.set("Content-Type", &content_type).send_bytes(&b)
                    }
                    Payload::None => req.call(),
                };
                match r {
                    Ok(resp) => Ok((200u16, resp.into_string().unwrap_or_default())),
                    Err(ureq::Error::Status(code, resp)) => {
                        Ok((code, resp.into_string().unwrap_or_default()))
                    }
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .map_err(|e| DriverError::new(format!("{what}: {e}")))?;
            let (code, text) = match answer {
                Ok(a) => a,
                Err(e) => {
                    return Err(DriverError::new(format!(
                        "{what}: {e} (requests go to {}; RALPH_DEPLOY_API_TIMEOUT=SECONDS sets the bound)",
                        self.base
                    )))
                }
            };
            if code == 429 {
                self.cx.limits.service(self.service).throttled();
            }
            attempt += 1;
            if !matches!(code, 429 | 503) || attempt >= 10 || self.cx.stop.load(Ordering::SeqCst) {
                return Ok((code, text));
            }
            let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 + 1);
            tokio::time::sleep(backoff / 2 + Duration::from_millis(jitter / 2)).await;
            backoff = (backoff * 2).min(Duration::from_secs(20));
        }
    }

    /// Waits for a long-running operation (`operations/...`) to finish;
    /// returns it, or its error as the failure.
    pub async fn wait(
        &self,
        address: &str,
        op: Json,
        what: &str,
        timeout: Duration,
    ) -> Result<Json, DriverError> {
        let name = op["name"].as_str().unwrap_or_default().to_string();
        let last = if op["done"].as_bool() == Some(true) || name.is_empty() {
            op
        } else {
            self.cx
                .wait_until(address, what, timeout, || {
                    let name = name.clone();
                    async move {
                        let v = self.send("GET", &format!("v1/{name}"), None, what).await?;
                        let done = v.filter(|v| v["done"].as_bool() == Some(true));
                        Ok((done, "RUNNING".to_string()))
                    }
                })
                .await?
        };
        if let Some(e) = last.get("error").filter(|e| !e.is_null()) {
            return Err(DriverError::new(format!(
                "{what}: {}",
                e["message"].as_str().unwrap_or("the operation failed")
            )));
        }
        Ok(last)
    }
}
