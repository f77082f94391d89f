//! Configuration read once at cold start from the environment (CONTRACT §2).
//!
//! Every setting is validated here so that a bad deployment fails its init
//! with one line naming the variable, instead of failing record by record.

use std::{fmt, time::Duration};

use rustls::pki_types::{CertificateDer, pem::PemObject};

use crate::routing::{RoutingTemplate, TemplateError};
use crate::secrets::{SecretError, SecretSource};
use crate::uri::AmqpUri;

/// A setting that is missing or cannot be used. The message names the
/// variable and never repeats a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{0} is required but not set")]
    Missing(&'static str),
    #[error("{name} is invalid: {reason}")]
    /// A variable's value cannot be used.
    Invalid {
        /// The variable.
        name: &'static str,
        /// Why, never quoting a secret.
        reason: String,
    },
    /// The secret `AMQP_SECRET_ARN` names cannot be read or used.
    #[error("AMQP_SECRET_ARN cannot be used: {0}")]
    Secret(#[source] SecretError),
    /// `ROUTING_KEY_TEMPLATE` does not parse.
    #[error("ROUTING_KEY_TEMPLATE is invalid: {0}")]
    Template(#[from] TemplateError),
}

/// Extra trust roots for `amqps://`: the CA certificates of `AMQP_CA_FILE`,
/// read and checked once at cold start. They are added to the bundled
/// (webpki) roots and the system's; certificate and host-name verification
/// stay on.
#[derive(Clone)]
pub struct TrustedCa {
    path: String,
    pem: String,
    certificates: usize,
}

impl TrustedCa {
    /// Reads a PEM bundle of one or more CA certificates. A file that is
    /// missing, unreadable, not PEM, or holds a certificate that cannot be a
    /// trust anchor is an error naming `AMQP_CA_FILE` (rustls would skip such
    /// a certificate silently and fail later with a vaguer message).
    pub fn read(path: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            name: "AMQP_CA_FILE",
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
        let pem = String::from_utf8(bytes)
            .map_err(|_| invalid(format!("{path} is not a PEM file (not text)")))?;
        Self::from_pem(path, pem).map_err(invalid)
    }

    fn from_pem(path: &str, pem: String) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let mut certificates = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("{path} is not a valid PEM file ({e})"))?;
            certificates += 1;
            roots.add(cert).map_err(|e| {
                format!("certificate {certificates} in {path} is not a usable CA certificate ({e})")
            })?;
        }
        if certificates == 0 {
            return Err(format!("{path} holds no PEM certificate"));
        }
        Ok(Self {
            path: path.to_owned(),
            pem,
            certificates,
        })
    }

    /// The PEM text, as lapin's TLS configuration takes it.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn certificates(&self) -> usize {
        self.certificates
    }
}

impl fmt::Debug for TrustedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedCa")
            .field("path", &self.path)
            .field("certificates", &self.certificates)
            .finish()
    }
}

/// Where the broker URI comes from: `AMQP_URI`, or a secret read at cold
/// start (and again when the broker refuses the credentials).
#[derive(Debug, Clone)]
pub enum BrokerAddress {
    /// `AMQP_URI`.
    Uri(AmqpUri),
    /// `AMQP_SECRET_ARN`.
    Secret(SecretSource),
}

/// An enum whose variants each have a `MAPPING` name, given once beside
/// the variant, so a new mapping is one line here.
macro_rules! named_kinds {
    ($(#[$meta:meta])* $vis:vis enum $kind:ident { $($(#[$vmeta:meta])* $variant:ident = $name:literal),+ $(,)? }) => {
        $(#[$meta])*
        $vis enum $kind {
            $($(#[$vmeta])* $variant,)+
        }

        impl $kind {
            /// Every variant by its name.
            const NAMES: &[(&str, $kind)] = &[$(($name, $kind::$variant),)+];
        }
    };
}

named_kinds! {
    /// Which mapping turns records into events (CONTRACT §3a / §3b), by its
    /// `MAPPING` name. Each is a file in `src/mapping/`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum MappingKind {
        /// Items are domain events (§3a).
        EventStore = "event-store",
        /// Items are entity state (§3b).
        Change = "change",
    }
}

impl MappingKind {
    /// The `MAPPING` name of every kind.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::NAMES.iter().map(|&(n, _)| n)
    }

    /// The kind `MAPPING` names; else the reason, listing the names.
    pub fn parse(name: &str) -> Result<Self, String> {
        if let Some(&(_, kind)) = Self::NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(kind);
        }
        let names: Vec<&str> = Self::names().collect();
        let expected = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.concat(),
        };
        Err(format!("expected {expected}, got {name:?}"))
    }
}

/// `x-queue-type` of the queues the forwarder declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Quorum,
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// Names of the item attributes the `event-store` mapping reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeNames {
    /// The attribute read as `aggregateId`.
    pub aggregate_id: String,
    /// The attribute read as `version`.
    pub version: String,
    /// The attribute read as `eventType`.
    pub event_type: String,
    /// The attribute read as `eventVersion`.
    pub event_version: String,
    /// The attribute read as `payload`.
    pub payload: String,
    /// The attribute read as `occurredAt`.
    pub occurred_at: String,
    /// The attribute read as `correlationId`.
    pub correlation_id: String,
    /// The attribute read as `causationId`.
    pub causation_id: String,
    /// The attribute read as `eventId`.
    pub event_id: String,
    /// The attribute read as `aggregateType`.
    pub aggregate_type: String,
    /// W3C trace context carried in the item (either mapping).
    pub traceparent: String,
    /// The attribute read as `tracestate`.
    pub tracestate: String,
}

