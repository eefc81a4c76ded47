//! The copy of a request kept for the alternates, and its rewrite for one of them: base URL,
//! `Authorization`, and the body's `model`.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{Request, Uri};
use http_body::Body;
use http_body_util::Full;

use super::config::{Target, UnmappedModel};
use super::events::SkipReason;
use crate::deepseek::{RequestBody, RequestModel};
use crate::retry::template::Template as RequestCopy;

/// What is needed to send a request again to another upstream: the retry layer's request copy
/// (headers kept inline, the body a reference-counted buffer: cloning it copies no bytes).
pub(crate) struct Template {
    copy: RequestCopy<RequestBody>,
}

impl Template {
    /// A copy of `request`'s head and a reference to its body; `None` only for a body that
    /// cannot be replayed (the client's buffered body always can).
    pub(crate) fn of(request: &Request<RequestBody>) -> Option<Template> {
        RequestCopy::of(request).map(|copy| Template { copy })
    }

    /// The request rewritten for `target`, or why it cannot be.
    pub(crate) fn for_target(
        &self,
        target: &Target,
        primary_base_path: &str,
    ) -> Result<Request<RequestBody>, SkipReason> {
        let mut request = self.copy.copy().ok_or(SkipReason::Unroutable)?;
        let model = request.extensions().get::<RequestModel>().cloned();
        let mapped = match &model {
            Some(model) => match target.models.get(model.as_str()) {
                Some(mapped) => Some(mapped),
                None if target.unmapped == UnmappedModel::SendUnchanged => None,
                None => return Err(SkipReason::UnmappedModel),
            },
            // `GET /models` and other requests that name no model go unchanged.
            None => None,
        };
        let uri = rebase(request.uri(), primary_base_path, target).ok_or(SkipReason::Unroutable)?;
        *request.uri_mut() = uri;
        if let Some(mapped) = mapped
            && model.as_ref().is_some_and(|m| m.as_str() != &*mapped.name)
        {
            let bytes = body_bytes(request.body()).ok_or(SkipReason::Unroutable)?;
            *request.body_mut() =
                Full::new(with_model(&bytes, &mapped.name).ok_or(SkipReason::Unroutable)?);
        }
        let headers = request.headers_mut();
        // The primary's key must never reach another provider; a host or length set for the
        // primary's request would be wrong for this one.
        headers.remove(HOST);
        headers.remove(CONTENT_LENGTH);
        match &target.authorization {
            Some(value) => {
                headers.insert(AUTHORIZATION, value.clone());
            }
            None => {
                headers.remove(AUTHORIZATION);
            }
        }
        if let Some(mapped) = mapped {
            // The upstream's own layers (a breaker or metrics keyed per model) see the model
            // it is actually asked for.
            request.extensions_mut().insert(mapped.extension.clone());
        }
        Ok(request)
    }
}

/// `uri` with the primary's base replaced by the target's: the path after the primary's base
/// path (e.g. `/chat/completions`) and the query are kept. `None` when the path is not under
/// the primary's base.
fn rebase(uri: &Uri, primary_base_path: &str, target: &Target) -> Option<Uri> {
    let path = uri.path();
    let rest = path.strip_prefix(primary_base_path)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let mut path_and_query = String::with_capacity(target.base_path.len() + rest.len() + 16);
    path_and_query.push_str(&target.base_path);
    path_and_query.push_str(rest);
    if path_and_query.is_empty() {
        path_and_query.push('/');
    }
    if let Some(query) = uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

/// The bytes of a buffered body, without consuming it: `Full` yields its one frame at once.
fn body_bytes(body: &RequestBody) -> Option<Bytes> {
    let mut copy = body.clone();
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut copy).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
        Poll::Ready(None) => Some(Bytes::new()),
        // `Full` is never pending and never fails; anything else cannot be mapped.
        _ => None,
    }
}

/// A JSON object body with its `model` replaced; `None` when the body is not one.
pub(crate) fn with_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let slot = json.as_object_mut()?.get_mut("model")?;
    *slot = serde_json::Value::String(model.to_owned());
    serde_json::to_vec(&json).ok().map(Bytes::from)
}
