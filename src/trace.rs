//! W3C Trace Context for the events (CONTRACT §4): the `traceparent` and
//! `tracestate` an item carries, checked before they become headers, and a
//! `traceparent` made from the invocation's X-Ray trace header otherwise,
//! so that a consumer's span continues the trace. Pure.

/// Why a `traceparent` or `tracestate` value was dropped. Never quotes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("not a W3C traceparent (version-traceid-parentid-flags in lower-case hex)")]
    Traceparent,
    #[error("not a W3C tracestate (at most 32 key=value members, 512 bytes)")]
    Tracestate,
    #[error("a tracestate without a valid traceparent")]
    Orphan,
}

/// Reads a `traceparent` header value (W3C Trace Context, level 1) as the
/// version-00 value the forwarder sends on: `00-<32 hex>-<16 hex>-<2 hex>`,
/// neither id all zeros. A later version is read as W3C says a receiver
/// reads one: its first 55 characters as version 00, the rest ignored
/// (they must start with `-`); version `ff` is invalid. So the header is
/// always exactly 55 bytes, whatever the item holds.
pub fn parse_traceparent(value: &str) -> Result<String, TraceError> {
    let b = value.as_bytes();
    let hex = |s: &[u8]| !s.is_empty() && s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zeros = |s: &[u8]| s.iter().all(|c| *c == b'0');
    let ok = b.len() >= 55
        && hex(&b[0..2])
        && &b[0..2] != b"ff"
        && b[2] == b'-'
        && hex(&b[3..35])
        && !zeros(&b[3..35])
        && b[35] == b'-'
        && hex(&b[36..52])
        && !zeros(&b[36..52])
        && b[52] == b'-'
        && hex(&b[53..55])
        && match &b[0..2] {
            b"00" => b.len() == 55,
            _ => b.len() == 55 || b[55] == b'-',
        };
    if !ok {
        return Err(TraceError::Traceparent);
    }
    // Checked above: the first 55 bytes are ASCII.
    let mut parsed = String::with_capacity(55);
    parsed.push_str("00");
    parsed.push_str(&value[2..55]);
    Ok(parsed)
}

/// Checks a `traceparent` header value: `Ok` when [`parse_traceparent`]
/// reads it.
pub fn check_traceparent(value: &str) -> Result<(), TraceError> {
    parse_traceparent(value).map(drop)
}

/// Checks a `tracestate` header value: comma-separated `key=value` list
/// members (at most 32), keys of lower-case letters, digits and `_-*/`
/// (optionally `tenant@system`), values of printable ASCII without `,` or
/// `=`, at most 512 bytes in all.
pub fn check_tracestate(value: &str) -> Result<(), TraceError> {
    if value.len() > 512 {
        return Err(TraceError::Tracestate);
    }
    let mut members = 0;
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        members += 1;
        let Some((key, val)) = member.split_once('=') else {
            return Err(TraceError::Tracestate);
        };
        if members > 32 || !valid_key(key) || !valid_value(val) {
            return Err(TraceError::Tracestate);
        }
    }
    Ok(())
}

fn valid_key(key: &str) -> bool {
    let part = |s: &str, max: usize, first_digit: bool| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || (first_digit && c.is_ascii_digit()))
            && s.len() <= max
            && chars.all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '*' | '/')
            })
    };
    match key.split_once('@') {
        None => part(key, 256, false),
        Some((tenant, system)) => part(tenant, 241, true) && part(system, 14, false),
    }
}

fn valid_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

/// The `traceparent` of an X-Ray trace header (`Lambda-Runtime-Trace-Id`):
/// `Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=<0|1>` gives
/// `00-<8 hex><24 hex>-<16 hex>-<01|00>`. `None` when it has no root or
/// parent in that form.
pub fn from_xray(header: &str) -> Option<String> {
    let mut root = None;
    let mut parent = None;
    let mut sampled = false;
    for field in header.split(';') {
        match field.trim().split_once('=') {
            Some(("Root", v)) => root = Some(v),
            Some(("Parent", v)) => parent = Some(v),
            Some(("Sampled", v)) => sampled = v == "1",
            _ => {}
        }
    }
    let root = root?.strip_prefix("1-")?;
    let (time, id) = root.split_once('-')?;
    let parent = parent?;
    let traceparent = format!(
        "00-{}{}-{}-{}",
        time.to_ascii_lowercase(),
        id.to_ascii_lowercase(),
        parent.to_ascii_lowercase(),
        if sampled { "01" } else { "00" }
    );
    (time.len() == 8 && id.len() == 24 && check_traceparent(&traceparent).is_ok())
        .then_some(traceparent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparents_follow_the_w3c_format() {
        assert_eq!(check_traceparent(GOOD), Ok(()));
        assert_eq!(
            check_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            Ok(())
        );
        assert_eq!(parse_traceparent(GOOD).as_deref(), Ok(GOOD));
        for bad in [
            "",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(
                check_traceparent(bad),
                Err(TraceError::Traceparent),
                "{bad}"
            );
        }
    }

    #[test]
    fn tracestates_are_lists_of_vendor_entries() {
        for good in [
            "rojo=00f067aa0ba902b7",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            " congo=t61rcWkgMzE , rojo=1 ",
            "tenant1@vendor=x,a-b_c*/d=v w",
            "",
        ] {
            assert_eq!(check_tracestate(good), Ok(()), "{good:?}");
        }
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for bad in [
            "Rojo=1".to_string(),
            "rojo".into(),
            "rojo=a=b".into(),
            "rojo=tab\there".into(),
            "=no-key".into(),
            many,
            format!("k={}", "v".repeat(600)),
        ] {
            assert_eq!(
                check_tracestate(&bad),
                Err(TraceError::Tracestate),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_later_version_is_read_as_its_first_55_characters_as_version_00() {
        // Found by an outside review: version 01 followed by 150 KB became
        // one header, larger than any frame the broker takes (#28).
        let long = format!(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
            "x".repeat(150 * 1024)
        );
        assert_eq!(
            parse_traceparent(&long).as_deref(),
            Ok("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(
            parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").as_deref(),
            Ok("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
        );
        // Still invalid after the first 55: no dash after them, a short
        // value, a multi-byte character where a dash belongs.
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x".to_string(),
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1".to_string(),
            format!(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é{}",
                "-"
            ),
        ] {
            assert_eq!(
                parse_traceparent(&bad),
                Err(TraceError::Traceparent),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_xray_header_gives_the_traceparent_of_its_root_and_parent() {
        assert_eq!(
            from_xray("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
                .as_deref(),
            Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01")
        );
        assert_eq!(
            from_xray("Sampled=0;Lineage=a:1;Parent=53995C3F42CD8AD8;Root=1-5759E988-BD862E3FE1BE46A994272793")
                .as_deref(),
            Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-00")
        );
        for none in [
            "Root=1-0-0;Sampled=0",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a99427279z;Parent=53995c3f42cd8ad8",
            "",
        ] {
            assert_eq!(from_xray(none), None, "{none}");
        }
    }
}