impl AttributeNames {
    /// Each name from its `ATTR_*` variable, else the contract's default.
    fn read(get: impl Fn(&str) -> Option<String>) -> Self {
        let name = |variable: &str, default: &str| {
            get(variable)
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| default.to_owned())
        };
        Self {
            aggregate_id: name("ATTR_AGGREGATE_ID", "aggregateId"),
            version: name("ATTR_VERSION", "version"),
            event_type: name("ATTR_EVENT_TYPE", "eventType"),
            event_version: name("ATTR_EVENT_VERSION", "eventVersion"),
            payload: name("ATTR_PAYLOAD", "payload"),
            occurred_at: name("ATTR_OCCURRED_AT", "occurredAt"),
            correlation_id: name("ATTR_CORRELATION_ID", "correlationId"),
            causation_id: name("ATTR_CAUSATION_ID", "causationId"),
            event_id: name("ATTR_EVENT_ID", "eventId"),
            aggregate_type: name("ATTR_AGGREGATE_TYPE", "aggregateType"),
            traceparent: name("ATTR_TRACEPARENT", "traceparent"),
            tracestate: name("ATTR_TRACESTATE", "tracestate"),
        }
    }
}

impl Default for AttributeNames {
    fn default() -> Self {
        Self::read(|_| None)
    }
}

impl AttributeNames {
    /// The names the function's `ATTR_*` settings give, from the process
    /// environment (so the operations tool reads the same attributes).
    pub fn from_env() -> Self {
        Self::read(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }
}

/// `REPLAY_QUEUES`: the queues a backfill may publish to directly, by name
/// or `*` pattern. Empty allows none, so permission to invoke the function
/// is not permission to write any queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayQueues(Vec<String>);

impl ReplayQueues {
    /// Comma-separated names or patterns (`*` stands for any run of
    /// characters), e.g. `projection-*,audit`.
    pub fn parse(list: &str) -> Result<Self, ConfigError> {
        let mut patterns = Vec::new();
        for pattern in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if pattern.len() > 255 || !pattern.chars().all(queue_name_char) {
                return Err(ConfigError::Invalid {
                    name: "REPLAY_QUEUES",
                    reason: format!(
                        "{pattern:?} is not a queue name or pattern (letters, digits, '-', '_', '.', ':', '*'; at most 255 bytes)"
                    ),
                });
            }
            patterns.push(pattern.to_owned());
        }
        Ok(Self(patterns))
    }

    /// Whether a backfill may publish straight to `queue`.
    pub fn allows(&self, queue: &str) -> bool {
        !queue.is_empty()
            && !queue.starts_with("amq.")
            && queue.chars().all(|c| c != '*' && queue_name_char(c))
            && self.0.iter().any(|p| glob(p, queue))
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

/// `EXCHANGE_ALLOW`: with a templated `EXCHANGE`, the values its
/// placeholders may take, by name or `*` pattern, compared with the value
/// as the exchange name holds it (`{aggregateType}` in lower case). Empty
/// allows every type name. A rule about the record alone, so an operator
/// who limits the broker user's permissions can make the forwarder agree
/// with them: a record whose value is not allowed is dead-lettered, never
/// declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeAllow(Vec<String>);

impl ExchangeAllow {
    /// Comma-separated names or patterns (`*` stands for any run of
    /// characters), e.g. `order,invoice,product-*`.
    pub fn parse(list: &str) -> Result<Self, ConfigError> {
        let mut patterns = Vec::new();
        for pattern in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let valid = pattern.len() <= crate::routing::MAX_TYPE_NAME
                && pattern
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*'));
            if !valid {
                return Err(ConfigError::Invalid {
                    name: "EXCHANGE_ALLOW",
                    reason: format!(
                        "{pattern:?} is not a type name or pattern (letters, digits, '.', '_', '-', '*'; at most 64 bytes)"
                    ),
                });
            }
            patterns.push(pattern.to_owned());
        }
        Ok(Self(patterns))
    }

    /// Whether a placeholder of the exchange template may take `value`.
    pub fn allows(&self, value: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| glob(p, value))
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

fn queue_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '*')
}

/// `*` matches any run of characters (also none); everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// `EXCHANGE`: one exchange, or a template of the routing key's
/// placeholders (`{aggregateType}.events`) that picks one per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    Fixed(String),
    PerEvent(RoutingTemplate),
}

impl Exchange {
    /// The one exchange, when it is not chosen per event.
    pub fn fixed(&self) -> Option<&str> {
        match self {
            Exchange::Fixed(name) => Some(name),
            Exchange::PerEvent(_) => None,
        }
    }
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exchange::Fixed(name) => f.write_str(name),
            Exchange::PerEvent(template) => write!(f, "{template}"),
        }
    }
}

/// How many exchanges of a templated `EXCHANGE` one execution environment
/// remembers as declared by default (`MAX_EXCHANGES`); one used beyond them
/// is declared again, which costs a round trip and never changes an outcome.
pub const DEFAULT_MAX_EXCHANGES: usize = 32;

