//! The broker URI: checked once, and never shown with its password
//! (`Display` and `Debug` hide it; [`redact_uri`] does it for any URI that
//! is printed). Used by the configuration and by the secret that may hold
//! the URI.

use std::{fmt, str::FromStr};

/// The smallest `frame_max` the forwarder accepts in `AMQP_URI`.
const MIN_FRAME_MAX: u32 = 16384;

/// The broker URI. Its `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct AmqpUri(String);

/// Why a URI cannot be used. It never holds the URI: a password with '/',
/// '?' or '#' in it could defeat any redaction of a URI that does not
/// parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} (value not shown)")]
pub struct InvalidUri(&'static str);

impl AmqpUri {
    /// Validates the scheme and the URI syntax (via lapin's parser).
    pub fn parse(raw: &str) -> Result<Self, InvalidUri> {
        let invalid = InvalidUri;
        if !(raw.starts_with("amqp://") || raw.starts_with("amqps://")) {
            return Err(invalid("must start with amqp:// or amqps://"));
        }
        // The parser's own message may quote the URI, so it is replaced.
        let uri =
            lapin::uri::AMQPUri::from_str(raw).map_err(|_| invalid("not a valid AMQP URI"))?;
        // A message's properties and headers go in one frame: up to about
        // 10 KB for an event, 4.5 KB for a dead letter. A smaller frame
        // would make the broker close the connection on such a record, on
        // every retry. (0 means no limit.)
        if uri
            .query
            .frame_max
            .is_some_and(|f| f != 0 && f < MIN_FRAME_MAX)
        {
            return Err(invalid("frame_max must be 0 or at least 16384"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Whether the URI asks for TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("amqps://")
    }

    /// The URI with its credentials, for the connection only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_uri(&self.0))
    }
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUri({self})")
    }
}

/// Replaces the password of `scheme://user:password@host...` with `***`.
/// The user info ends at the last `@`, so a password holding `@`, `/`, `?`
/// or `#` is still hidden.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return uri.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &uri[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_never_prints_its_password() {
        let uri = AmqpUri::parse("amqp://guest:s3cret@localhost:5672/%2f").unwrap();
        assert_eq!(uri.to_string(), "amqp://guest:***@localhost:5672/%2f");
        assert!(!format!("{uri:?}").contains("s3cret"));
        assert_eq!(
            redact_uri("amqps://u:p@ss@b-1.mq.eu-west-1.amazonaws.com:5671"),
            "amqps://u:***@b-1.mq.eu-west-1.amazonaws.com:5671"
        );
        assert_eq!(
            redact_uri("amqps://user:pa/ss?#x@host:5671/vhost"),
            "amqps://user:***@host:5671/vhost"
        );
        assert_eq!(redact_uri("amqp://localhost/%2f"), "amqp://localhost/%2f");
        assert_eq!(redact_uri("amqp://user@localhost"), "amqp://user@localhost");
    }

    #[test]
    fn a_bad_uri_is_refused_without_showing_it() {
        for (raw, why) in [
            ("http://u:s3cret@h", "must start with amqp:// or amqps://"),
            ("amqp://u:s3cret@h:port", "not a valid AMQP URI"),
            (
                "amqp://h/%2f?frame_max=4096",
                "frame_max must be 0 or at least 16384",
            ),
        ] {
            let e = AmqpUri::parse(raw).unwrap_err();
            assert_eq!(e.to_string(), format!("{why} (value not shown)"));
        }
    }
}
