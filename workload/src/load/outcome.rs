//! How one request ended, and the classification of HTTP statuses into the report's classes.

use http::StatusCode;

/// How a request ended. Exactly one per request that started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A 1xx/2xx/3xx response, read to its end.
    Ok,
    /// The connection could not be established.
    Connect,
    /// No complete response within `--timeout` (connect + response).
    Timeout,
    /// A 4xx response.
    Status4xx,
    /// A 5xx response.
    Status5xx,
    /// Any other failure on an established connection (closed or reset mid-exchange, bad HTTP).
    Io,
}

impl Outcome {
    /// Every outcome, in the report's order (for pre-registering metric labels).
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Connect,
        Outcome::Timeout,
        Outcome::Status4xx,
        Outcome::Status5xx,
        Outcome::Io,
    ];

    /// Classifies a response that was read completely by its status.
    pub fn from_status(status: StatusCode) -> Outcome {
        if status.is_server_error() {
            Outcome::Status5xx
        } else if status.is_client_error() {
            Outcome::Status4xx
        } else {
            Outcome::Ok
        }
    }

    /// Whether an HTTP response was received (its latency goes into the histogram).
    pub fn has_response(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Status4xx | Outcome::Status5xx)
    }

    /// Position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Metric label and report field name of the class.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Connect => "connect",
            Outcome::Timeout => "timeout",
            Outcome::Status4xx => "status_4xx",
            Outcome::Status5xx => "status_5xx",
            Outcome::Io => "io",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_into_classes() {
        for (code, outcome) in [
            (200, Outcome::Ok),
            (204, Outcome::Ok),
            (301, Outcome::Ok),
            (304, Outcome::Ok),
            (400, Outcome::Status4xx),
            (404, Outcome::Status4xx),
            (429, Outcome::Status4xx),
            (499, Outcome::Status4xx),
            (500, Outcome::Status5xx),
            (503, Outcome::Status5xx),
            (599, Outcome::Status5xx),
        ] {
            assert_eq!(
                Outcome::from_status(StatusCode::from_u16(code).unwrap()),
                outcome,
                "{code}"
            );
        }
    }

    #[test]
    fn index_is_the_position_in_all() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
    }

    #[test]
    fn only_responses_have_latency() {
        let with: Vec<_> = Outcome::ALL.iter().filter(|o| o.has_response()).collect();
        assert_eq!(
            with,
            [&Outcome::Ok, &Outcome::Status4xx, &Outcome::Status5xx]
        );
    }
}
