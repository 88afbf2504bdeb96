//! What one purchase's answer means for the report.

use serde::Serialize;

/// The class of one `POST /buy` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 200: the order completed.
    Completed,
    /// 202: durably accepted, completed later (still an acknowledged purchase).
    Accepted,
    /// 409: out of stock, a correct rejection rather than a failure.
    OutOfStock,
    /// Any other 4xx (validation, unknown product, ...): a client-side mistake.
    ClientError,
    /// 503 with `Retry-After`: the shop refused honestly (it could not promise completion in
    /// time) and said when to come back. Counted apart from other 5xx.
    Refused,
    /// 5xx (502/503/504 name the failed step).
    ServerError,
    /// No full answer within `--timeout`.
    Timeout,
    /// Connection refused/reset or another transport failure before an answer.
    ConnectionError,
    /// A status outside the contract (1xx/3xx, or a 2xx other than 200/202).
    Unexpected,
}

impl Outcome {
    /// Acknowledged: the shop took the customer's money (now or durably later).
    pub fn is_acknowledged(self) -> bool {
        matches!(self, Outcome::Completed | Outcome::Accepted)
    }
}

/// Classifies an HTTP status.
pub fn classify_status(status: u16) -> Outcome {
    match status {
        200 => Outcome::Completed,
        202 => Outcome::Accepted,
        409 => Outcome::OutOfStock,
        400..=499 => Outcome::ClientError,
        500..=599 => Outcome::ServerError,
        _ => Outcome::Unexpected,
    }
}

/// Classifies an answer: like [`classify_status`], except that a 503 carrying `Retry-After`
/// is an honest refusal ([`Outcome::Refused`]), not a failure.
pub fn classify_answer(status: u16, has_retry_after: bool) -> Outcome {
    if status == 503 && has_retry_after {
        Outcome::Refused
    } else {
        classify_status(status)
    }
}

/// The `order_id` of an answer body, when it has one.
pub fn order_id(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("order_id")?
        .as_str()
        .map(str::to_owned)
}

/// Classifies a transport failure (no status).
pub fn classify_error(error: &reqwest::Error) -> Outcome {
    if error.is_timeout() {
        Outcome::Timeout
    } else {
        Outcome::ConnectionError
    }
}

/// What a 200 body says about how the purchase was served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// Labels of the `degraded` array (`exchange:stale-rate`, ...).
    pub degraded: Vec<String>,
    /// `bonus.status`: `credited` or `pending`.
    pub bonus: Option<String>,
}

/// Reads the fields the report counts from a 200 body; a body that is not the expected JSON
/// yields empty details rather than an error, since the status already classified the answer.
pub fn details(body: &[u8]) -> Details {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Details::default();
    };
    let degraded = value
        .get("degraded")
        .and_then(serde_json::Value::as_array)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|label| label.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let bonus = value
        .pointer("/bonus/status")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Details { degraded, bonus }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests state their expectations by unwrapping
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(classify_status(200), Outcome::Completed);
        assert_eq!(classify_status(202), Outcome::Accepted);
        assert_eq!(classify_status(409), Outcome::OutOfStock);
        for status in [400, 404, 422, 429] {
            assert_eq!(classify_status(status), Outcome::ClientError, "{status}");
        }
        for status in [500, 502, 503, 504] {
            assert_eq!(classify_status(status), Outcome::ServerError, "{status}");
        }
        assert_eq!(classify_answer(503, true), Outcome::Refused);
        assert_eq!(classify_answer(503, false), Outcome::ServerError);
        assert_eq!(classify_answer(502, true), Outcome::ServerError);
        assert_eq!(classify_answer(202, true), Outcome::Accepted);
        assert!(!Outcome::Refused.is_acknowledged());
        assert_eq!(order_id(br#"{"order_id":"o7"}"#).as_deref(), Some("o7"));
        assert_eq!(order_id(b"nope"), None);
        assert_eq!(classify_status(204), Outcome::Unexpected);
        assert_eq!(classify_status(302), Outcome::Unexpected);
        assert!(Outcome::Completed.is_acknowledged());
        assert!(Outcome::Accepted.is_acknowledged());
        assert!(!Outcome::OutOfStock.is_acknowledged());
        assert!(!Outcome::Timeout.is_acknowledged());
    }

    #[test]
    fn body_details() {
        let body = br#"{"order_id":"o1","degraded":["exchange:stale-rate","store:failover"],
            "bonus":{"points":50,"status":"pending"}}"#;
        assert_eq!(
            details(body),
            Details {
                degraded: vec!["exchange:stale-rate".into(), "store:failover".into()],
                bonus: Some("pending".into()),
            }
        );
        let plain = br#"{"degraded":[],"bonus":{"status":"credited"}}"#;
        assert_eq!(details(plain).bonus.as_deref(), Some("credited"));
        assert!(details(plain).degraded.is_empty());
        assert_eq!(details(b"not json"), Details::default());
    }

    #[tokio::test]
    async fn transport_errors() {
        // A port that was just free: nothing listens, so the connection is refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let err = client
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(classify_error(&err), Outcome::ConnectionError);

        // A listener that accepts and never answers: the client timeout fires.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let _conn = silent.accept().await;
            std::future::pending::<()>().await;
        });
        let err = client
            .get(format!("http://{addr}/"))
            .timeout(std::time::Duration::from_millis(100))
            .send()
            .await
            .unwrap_err();
        assert_eq!(classify_error(&err), Outcome::Timeout);
        hold.abort();
    }
}