/// `MAX_MESSAGE_BYTES` by default: Amazon MQ for RabbitMQ 4's
/// `max_message_size` (RabbitMQ's own default is 16 MiB on 4.x).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 524_288;

/// The range of `MAX_MESSAGE_BYTES`: a dead letter's bounded reference must
/// fit the smallest, and RabbitMQ takes no message over 128 MiB.
pub const MESSAGE_BYTES_RANGE: std::ops::RangeInclusive<usize> = 4096..=134_217_728;

/// Lambda gives a function's init 10 s. A broker that does not answer costs
/// the init `CONNECT_TIMEOUT_MS` twice (the secret, then the connection), and
/// the process needs some time of its own.
const INIT_LIMIT_MS: u64 = 10_000;
const INIT_OWN_MS: u64 = 1_000;

/// How records are turned into envelopes and routed; everything the pure
/// conversion needs.
#[derive(Debug, Clone)]
pub struct MappingConfig {
    /// `EXCHANGE`: one exchange, or a template of one per event.
    pub exchange: Exchange,
    /// `DEAD_LETTER_EXCHANGE`: `<EXCHANGE>.dead-letter` for a fixed one.
    pub dead_letter_exchange: String,
    /// `MAX_EXCHANGES`, for a templated `EXCHANGE`: how many declared
    /// exchanges one environment remembers.
    pub max_exchanges: usize,
    /// `EXCHANGE_ALLOW`, for a templated `EXCHANGE`.
    pub exchange_allow: ExchangeAllow,
    /// `MAX_MESSAGE_BYTES`: the largest message body the broker takes.
    pub max_message_bytes: usize,
    /// `MAPPING`.
    pub kind: MappingKind,
    /// `EVENT_SOURCE`, else the table's name.
    pub event_source: Option<String>,
    /// `ENTITY_NAME` (the change mapping), else the table's name in PascalCase.
    pub entity_name: Option<String>,
    /// `ROUTING_KEY_TEMPLATE`.
    pub routing_key_template: RoutingTemplate,
    /// The `ATTR_*` attribute names.
    pub attributes: AttributeNames,
}

impl MappingConfig {
    /// The defaults of CONTRACT §2 for the given exchange.
    pub fn new(exchange: impl Into<String>) -> Self {
        let exchange = exchange.into();
        Self {
            dead_letter_exchange: format!("{exchange}.dead-letter"),
            exchange: Exchange::Fixed(exchange),
            max_exchanges: DEFAULT_MAX_EXCHANGES,
            exchange_allow: ExchangeAllow::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            kind: MappingKind::EventStore,
            event_source: None,
            entity_name: None,
            routing_key_template: RoutingTemplate::default(),
            attributes: AttributeNames::default(),
        }
    }
}

