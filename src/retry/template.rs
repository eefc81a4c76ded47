//! The copy of a request kept to send it again (a retry, a hedge, the next upstream of a
//! failover list), made as cheaply as the success path allows.
//!
//! Cloning `http::request::Parts` costs two allocations for the header map (and two frees
//! when the call succeeds), the largest part of the layer's success-path cost. The copy keeps
//! the header names and values instead (a reference-count bump each), up to six of them
//! inline; the map is rebuilt only when a retry actually happens.

use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

use super::policy::ReplayBody;

type Header = (HeaderName, HeaderValue);

/// The request's header names and values, in its order (a repeated name once per value): up to
/// six of them inline (the DeepSeek client sends four, the trace-ID layer adds one or two),
/// more in one allocation of exactly their number. A variant per count rather than six
/// optional slots: the copy is stored straight into its place, with no empty slots to fill
/// first and none to check when it is dropped.
enum Headers {
    Empty,
    One([Header; 1]),
    Two([Header; 2]),
    Three([Header; 3]),
    Four([Header; 4]),
    Five([Header; 5]),
    Six([Header; 6]),
    Many(Box<[Header]>),
}

#[inline]
fn pair((name, value): (&HeaderName, &HeaderValue)) -> Header {
    (name.clone(), value.clone())
}

/// Stores `Headers::$variant` of the next values of `$iter` into `$place`, or runs `$else`
/// when there are fewer.
macro_rules! inline_headers {
    ($place:ident, $iter:ident, $else:expr, $variant:ident: $($item:ident),+) => {{
        $(let Some($item) = $iter.next() else { return $else };)+
        // The place is empty: nothing to drop, so no call to drop it.
        std::mem::forget(std::mem::replace($place, Headers::$variant([$(pair($item)),+])));
    }};
}

impl Headers {
    /// Copies `map`'s names and values into these (empty) headers, in place: the variant for
    /// their count is written where it stays, not built at the largest variant's size and
    /// moved there.
    #[inline]
    fn copy(&mut self, map: &HeaderMap) {
        debug_assert!(matches!(self, Headers::Empty), "headers copied twice");
        let mut iter = map.iter();
        // `len` counts the values, which is what `iter` yields: `many` is never needed for
        // fewer than seven, it only keeps every header if that ever changed.
        let mut many = || *self = Headers::Many(map.iter().map(pair).collect());
        match map.len() {
            0 => {}
            1 => inline_headers!(self, iter, many(), One: a),
            2 => inline_headers!(self, iter, many(), Two: a, b),
            3 => inline_headers!(self, iter, many(), Three: a, b, c),
            4 => inline_headers!(self, iter, many(), Four: a, b, c, d),
            5 => inline_headers!(self, iter, many(), Five: a, b, c, d, e),
            6 => inline_headers!(self, iter, many(), Six: a, b, c, d, e, f),
            _ => many(),
        }
    }

    fn as_slice(&self) -> &[Header] {
        match self {
            Headers::Empty => &[],
            Headers::One(items) => items,
            Headers::Two(items) => items,
            Headers::Three(items) => items,
            Headers::Four(items) => items,
            Headers::Five(items) => items,
            Headers::Six(items) => items,
            Headers::Many(items) => items,
        }
    }

    fn map(&self) -> HeaderMap {
        let items = self.as_slice();
        let mut map = HeaderMap::with_capacity(items.len());
        for (name, value) in items {
            map.append(name.clone(), value.clone());
        }
        map
    }

    /// The map, the names and values moved into it (the last attempt's request).
    fn into_map(self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.as_slice().len());
        let add = |(name, value): Header| {
            map.append(name, value);
        };
        match self {
            Headers::Empty => {}
            Headers::One(items) => items.into_iter().for_each(add),
            Headers::Two(items) => items.into_iter().for_each(add),
            Headers::Three(items) => items.into_iter().for_each(add),
            Headers::Four(items) => items.into_iter().for_each(add),
            Headers::Five(items) => items.into_iter().for_each(add),
            Headers::Six(items) => items.into_iter().for_each(add),
            Headers::Many(items) => items.into_iter().for_each(add),
        }
        map
    }
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
        let mut template = Template {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: Headers::Empty,
            extensions: request.extensions().clone(),
            body,
        };
        template.headers.copy(request.headers());
        Some(template)
    }

    /// [`Template::of`] in an allocation of its own (the retry layer's response future keeps
    /// it so), written there in place: the clones first, then the allocation and the store,
    /// then the headers copied into their place. Built whole and moved, it would be copied
    /// through the stack.
    #[inline]
    pub(crate) fn boxed(request: &Request<B>) -> Option<Box<Template<B>>> {
        let body = request.body().try_replay()?;
        let method = request.method().clone();
        let uri = request.uri().clone();
        let extensions = request.extensions().clone();
        let mut template = Box::write(
            Box::new_uninit(),
            Template {
                method,
                uri,
                version: request.version(),
                headers: Headers::Empty,
                extensions,
                body,
            },
        );
        template.headers.copy(request.headers());
        Some(template)
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
    pub(crate) fn request(this: &mut Option<Box<Template<B>>>, keep: bool) -> Option<Request<B>> {
        if keep && let Some(template) = this.as_ref() {
            return template.copy();
        }
        let Template {
            method,
            uri,
            version,
            headers,
            extensions,
            body,
        } = *this.take()?;
        let headers = headers.into_map();
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
        self.headers.map()
    }
}
