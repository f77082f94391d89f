//! A vhost of a test's own on the test broker, set up as a careful
//! operator sets up the forwarder's (docs/operations.md): a broker user
//! allowed only the forwarder's names, and limits such as `max-queues`
//! (Amazon MQ has a per-broker queue limit too). Deleted, with its user,
//! when dropped.

use crate::{amqp_uri, rabbitmqctl, unique};

/// A vhost with a limited user; `guest` may do anything in it, to look.
pub struct Vhost {
    /// The vhost's name.
    pub name: String,
    user: String,
    password: String,
}

impl Vhost {
    /// A new vhost whose user may configure, write and read only names
    /// that match `names` (a regular expression, as RabbitMQ's permissions
    /// take), with at most `max_queues` queues when given.
    pub fn create(names: &str, max_queues: Option<u32>) -> Self {
        let name = unique("vhost");
        let user = format!("{name}.user");
        let password = "vhost-test-password".to_string();
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["add_user", &user, &password]);
        rabbitmqctl(&["set_permissions", "-p", &name, &user, names, names, names]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        if let Some(max) = max_queues {
            let limits = format!("{{\"max-queues\": {max}}}");
            rabbitmqctl(&["set_vhost_limits", "-p", &name, &limits]);
        }
        Self {
            name,
            user,
            password,
        }
    }

    /// The URI of the limited user on this vhost.
    pub fn uri(&self) -> String {
        with_vhost(&amqp_uri(), &self.user, &self.password, &self.name)
    }

    /// The URI of `guest` on this vhost, for a test's own client.
    pub fn guest_uri(&self) -> String {
        with_vhost(&amqp_uri(), "guest", "guest", &self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        // Best effort: a test that failed still cleans up what it can.
        let _ = std::panic::catch_unwind(|| {
            rabbitmqctl(&["delete_vhost", &self.name]);
            rabbitmqctl(&["delete_user", &self.user]);
        });
    }
}

/// `uri` with other credentials and vhost (percent-encoded as a path
/// segment).
fn with_vhost(uri: &str, user: &str, password: &str, vhost: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("amqp", uri));
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "{scheme}://{}:{}@{host}/{}",
        encode(user),
        encode(password),
        encode(vhost)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_gets_the_vhosts_credentials_and_name() {
        assert_eq!(
            with_vhost(
                "amqp://guest:guest@127.0.0.1:5682/%2f",
                "u.1",
                "p w",
                "test.v/1"
            ),
            "amqp://u.1:p%20w@127.0.0.1:5682/test.v%2F1"
        );
    }
}
