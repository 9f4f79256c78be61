//! A small blocking HTTP client for executors and metric providers (`http.*`,
//! `notify.webhook`, Prometheus, HTTP JSON metrics), run off the async runtime.
//!
//! Errors name the URL as written in the plan (`${VAR}` references unexpanded), never the
//! expanded URL, which may hold a secret. A response is masked before anything reads it: the
//! values of credential headers and of expanded `${VAR}`s the request sent never appear in
//! its JSON or its excerpt, even when the server echoes them.

use std::time::Duration;

use serde_json::Value;

/// An HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method (`GET`, `POST`, …).
    pub method: String,
    /// The URL as written in the plan; `${VAR}` references are expanded when sent.
    pub url: String,
    /// Headers (values may hold `${VAR}` references).
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: Option<Value>,
    /// Give up after this long.
    pub timeout: Duration,
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body as JSON, when it parses as JSON.
    pub json: Option<Value>,
    /// The first 512 characters of the body, for messages.
    pub excerpt: String,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A `${VAR}` in the URL or a header is not set.
    #[error(transparent)]
    Unset(#[from] crate::context::UnsetVariable),
    /// No answer (connection refused, timeout, TLS, …).
    #[error("{method} {url}: {reason}")]
    Transport {
        /// Method.
        method: String,
        /// URL as written in the plan.
        url: String,
        /// What went wrong (never includes the expanded URL).
        reason: String,
    },
}

impl Request {
    /// A GET of `url`.
    pub fn get(url: &str, timeout: Duration) -> Request {
        Request { method: "GET".to_owned(), url: url.to_owned(), headers: Vec::new(), body: None, timeout }
    }

    /// Sends the request on a blocking thread.
    pub async fn send(self) -> Result<Response, HttpError> {
        tokio::task::spawn_blocking(move || self.send_blocking()).await.unwrap_or_else(|e| {
            Err(HttpError::Transport { method: String::new(), url: String::new(), reason: e.to_string() })
        })
    }

    fn send_blocking(&self) -> Result<Response, HttpError> {
        let url = crate::expand_env(&self.url)?;
        let transport = |reason: String| HttpError::Transport {
            method: self.method.clone(),
            url: self.url.clone(),
            reason: reason.replace(&url, &self.url),
        };
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(self.timeout)).build().into();
        let mut builder = ureq::http::Request::builder().method(self.method.as_str()).uri(&url);
        let mut masks = crate::Masks::default();
        masks.add(&url, &self.url);
        for (name, template) in &self.headers {
            let value = crate::expand_env(template)?;
            if template.contains("${") || is_credential_header(name) {
                masks.add(&value, "***");
                // An echo may show the credential without its scheme (`Bearer …`).
                value.split_once(' ').inspect(|(_, credential)| masks.add(credential, "***"));
            }
            builder = builder.header(name, value);
        }
        let sent = match &self.body {
            Some(body) => {
                let bytes = serde_json::to_vec(body).unwrap_or_default();
                let request = builder.header("content-type", "application/json").body(bytes);
                agent.run(request.map_err(|e| transport(e.to_string()))?)
            }
            None => agent.run(builder.body(()).map_err(|e| transport(e.to_string()))?),
        };
        let mut response = sent.map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let text = masks.mask(&response.body_mut().read_to_string().unwrap_or_default());
        let excerpt = text.chars().take(512).collect();
        Ok(Response { status, json: serde_json::from_str(&text).ok(), excerpt })
    }
}

/// Headers that carry credentials whether or not their value is a `${VAR}` reference.
fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["authorization", "proxy-authorization", "cookie", "x-api-key"].contains(&name.as_str())
        || ["token", "secret", "key", "auth"].iter().any(|word| name.contains(word))
}

/// Checks `expected` (JSON pointer → value) against a response body; returns one message
/// per mismatch.
pub fn mismatches(json: Option<&Value>, expected: impl IntoIterator<Item = (String, Value)>) -> Vec<String> {
    expected
        .into_iter()
        .filter_map(|(pointer, want)| match json.and_then(|j| j.pointer(&pointer)) {
            Some(got) if *got == want => None,
            Some(got) => Some(format!("`{pointer}` is {got}, expected {want}")),
            None => Some(format!("`{pointer}` is missing from the response")),
        })
        .collect()
}