/// The whole configuration of one execution environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AMQP_URI` or `AMQP_SECRET_ARN`, exactly one of them.
    pub broker: BrokerAddress,
    /// `AMQP_CA_FILE`: CA certificates trusted besides the bundled and the
    /// system roots.
    pub ca: Option<TrustedCa>,
    /// `DECLARE_TOPOLOGY`.
    pub declare_topology: bool,
    /// `QUEUE_TYPE`.
    pub queue_type: QueueType,
    /// What the mapping needs.
    pub mapping: MappingConfig,
    /// `CONNECT_TIMEOUT_MS`.
    pub connect_timeout: Duration,
    /// `CONFIRM_TIMEOUT_MS`.
    pub confirm_timeout: Duration,
    /// `DEADLINE_MARGIN_MS`.
    pub deadline_margin: Duration,
    /// `METRICS_NAMESPACE`.
    pub metrics_namespace: String,
    /// `AWS_LAMBDA_FUNCTION_NAME`, used in the connection name and metrics.
    pub function_name: String,
    /// `AWS_LAMBDA_MAX_CONCURRENCY`, set by Lambda Managed Instances: how
    /// many invocations the runtime serves at once (1 when unset or not a
    /// positive number, as lambda_runtime reads it).
    pub max_concurrency: usize,
    /// `REPLAY_QUEUES`.
    pub replay_queues: ReplayQueues,
    /// `TRACEPARENT_FROM_XRAY`: give events without a trace context of
    /// their own the invocation's (from its X-Ray trace header).
    pub trace_from_xray: bool,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process
    /// environment. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let (broker, ca) = broker(&get)?;
        let (exchange, dead_letter_exchange) = exchanges(&get)?;
        let max_exchanges = bounded(
            &get,
            "MAX_EXCHANGES",
            DEFAULT_MAX_EXCHANGES,
            1..=1000,
            "a number",
        )?;
        let exchange_allow = match get("EXCHANGE_ALLOW") {
            None => ExchangeAllow::default(),
            Some(_) if exchange.fixed().is_some() => {
                return Err(ConfigError::Invalid {
                    name: "EXCHANGE_ALLOW",
                    reason: "applies only when EXCHANGE is a template".into(),
                });
            }
            Some(list) => ExchangeAllow::parse(&list)?,
        };
        let max_message_bytes = bounded(
            &get,
            "MAX_MESSAGE_BYTES",
            DEFAULT_MAX_MESSAGE_BYTES,
            MESSAGE_BYTES_RANGE,
            "a number of bytes",
        )?;
        let declare_topology = flag(&get, "DECLARE_TOPOLOGY")?;
        let trace_from_xray = flag(&get, "TRACEPARENT_FROM_XRAY")?;
        let queue_type = match get("QUEUE_TYPE").as_deref() {
            None | Some("quorum") => QueueType::Quorum,
            Some("classic") => QueueType::Classic,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "QUEUE_TYPE",
                    reason: format!("expected quorum or classic, got {other:?}"),
                });
            }
        };
        let kind = match get("MAPPING") {
            None => MappingKind::EventStore,
            Some(name) => MappingKind::parse(&name).map_err(|reason| ConfigError::Invalid {
                name: "MAPPING",
                reason,
            })?,
        };
        let routing_key_template = match get("ROUTING_KEY_TEMPLATE") {
            None => RoutingTemplate::default(),
            Some(t) => RoutingTemplate::parse(&t)?,
        };
        let attributes = AttributeNames::read(get);
        let (event_source, entity_name) = names(&get)?;
        let connect_timeout = connect_timeout(&get)?;
        let deadline_margin = deadline_margin(&get)?;

        Ok(Self {
            broker,
            ca,
            declare_topology,
            queue_type,
            mapping: MappingConfig {
                exchange,
                dead_letter_exchange,
                max_exchanges,
                exchange_allow,
                max_message_bytes,
                kind,
                event_source,
                entity_name,
                routing_key_template,
                attributes,
            },
            connect_timeout,
            confirm_timeout: millis(&get, "CONFIRM_TIMEOUT_MS", 5000)?,
            deadline_margin,
            metrics_namespace: get("METRICS_NAMESPACE").unwrap_or_else(|| "EventForwarder".into()),
            function_name: get("AWS_LAMBDA_FUNCTION_NAME")
                .unwrap_or_else(|| "event-forwarder".into()),
            trace_from_xray,
            max_concurrency: get("AWS_LAMBDA_MAX_CONCURRENCY")
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|&n| n > 0)
                .map_or(1, |n| n as usize),
            replay_queues: get("REPLAY_QUEUES")
                .map(|v| ReplayQueues::parse(&v))
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

/// Where the broker is (`AMQP_URI` or `AMQP_SECRET_ARN`) and the CA it is
/// trusted by (`AMQP_CA_FILE`).
fn broker(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(BrokerAddress, Option<TrustedCa>), ConfigError> {
    // Two sources of credentials would leave it unclear which one is in
    // use after a rotation: exactly one must be set.
    let broker = match (get("AMQP_URI"), get("AMQP_SECRET_ARN")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid {
                name: "AMQP_SECRET_ARN",
                reason: "set either AMQP_URI or AMQP_SECRET_ARN, not both".into(),
            });
        }
        (Some(uri), None) => {
            BrokerAddress::Uri(AmqpUri::parse(&uri).map_err(|e| ConfigError::Invalid {
                name: "AMQP_URI",
                reason: e.to_string(),
            })?)
        }
        (None, Some(arn)) => {
            BrokerAddress::Secret(SecretSource::new(arn.trim(), get).map_err(ConfigError::Secret)?)
        }
        (None, None) => return Err(ConfigError::Missing("AMQP_URI or AMQP_SECRET_ARN")),
    };
    let ca = get("AMQP_CA_FILE")
        .map(|path| TrustedCa::read(path.trim()))
        .transpose()?;
    // A CA file says "TLS was meant": a plain amqp:// URI with it is a
    // mistake that would send the password in clear.
    if let (Some(_), BrokerAddress::Uri(uri)) = (&ca, &broker)
        && !uri.is_tls()
    {
        return Err(ConfigError::Invalid {
            name: "AMQP_CA_FILE",
            reason: "is set but AMQP_URI is amqp:// (plain text); use amqps://".into(),
        });
    }
    Ok((broker, ca))
}

/// `EXCHANGE`, and the dead-letter exchange beside it.
fn exchanges(get: &impl Fn(&str) -> Option<String>) -> Result<(Exchange, String), ConfigError> {
    let exchange = parse_exchange(&get("EXCHANGE").ok_or(ConfigError::Missing("EXCHANGE"))?)?;
    let dead_letter_exchange = match (get("DEAD_LETTER_EXCHANGE"), &exchange) {
        (Some(name), _) => {
            let name = name.trim().to_owned();
            validate_name("DEAD_LETTER_EXCHANGE", &name, 255)?;
            name
        }
        (None, Exchange::Fixed(name)) => format!("{name}.dead-letter"),
        (None, Exchange::PerEvent(_)) => {
            return Err(ConfigError::Invalid {
                name: "DEAD_LETTER_EXCHANGE",
                reason: "is required when EXCHANGE is a template (one dead-letter exchange for all of its exchanges)".into(),
            });
        }
    };
    Ok((exchange, dead_letter_exchange))
}

/// A whole number in `range`, `default` when unset; `what` says in the
/// error what the number counts.
fn bounded(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
    what: &str,
) -> Result<usize, ConfigError> {
    let Some(v) = get(name) else {
        return Ok(default);
    };
    match v.trim().parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid {
            name,
            reason: format!(
                "expected {what} from {} to {}, got {v:?}",
                range.start(),
                range.end()
            ),
        }),
    }
}

