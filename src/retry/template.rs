//! The copy of a request kept to send it again (a retry, a hedge, the next upstream of a
//! failover list), made as cheaply as the success path allows.
//!
//! Cloning `http::request::Parts` costs two allocations for the header map (and two frees
//! when the call succeeds), the largest part of the layer's success-path cost. The copy keeps
//! the header names and values instead (a reference-count bump each), up to six of them
//! inline; the map is rebuilt only when a retry actually happens.

use std::cell::Cell;

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

/// A request's head: everything a copy needs but the body.
pub(crate) struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: Headers,
    extensions: Extensions,
}

impl Head {
    /// Writes `request`'s head into `place`, in place: the clones first, then the store, then
    /// the headers copied where they stay. Built whole and moved, it would be copied through
    /// the stack.
    #[inline]
    fn write<B>(place: &mut Option<Head>, request: &Request<B>) {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let extensions = request.extensions().clone();
        let head = place.insert(Head {
            method,
            uri,
            version: request.version(),
            headers: Headers::Empty,
            extensions,
        });
        head.headers.copy(request.headers());
    }

    /// A request with a copy of this head.
    fn copy<B>(&self, body: B) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.map();
        *request.extensions_mut() = self.extensions.clone();
        request
    }

    /// A request with this head, its parts moved into it.
    fn into_request<B>(self, body: B) -> Request<B> {
        let Head {
            method,
            uri,
            version,
            headers,
            extensions,
        } = self;
        let headers = headers.into_map();
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        *request.extensions_mut() = extensions;
        request
    }
}

/// What is needed to send a request again (a hedge, the next upstream of a failover list).
pub(crate) struct Template<B> {
    head: Head,
    body: B,
}

impl<B: ReplayBody> Template<B> {
    /// A template of `request`, or `None` when its body cannot be replayed.
    pub(crate) fn of(request: &Request<B>) -> Option<Template<B>> {
        let body = request.body().try_replay()?;
        let mut head = None;
        Head::write(&mut head, request);
        let head = head?;
        Some(Template { head, body })
    }

    /// A new request from the template, which stays for the next one; `None` when the body
    /// cannot be replayed again.
    pub(crate) fn copy(&self) -> Option<Request<B>> {
        Some(self.head.copy(self.body.try_replay()?))
    }
}

thread_local! {
    /// This thread's spare head allocation: the last one a finished call gave back.
    static SPARE: Cell<Option<Box<Option<Head>>>> = const { Cell::new(None) };
}

/// An empty head allocation: this thread's spare, or a new one.
#[inline]
fn spare_head() -> Box<Option<Head>> {
    SPARE
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_else(|| Box::new(None))
}

/// The retry layer's copy of a request: the head in an allocation of its own (the response
/// future is copied whole every time it moves, and the head is a few hundred bytes), the
/// body (a reference to a buffer) beside it.
///
/// Every call that can be retried keeps a copy, and almost every call succeeds at once: so
/// the head's allocation is not freed when the call ends but kept as the thread's spare
/// ([`Replay::recycle`]) for the next call's copy, one per thread. A success costs the
/// clones of the head's parts, not an allocation and a free.
pub(crate) struct Replay<B> {
    head: Box<Option<Head>>,
    body: B,
}

impl<B: ReplayBody> Replay<B> {
    /// A copy of `request`, or `None` when its body cannot be replayed.
    #[inline]
    pub(crate) fn of(request: &Request<B>) -> Option<Replay<B>> {
        let body = request.body().try_replay()?;
        let mut head = spare_head();
        Head::write(&mut head, request);
        Some(Replay { head, body })
    }

    /// A request built from the copy: a copy while `keep`, the copy itself otherwise (its
    /// allocation kept as the thread's spare).
    pub(crate) fn request(this: &mut Option<Replay<B>>, keep: bool) -> Option<Request<B>> {
        if keep && let Some(replay) = this.as_ref() {
            let body = replay.body.try_replay()?;
            return Some(replay.head.as_ref().as_ref()?.copy(body));
        }
        let Replay { mut head, body } = this.take()?;
        let request = head.take().map(|head| head.into_request(body));
        recycle_head(head);
        request
    }
}

impl<B> Replay<B> {
    /// Ends the copy: its head is dropped and its allocation kept as this thread's spare.
    #[inline]
    pub(crate) fn recycle(self) {
        let Replay { mut head, body } = self;
        drop(body);
        *head = None;
        recycle_head(head);
    }
}

/// Keeps `head` (emptied) as this thread's spare, unless it already has one.
#[inline]
fn recycle_head(head: Box<Option<Head>>) {
    debug_assert!(head.is_none(), "a spare head must be empty");
    // A thread being torn down has no spare: the allocation is freed.
    let _ = SPARE.try_with(|spare| {
        let previous = spare.replace(Some(head));
        drop(previous);
    });
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;

    use super::*;

    fn request(path: &str, header: &'static str) -> Request<Full<Bytes>> {
        Request::post(path)
            .header("x-which", header)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    fn head_address<B>(replay: &Replay<B>) -> *const Option<Head> {
        &*replay.head
    }

    #[test]
    fn a_recycled_head_allocation_is_reused_and_holds_only_the_new_request() {
        std::thread::spawn(|| {
            let first = Replay::of(&request("http://a/one", "first")).unwrap();
            let address = head_address(&first);
            first.recycle();
            // The spare is empty: nothing of the first request is kept alive.
            let spare = SPARE.with(Cell::take).unwrap();
            assert!(spare.is_none());
            recycle_head(spare);

            let mut second = Some(Replay::of(&request("http://b/two", "second")).unwrap());
            assert_eq!(head_address(second.as_ref().unwrap()), address);
            for keep in [true, false] {
                let copy = Replay::request(&mut second, keep).unwrap();
                assert_eq!(copy.uri(), "http://b/two");
                assert_eq!(copy.method(), http::Method::POST);
                assert_eq!(copy.headers().len(), 1);
                assert_eq!(copy.headers()["x-which"], "second");
            }
            assert!(second.is_none());
            // The last request moved the head out and kept the allocation.
            let third = Replay::of(&request("http://c/", "third")).unwrap();
            assert_eq!(head_address(&third), address);
            // Only one spare a thread: a second recycled allocation is freed.
            let fourth = Replay::of(&request("http://d/", "fourth")).unwrap();
            assert_ne!(head_address(&fourth), address);
            third.recycle();
            fourth.recycle();
            let fifth = Replay::of(&request("http://e/", "fifth")).unwrap();
            assert_ne!(head_address(&fifth), address);
        })
        .join()
        .unwrap();
    }
}
