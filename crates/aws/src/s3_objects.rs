//! An `aws.s3_bucket`'s objects as backups use them
//! ([`ObjectStore`]): streamed multipart uploads, whole small objects,
//! streamed reads, listings and deletes.

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use super::api_error;
use ralph_core::driver::capability::{ObjectStore, Upload};
use ralph_core::driver::{Context, DriverError};

/// S3's smallest part but the last is 5 MiB; 8 MiB parts keep a 500 MB
/// dump at about 60 requests and the memory at one part.
const PART_SIZE: usize = 8 << 20;

pub struct S3Objects;

#[async_trait::async_trait]
impl ObjectStore for S3Objects {
    fn url(&self, bucket: &str, key: &str) -> String {
        format!("s3://{bucket}/{key}")
    }

    async fn upload(
        &self,
        cx: &Context,
        bucket: &str,
        key: &str,
        content_type: &str,
    ) -> Result<Box<dyn Upload>, DriverError> {
        let s3 = crate::clients(cx).await?.s3.clone();
        let started = s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| api_error("CreateMultipartUpload", e))?;
        Ok(Box::new(Multipart {
            s3,
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: started.upload_id().unwrap_or_default().to_string(),
            parts: Vec::new(),
        }))
    }

    async fn put(
        &self,
        cx: &Context,
        bucket: &str,
        key: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(), DriverError> {
        crate::clients(cx)
            .await?
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(body.into())
            .send()
            .await
            .map_err(|e| api_error("PutObject", e))?;
        Ok(())
    }

    async fn get(
        &self,
        cx: &Context,
        bucket: &str,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, DriverError>>, DriverError> {
        let object = crate::clients(cx)
            .await?
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| api_error(&format!("reading {key}"), e))?;
        let key = key.to_string();
        let body = object.body;
        Ok(futures::stream::unfold(Some(body), move |body| {
            let key = key.clone();
            async move {
                let mut body = body?;
                match body.try_next().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                    Ok(None) => None,
                    Err(e) => Some((Err(DriverError::new(format!("reading {key}: {e}"))), None)),
                }
            }
        })
        .boxed())
    }

    async fn list(
        &self,
        cx: &Context,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<String>, DriverError> {
        let s3 = &crate::clients(cx).await?.s3;
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = s3
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| api_error("ListObjectsV2", e))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(str::to_string),
            );
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn delete(&self, cx: &Context, bucket: &str, key: &str) -> Result<(), DriverError> {
        crate::clients(cx)
            .await?
            .s3
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| api_error("DeleteObject", e))?;
        Ok(())
    }
}

/// An S3 multipart upload: the object appears at `finish` only.
struct Multipart {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
}

#[async_trait::async_trait]
impl Upload for Multipart {
    fn part_size(&self) -> usize {
        PART_SIZE
    }

    async fn part(&mut self, _cx: &Context, bytes: Vec<u8>) -> Result<(), DriverError> {
        let number = self.parts.len() as i32 + 1;
        let part = self
            .s3
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(bytes.into())
            .send()
            .await
            .map_err(|e| api_error("UploadPart", e))?;
        self.parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }

    async fn finish(self: Box<Self>, _cx: &Context) -> Result<(), DriverError> {
        self.s3
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| api_error("CompleteMultipartUpload", e))?;
        Ok(())
    }

    async fn abort(self: Box<Self>, _cx: &Context) {
        let _ = self
            .s3
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
    }
}