/// A switch that is on unless set to false.
fn flag(get: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<bool, ConfigError> {
    match get(name) {
        None => Ok(true),
        Some(v) => parse_bool(&v).ok_or_else(|| ConfigError::Invalid {
            name,
            reason: format!("expected true or false, got {v:?}"),
        }),
    }
}

/// `EVENT_SOURCE` and `ENTITY_NAME`.
fn names(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(Option<String>, Option<String>), ConfigError> {
    let event_source = get("EVENT_SOURCE");
    let entity_name = get("ENTITY_NAME");
    // Both end up in AMQP short strings (app_id, type), at most 255 bytes;
    // the entity also gets a verb appended.
    for (name, value, max) in [
        ("EVENT_SOURCE", &event_source, 255),
        ("ENTITY_NAME", &entity_name, 240),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > max) {
            return Err(ConfigError::Invalid {
                name,
                reason: format!("must be at most {max} bytes"),
            });
        }
    }
    Ok((event_source, entity_name))
}

/// `CONNECT_TIMEOUT_MS`, bounded so that a cold start against a silent
/// broker stays within Lambda's init limit.
fn connect_timeout(get: &impl Fn(&str) -> Option<String>) -> Result<Duration, ConfigError> {
    let connect_timeout = millis(get, "CONNECT_TIMEOUT_MS", 3000)?;
    let most = (INIT_LIMIT_MS - INIT_OWN_MS) / 2;
    if connect_timeout > Duration::from_millis(most) {
        return Err(ConfigError::Invalid {
            name: "CONNECT_TIMEOUT_MS",
            reason: format!(
                "{} ms, spent twice at cold start against a broker that does not answer \
                 (reading the secret, then connecting), would pass Lambda's 10 s init \
                 limit; at most {most}",
                connect_timeout.as_millis()
            ),
        });
    }
    Ok(connect_timeout)
}

/// `DEADLINE_MARGIN_MS`, which must leave some of the function's timeout.
fn deadline_margin(get: &impl Fn(&str) -> Option<String>) -> Result<Duration, ConfigError> {
    let deadline_margin = millis(get, "DEADLINE_MARGIN_MS", 1000)?;
    // The function's timeout, where the environment says it
    // (`AWS_LAMBDA_FUNCTION_TIMEOUT`, seconds: the template sets it, and
    // `sam local` does); otherwise each invocation checks its deadline.
    if let Some(v) = get("AWS_LAMBDA_FUNCTION_TIMEOUT") {
        let timeout = v.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
            name: "AWS_LAMBDA_FUNCTION_TIMEOUT",
            reason: format!("expected the function's timeout in seconds, got {v:?}"),
        })?;
        if deadline_margin >= Duration::from_secs(timeout) {
            return Err(ConfigError::Invalid {
                name: "DEADLINE_MARGIN_MS",
                reason: format!(
                    "{} ms leaves nothing of the function's {timeout} s timeout: no record \
                     would ever be published; keep it well below the timeout",
                    deadline_margin.as_millis()
                ),
            });
        }
    }
    Ok(deadline_margin)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn millis(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    let Some(v) = get(name) else {
        return Ok(Duration::from_millis(default));
    };
    // Lambda runs for at most 15 minutes; a larger bound means nothing.
    const MAX_MS: u64 = 900_000;
    match v.trim().parse::<u64>() {
        Ok(ms) if ms > 0 && ms <= MAX_MS => Ok(Duration::from_millis(ms)),
        _ => Err(ConfigError::Invalid {
            name,
            reason: format!("expected milliseconds from 1 to {MAX_MS}, got {v:?}"),
        }),
    }
}

/// `EXCHANGE`: a name, or a template when it holds a `{placeholder}`.
fn parse_exchange(raw: &str) -> Result<Exchange, ConfigError> {
    let raw = raw.trim();
    if !raw.contains(['{', '}']) {
        // The forwarder appends `.dead-letter` (12 bytes) to a fixed one.
        validate_name("EXCHANGE", raw, 255 - ".dead-letter".len())?;
        return Ok(Exchange::Fixed(raw.to_owned()));
    }
    let template = RoutingTemplate::parse(raw).map_err(|e| ConfigError::Invalid {
        name: "EXCHANGE",
        reason: format!("not a valid template: {e}"),
    })?;
    // One exchange per aggregate has no bound at all.
    if template.uses_partition_key() {
        return Err(ConfigError::Invalid {
            name: "EXCHANGE",
            reason: "{partitionKey} would make an exchange per aggregate, without bound; \
                     use type placeholders ({aggregateType}, {name}, ...) and route by \
                     partitionKey in ROUTING_KEY_TEMPLATE or with a consistent-hash exchange"
                .into(),
        });
    }
    // The literal text must itself be good in a name; the values are
    // checked per event.
    let literal: String = raw.split(['{', '}']).step_by(2).collect();
    if !literal.chars().all(exchange_name_char) {
        return Err(ConfigError::Invalid {
            name: "EXCHANGE",
            reason: format!(
                "may hold only letters, digits, '-', '_', '.', ':' and placeholders (got {raw:?})"
            ),
        });
    }
    Ok(Exchange::PerEvent(template))
}

