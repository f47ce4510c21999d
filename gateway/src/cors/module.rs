//! Owns putting a route's CORS answer on the response: a Pingora downstream module, so it
//! runs for every response the client gets (proxied, served from the cache, or made by
//! the gateway itself, such as a 401 or 429), after the cache has stored the origin's
//! response. The proxy sets the answer once the route is known.

use async_trait::async_trait;
use http::header;
use pingora::http::ResponseHeader;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};

use super::{CorsAnswer, OWNED_HEADERS, needs_vary};

/// Per request: the answer to apply, when the route has a CORS policy.
#[derive(Debug, Default)]
pub struct CorsModule {
    answer: Option<CorsAnswer>,
}

impl CorsModule {
    pub fn set(&mut self, answer: CorsAnswer) {
        self.answer = Some(answer);
    }

    /// Rewrite a response head: drop the upstream's `Access-Control-*`, add the policy's
    /// answer and `Vary`.
    pub fn apply(answer: &CorsAnswer, resp: &mut ResponseHeader) {
        for name in &OWNED_HEADERS {
            resp.remove_header(name);
        }
        for (name, value) in &answer.headers {
            // Names and values are valid already; appending cannot fail for them.
            let _ = resp.append_header(name.clone(), value.clone());
        }
        let mut vary = |name: http::HeaderName| {
            if needs_vary(&resp.headers, &name) {
                let _ = resp.append_header(header::VARY, http::HeaderValue::from_name(name));
            }
        };
        if answer.vary_origin {
            vary(header::ORIGIN);
        }
        if answer.vary_request {
            vary(header::ACCESS_CONTROL_REQUEST_METHOD);
            vary(header::ACCESS_CONTROL_REQUEST_HEADERS);
        }
    }
}

#[async_trait]
impl HttpModule for CorsModule {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        if resp.status.is_informational() {
            return Ok(());
        }
        if let Some(answer) = &self.answer {
            Self::apply(answer, resp);
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Registers [`CorsModule`] on the proxy's downstream modules.
#[derive(Debug)]
pub struct CorsModuleBuilder;

impl HttpModuleBuilder for CorsModuleBuilder {
    fn init(&self) -> Module {
        Box::new(CorsModule::default())
    }
}
