//! The copy of a request kept to send it again (a retry, a hedge, the next upstream of a
//! failover list), made as cheaply as the success path allows.
//!
//! Cloning `http::request::Parts` costs two allocations for the header map (and two frees
//! when the call succeeds), the largest part of the layer's success-path cost. Most requests
//! carry a handful of headers, so up to [`INLINE`] of them are kept inline, without
//! allocating; the map is rebuilt only when a retry actually happens.

use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

use super::policy::ReplayBody;

/// Headers kept without allocating.
const INLINE: usize = 6;

// The inline variant is the point: the map is the rare fallback, so the size difference is
// what saves the allocation.
#[allow(clippy::large_enum_variant)]
enum Headers {
    Inline {
        len: usize,
        items: [Option<(HeaderName, HeaderValue)>; INLINE],
    },
    Map(HeaderMap),
}

/// What is needed to send a request again.
pub(crate) struct Template<B> {
    method: Method,
    uri: Uri,
    version: Version,
    headers: Headers,
    extensions: Extensions,
    body: B,
}

impl<B: ReplayBody> Template<B> {
    /// A template of `request`, or `None` when its body cannot be replayed.
    pub(crate) fn of(request: &Request<B>) -> Option<Template<B>> {
        let body = request.body().try_replay()?;
        let mut template = None;
        Template::write(&mut template, body, request);
        template
    }

    /// Writes a template of `request` with `body` (its replayed body) into `slot`, where it
    /// will stay: its inline headers are most of its size, so it is built in place rather
    /// than built and moved.
    pub(crate) fn write<'a>(
        slot: &'a mut Option<Template<B>>,
        body: B,
        request: &Request<B>,
    ) -> &'a mut Template<B> {
        // The clones first, so that nothing runs between the template's construction and
        // its store, which lets the compiler write it into the slot directly.
        let method = request.method().clone();
        let uri = request.uri().clone();
        let extensions = request.extensions().clone();
        let template = slot.insert(Template {
            body,
            method,
            uri,
            version: request.version(),
            headers: Headers::Inline {
                len: 0,
                items: Default::default(),
            },
            extensions,
        });
        template.copy_headers(request.headers());
        template
    }

    /// Copies the request's headers into the template.
    #[inline]
    fn copy_headers(&mut self, map: &HeaderMap) {
        if map.len() > INLINE {
            self.headers = Headers::Map(map.clone());
        } else if let Headers::Inline { len, items } = &mut self.headers {
            for (slot, (name, value)) in items.iter_mut().zip(map.iter()) {
                *slot = Some((name.clone(), value.clone()));
            }
            *len = map.len();
        }
    }

    /// A new request from the template, which stays for the next one; `None` when the body
    /// cannot be replayed again.
    pub(crate) fn copy(&self) -> Option<Request<B>> {
        let body = self.body.try_replay()?;
        let mut request = Request::new(body);
        self.fill(&mut request, self.headers_map());
        *request.extensions_mut() = self.extensions.clone();
        Some(request)
    }

    /// A request built from the template: a copy while `keep`, the template itself
    /// otherwise.
    pub(crate) fn request(this: &mut Option<Template<B>>, keep: bool) -> Option<Request<B>> {
        if keep && let Some(template) = this.as_ref() {
            return template.copy();
        }
        let template = this.take()?;
        let headers = template.headers_map();
        let Template {
            method,
            uri,
            version,
            extensions,
            body,
            ..
        } = template;
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        *request.extensions_mut() = extensions;
        Some(request)
    }

    fn fill(&self, request: &mut Request<B>, headers: HeaderMap) {
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
    }

    fn headers_map(&self) -> HeaderMap {
        match &self.headers {
            Headers::Map(map) => map.clone(),
            Headers::Inline { len, items } => {
                let mut map = HeaderMap::with_capacity(*len);
                for (name, value) in items.iter().flatten() {
                    map.append(name.clone(), value.clone());
                }
                map
            }
        }
    }
}