/// The characters the forwarder takes in an exchange name.
pub fn exchange_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// RabbitMQ names are at most 255 bytes; `max` leaves room for suffixes.
fn validate_name(variable: &'static str, name: &str, max: usize) -> Result<(), ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        name: variable,
        reason: format!("{reason} (got {name:?})"),
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > max {
        return Err(invalid(&format!("must be at most {max} bytes")));
    }
    if !name.chars().all(exchange_name_char) {
        return Err(invalid(
            "may hold only letters, digits, '-', '_', '.' and ':'",
        ));
    }
    if name.starts_with("amq.") {
        return Err(invalid("the amq. prefix is reserved by RabbitMQ"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 2] = [
        ("AMQP_URI", "amqp://guest:s3cret@localhost:5672/%2f"),
        ("EXCHANGE", "product.events"),
    ];

    #[test]
    fn an_exchange_template_needs_a_dead_letter_exchange_and_good_literals() {
        let with = |vars: &[(&'static str, &'static str)]| {
            let mut all = vec![("AMQP_URI", "amqp://localhost")];
            all.extend_from_slice(vars);
            config(&all)
        };
        let fixed = with(&[("EXCHANGE", "product.events")]).unwrap();
        assert_eq!(
            fixed.mapping.exchange,
            Exchange::Fixed("product.events".into())
        );
        assert_eq!(
            fixed.mapping.dead_letter_exchange,
            "product.events.dead-letter"
        );
        assert_eq!(fixed.mapping.max_exchanges, DEFAULT_MAX_EXCHANGES);

        let e = with(&[("EXCHANGE", "{aggregateType}.events")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("DEAD_LETTER_EXCHANGE is invalid: is required"),
            "{e}"
        );
        let c = with(&[
            ("EXCHANGE", "{aggregateType}.events"),
            ("DEAD_LETTER_EXCHANGE", "shop.dead-letter"),
            ("MAX_EXCHANGES", "5"),
        ])
        .unwrap();
        assert!(matches!(c.mapping.exchange, Exchange::PerEvent(_)));
        assert_eq!(c.mapping.exchange.to_string(), "{aggregateType}.events");
        assert_eq!(c.mapping.dead_letter_exchange, "shop.dead-letter");
        assert_eq!(c.mapping.max_exchanges, 5);
        for (bad, variable) in [
            ("{aggregateType} events", "EXCHANGE"),
            ("{nope}.events", "EXCHANGE"),
            ("{aggregateType.events", "EXCHANGE"),
            ("{partitionKey}.events", "EXCHANGE"),
        ] {
            let e = with(&[("EXCHANGE", bad), ("DEAD_LETTER_EXCHANGE", "d")]).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("{variable} is invalid")),
                "{bad}: {e}"
            );
        }
        for bad in ["0", "1001", "many"] {
            let e = with(&[("EXCHANGE", "x"), ("MAX_EXCHANGES", bad)]).unwrap_err();
            assert!(e.to_string().starts_with("MAX_EXCHANGES is invalid"), "{e}");
        }
        let e = with(&[("EXCHANGE", "x"), ("DEAD_LETTER_EXCHANGE", "amq.dl")]).unwrap_err();
        assert!(
            e.to_string().starts_with("DEAD_LETTER_EXCHANGE is invalid"),
            "{e}"
        );
    }

    #[test]
    fn exchange_allow_takes_type_names_and_patterns_for_a_template_only() {
        let with = |vars: &[(&str, &str)]| {
            let mut all = vec![("AMQP_URI", "amqp://localhost")];
            all.extend_from_slice(vars);
            config(&all)
        };
        let template = [
            ("EXCHANGE", "{aggregateType}.events"),
            ("DEAD_LETTER_EXCHANGE", "d"),
        ];
        let mut vars = template.to_vec();
        vars.push(("EXCHANGE_ALLOW", " order , invoice-* "));
        let allow = with(&vars).unwrap().mapping.exchange_allow;
        for yes in ["order", "invoice-", "invoice-eu"] {
            assert!(allow.allows(yes), "{yes}");
        }
        for no in ["orders", "Order", "invoice", "x"] {
            assert!(!allow.allows(no), "{no}");
        }
        let any = with(&template).unwrap().mapping.exchange_allow;
        assert!(any.allows("whatever"));
        for bad in ["a b", "order/1", "é", &"x".repeat(65)] {
            let mut vars = template.to_vec();
            vars.push(("EXCHANGE_ALLOW", bad));
            let e = with(&vars).unwrap_err().to_string();
            assert!(e.starts_with("EXCHANGE_ALLOW is invalid"), "{e}");
        }
        let e = with(&[("EXCHANGE", "x"), ("EXCHANGE_ALLOW", "order")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "EXCHANGE_ALLOW is invalid: applies only when EXCHANGE is a template"
        );
    }

    #[test]
    fn replay_queues_allow_only_what_they_name() {
        let none = config(&BASE).unwrap().replay_queues;
        assert!(!none.allows("anything"));
        let mut vars = BASE.to_vec();
        vars.push(("REPLAY_QUEUES", " projection-* , audit,a*b*c "));
        let q = config(&vars).unwrap().replay_queues;
        for yes in [
            "projection-orders",
            "projection-",
            "audit",
            "abc",
            "a-b-c",
            "axxbyyc",
        ] {
            assert!(q.allows(yes), "{yes}");
        }
        for no in [
            "audit2",
            "xaudit",
            "projection",
            "ab",
            "acb",
            "",
            "projection-*",
            "amq.audit",
        ] {
            assert!(!q.allows(no), "{no}");
        }
        let every = ReplayQueues::parse("*").unwrap();
        assert!(every.allows("x") && !every.allows("amq.gen-1"));
        for bad in ["a b", "q/1", "é"] {
            let mut vars = BASE.to_vec();
            vars.push(("REPLAY_QUEUES", bad));
            let e = config(&vars).unwrap_err().to_string();
            assert!(e.starts_with("REPLAY_QUEUES is invalid"), "{e}");
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = config(&BASE).unwrap();
        assert!(c.declare_topology);
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert_eq!(c.mapping.kind, MappingKind::EventStore);
        assert_eq!(c.mapping.routing_key_template.as_str(), "{name}.v{major}");
        assert_eq!(c.connect_timeout, Duration::from_millis(3000));
        assert_eq!(c.confirm_timeout, Duration::from_millis(5000));
        assert_eq!(c.deadline_margin, Duration::from_millis(1000));
        assert_eq!(c.metrics_namespace, "EventForwarder");
        assert_eq!(c.mapping.attributes.aggregate_id, "aggregateId");
    }

    #[test]
    fn every_setting_is_read() {
        let mut vars = BASE.to_vec();
        vars.extend([
            ("DECLARE_TOPOLOGY", "false"),
            ("QUEUE_TYPE", "classic"),
            ("EVENT_SOURCE", "ProductService"),
            ("MAPPING", "change"),
            ("ENTITY_NAME", "Product"),
            ("ROUTING_KEY_TEMPLATE", "{aggregateType}.{name}"),
            ("ATTR_AGGREGATE_ID", "streamId"),
            ("ATTR_PAYLOAD", "data"),
            ("CONNECT_TIMEOUT_MS", "250"),
            ("CONFIRM_TIMEOUT_MS", "750"),
            ("DEADLINE_MARGIN_MS", "300"),
            ("METRICS_NAMESPACE", "Shop"),
            ("AWS_LAMBDA_FUNCTION_NAME", "shop-forwarder"),
        ]);
        let c = config(&vars).unwrap();
        assert!(!c.declare_topology);
        assert_eq!(c.queue_type, QueueType::Classic);
        assert_eq!(c.mapping.event_source.as_deref(), Some("ProductService"));
        assert_eq!(c.mapping.kind, MappingKind::Change);
        assert_eq!(c.mapping.entity_name.as_deref(), Some("Product"));
        assert_eq!(c.mapping.attributes.aggregate_id, "streamId");
        assert_eq!(c.mapping.attributes.payload, "data");
        assert_eq!(c.mapping.attributes.version, "version");
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.confirm_timeout, Duration::from_millis(750));
        assert_eq!(c.deadline_margin, Duration::from_millis(300));
        assert_eq!(c.metrics_namespace, "Shop");
        assert_eq!(c.function_name, "shop-forwarder");
    }

    #[test]
    fn max_message_bytes_defaults_to_amazon_mqs_limit_and_is_bounded() {
        assert_eq!(config(&BASE).unwrap().mapping.max_message_bytes, 524_288);
        let with = |v: &'static str| {
            let mut vars = BASE.to_vec();
            vars.push(("MAX_MESSAGE_BYTES", v));
            config(&vars)
        };
        assert_eq!(with("4096").unwrap().mapping.max_message_bytes, 4096);
        assert_eq!(
            with("134217728").unwrap().mapping.max_message_bytes,
            134_217_728
        );
        for bad in ["4095", "134217729", "512k", "-1"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("MAX_MESSAGE_BYTES is invalid: expected a number of bytes from 4096"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn settings_that_cannot_work_fail_the_cold_start_with_one_line() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = BASE.to_vec();
            vars.extend_from_slice(extra);
            config(&vars)
        };
        // Twice 5 s against a silent broker is Lambda's whole init limit.
        let e = with(&[("CONNECT_TIMEOUT_MS", "5000")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("CONNECT_TIMEOUT_MS is invalid: 5000 ms"),
            "{e}"
        );
        assert!(e.contains("10 s init limit; at most 4500"), "{e}");
        assert!(with(&[("CONNECT_TIMEOUT_MS", "4500")]).is_ok());

        // A margin that the function's timeout cannot leave room for.
        let e = with(&[
            ("AWS_LAMBDA_FUNCTION_TIMEOUT", "3"),
            ("DEADLINE_MARGIN_MS", "3000"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("DEADLINE_MARGIN_MS is invalid: 3000 ms leaves nothing of the function's 3 s timeout"),
            "{e}"
        );
        assert!(
            with(&[
                ("AWS_LAMBDA_FUNCTION_TIMEOUT", "3"),
                ("DEADLINE_MARGIN_MS", "2999")
            ])
            .is_ok()
        );
        let e = with(&[("AWS_LAMBDA_FUNCTION_TIMEOUT", "thirty")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("AWS_LAMBDA_FUNCTION_TIMEOUT is invalid"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_required_setting_names_the_variable() {
        let err = config(&[("EXCHANGE", "x")]).unwrap_err().to_string();
        assert_eq!(err, "AMQP_URI or AMQP_SECRET_ARN is required but not set");
        let err = config(&[BASE[0]]).unwrap_err().to_string();
        assert_eq!(err, "EXCHANGE is required but not set");
    }

    #[test]
    fn malformed_settings_name_the_variable_and_hide_the_password() {
        let err = config(&[("AMQP_URI", "http://u:s3cret@h"), BASE[1]])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("AMQP_URI is invalid"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = config(&[("AMQP_URI", "amqps://user:pa/ss@host:5671"), BASE[1]])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pa/ss"), "{err}");
        let long_source = "S".repeat(256);
        let small_frames = "amqp://u:s3cret@h/%2f?frame_max=8192";
        let err = config(&[("AMQP_URI", small_frames), BASE[1]])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "AMQP_URI is invalid: frame_max must be 0 or at least 16384 (value not shown)"
        );
        for fine in ["16384", "0", "131072"] {
            let uri = format!("amqp://u:s3cret@h/%2f?frame_max={fine}");
            assert!(config(&[("AMQP_URI", &uri), BASE[1]]).is_ok(), "{fine}");
        }
        for (name, value) in [
            ("DECLARE_TOPOLOGY", "maybe"),
            ("QUEUE_TYPE", "stream"),
            ("MAPPING", "cdc"),
            ("CONFIRM_TIMEOUT_MS", "soon"),
            ("CONNECT_TIMEOUT_MS", "0"),
            ("DEADLINE_MARGIN_MS", "18446744073709551615"),
            ("EVENT_SOURCE", long_source.as_str()),
            ("ROUTING_KEY_TEMPLATE", "{nope}"),
        ] {
            let mut vars = BASE.to_vec();
            vars.push((name, value));
            let err = config(&vars).unwrap_err().to_string();
            assert!(err.starts_with(name), "{name}: {err}");
        }
        let err = config(&[BASE[0], ("EXCHANGE", "bad name")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("EXCHANGE is invalid"), "{err}");
    }

    #[test]
    fn a_ca_file_that_is_missing_or_not_a_certificate_names_the_variable() {
        let dir = std::env::temp_dir().join(format!("ef-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not-pem.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let bad_cert = dir.join("bad-cert.pem");
        std::fs::write(
            &bad_cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let binary = dir.join("binary.pem");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        for path in [
            dir.join("missing.pem"),
            not_pem,
            bad_cert,
            binary,
            dir.clone(),
        ] {
            let path = path.to_string_lossy().into_owned();
            let mut vars = BASE.to_vec();
            vars.push(("AMQP_CA_FILE", path.as_str()));
            let err = config(&vars).unwrap_err().to_string();
            assert!(err.starts_with("AMQP_CA_FILE is invalid"), "{path}: {err}");
            assert!(err.contains(&path), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A self-signed CA certificate (P-256), only parsed here.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBiTCCAS+gAwIBAgIUaFxQu8Odl2041uLOIvg1C/LB1HAwCgYIKoZIzj0EAwIw\nGTEXMBUGA1UEAwwOY29uZmlnIHRlc3QgQ0EwIBcNMjYxMTIzMTYwNjQyWhgPMjEy\nNjEwMzAxNjA2NDJaMBkxFzAVBgNVBAMMDmNvbmZpZyB0ZXN0IENBMFkwEwYHKoZI\nzj0CAQYIKoZIzj0DAQcDQgAEaKbnciTfPE9mv+TUGcmV88a+fYmkZLx6FCNy4KNa\nqisVW1z/nxSV0qT6rm9dglJ15enZZTVggNn0fg3xEKR97aNTMFEwHQYDVR0OBBYE\nFBh1R9fcjJe99m7spaH0jQfWyUokMB8GA1UdIwQYMBaAFBh1R9fcjJe99m7spaH0\njQfWyUokMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhAO3FeDrx\nU6XLAmxZT134TEI4VUBsntXawGvtN0V0wv/EAiAP+AGROZkj+mvxEjhAsO7+Rv9N\nlOwzDzXuWzX8K3aNLg==\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_ca_file_with_a_plain_text_uri_is_refused() {
        let dir = std::env::temp_dir().join(format!("ef-ca-plain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, TEST_CA).unwrap();
        let path = ca.to_string_lossy().into_owned();
        let err = config(&[BASE[0], BASE[1], ("AMQP_CA_FILE", path.as_str())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("AMQP_URI is amqp://"), "{err}");
        let c = config(&[
            ("AMQP_URI", "amqps://guest:s3cret@localhost:5671/%2f"),
            BASE[1],
            ("AMQP_CA_FILE", path.as_str()),
        ])
        .unwrap();
        assert_eq!(c.ca.map(|ca| ca.certificates()), Some(1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_secret_arn_replaces_the_uri_and_both_together_are_an_error() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mq-AbCdEf";
        let c = config(&[
            ("AMQP_SECRET_ARN", arn),
            BASE[1],
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
        ])
        .unwrap();
        match &c.broker {
            BrokerAddress::Secret(s) => assert_eq!(s.arn(), arn),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("wJalrXUtnFEMI"));
        let mut vars = BASE.to_vec();
        vars.push(("AMQP_SECRET_ARN", arn));
        let err = config(&vars).unwrap_err().to_string();
        assert_eq!(
            err,
            "AMQP_SECRET_ARN is invalid: set either AMQP_URI or AMQP_SECRET_ARN, not both"
        );
    }

    #[test]
    fn the_uri_never_prints_its_password() {
        let c = config(&BASE).unwrap();
        let BrokerAddress::Uri(uri) = &c.broker else {
            panic!("AMQP_URI is set");
        };
        assert_eq!(uri.to_string(), "amqp://guest:***@localhost:5672/%2f");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
