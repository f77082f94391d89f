//! The cargo-lambda deploy path against the template: CargoLambda.toml's
//! `[default.*]` must give the function and its event source mapping the
//! template's defaults, setting for setting, so that the two ways to
//! deploy cannot drift. A failure names both places.

use serde_json::{Map, Value};

/// CargoLambda.toml as JSON (Python's tomllib: no TOML crate in the tests).
fn cargo_lambda_toml() -> Value {
    let script = "import json, sys, tomllib\n\
                  print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))";
    super::python_json(script, "CargoLambda.toml", "CargoLambda.toml")
}

/// A value as both files write it: strings as they are, numbers and
/// booleans in their JSON form, lists in JSON.
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// What a template value is with every parameter at its default: `None`
/// when it is absent then (`AWS::NoValue`), `Some(Err(name))` when it
/// names a parameter without a default (given per environment).
fn resolve(t: &Value, v: &Value) -> Option<Result<(Value, String), String>> {
    let Some(obj) = v.as_object().filter(|o| o.len() == 1) else {
        return Some(Ok((v.clone(), "a fixed value".to_owned())));
    };
    if let Some(name) = obj.get("Ref").and_then(Value::as_str) {
        if name == "AWS::NoValue" {
            return None;
        }
        return Some(match t["Parameters"][name].get("Default") {
            Some(d) => Ok((d.clone(), format!("Parameters.{name} Default"))),
            None => Err(name.to_owned()),
        });
    }
    if let Some(args) = obj.get("Fn::If").and_then(Value::as_array) {
        let condition = args[0].as_str().expect("a condition name");
        let branch = if condition_holds(t, condition) {
            &args[1]
        } else {
            &args[2]
        };
        return resolve(t, branch);
    }
    Some(Ok((v.clone(), "a fixed value".to_owned())))
}

/// The template's `Has*` conditions (`!Not [!Equals [!Ref P, ""]]`) with
/// the parameters' defaults.
fn condition_holds(t: &Value, name: &str) -> bool {
    let c = &t["Conditions"][name]["Fn::Not"][0]["Fn::Equals"];
    let param = c[0]["Ref"]
        .as_str()
        .unwrap_or_else(|| panic!("condition {name} is not `!Not [!Equals [!Ref P, \"\"]]`"));
    text(&t["Parameters"][param]["Default"]) != text(&c[1])
}

struct Drift(Vec<String>);

impl Drift {
    /// One setting: the template's `(value, where)` against
    /// CargoLambda.toml's value at `place`.
    fn check(&mut self, template: (Value, String), what: &str, place: &str, ours: Option<&Value>) {
        let (value, origin) = template;
        match ours {
            Some(o) if text(o) == text(&value) => {}
            Some(o) => self.0.push(format!(
                "template.yaml {what} is {} ({origin}) but CargoLambda.toml {place} is {}",
                text(&value),
                text(o)
            )),
            None => self.0.push(format!(
                "template.yaml {what} is {} ({origin}) but CargoLambda.toml has no {place}",
                text(&value)
            )),
        }
    }
}

#[test]
fn cargo_lambda_toml_gives_the_function_and_its_mapping_the_templates_defaults() {
    let t = super::template();
    let c = cargo_lambda_toml();
    let empty = Map::new();
    let deploy = c["default"]["deploy"].as_object().unwrap_or(&empty);
    let env = deploy
        .get("env")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mapping = c["default"]["mapping"].as_object().unwrap_or(&empty);
    let function = &t["Resources"]["ForwarderFunction"]["Properties"];
    let mut drift = Drift(Vec::new());
    let given = |v: &Value| resolve(&t, v).expect("a value").expect("a default");

    // The function.
    for (property, key) in [
        ("MemorySize", "memory"),
        ("Timeout", "timeout"),
        ("Runtime", "runtime"),
    ] {
        drift.check(
            given(&function[property]),
            &format!("ForwarderFunction {property}"),
            &format!("[default.deploy] {key}"),
            deploy.get(key),
        );
    }
    drift.check(
        given(&t["Resources"]["ForwarderLogGroup"]["Properties"]["RetentionInDays"]),
        "ForwarderLogGroup RetentionInDays",
        "[default.deploy] log_retention",
        deploy.get("log_retention"),
    );
    drift.check(
        given(&function["LoggingConfig"]["ApplicationLogLevel"]),
        "ForwarderFunction LoggingConfig.ApplicationLogLevel",
        "[default.deploy.env] RUST_LOG",
        env.get("RUST_LOG"),
    );

    // Every environment variable: with the template's default, absent when
    // the template leaves it out, and given by every environment when the
    // template takes it from a parameter without a default.
    let variables = function["Environment"]["Variables"]
        .as_object()
        .expect("the function's environment");
    for (name, v) in variables {
        match resolve(&t, v) {
            // cargo lambda deploy refuses `KEY=`, and the function reads
            // an empty variable as an unset one: "" is left out.
            Some(Ok((value, _))) if text(&value).is_empty() && env.get(name).is_none() => {}
            Some(Ok(value)) => drift.check(
                value,
                &format!("ForwarderFunction Environment {name}"),
                &format!("[default.deploy.env] {name}"),
                env.get(name),
            ),
            None => {
                if let Some(o) = env.get(name) {
                    drift.0.push(format!(
                        "template.yaml ForwarderFunction Environment leaves {name} out by default \
                         but CargoLambda.toml [default.deploy.env] sets it to {}",
                        text(o)
                    ));
                }
            }
            Some(Err(param)) => {
                for (context, section) in c.as_object().expect("contexts") {
                    if context != "default" && section["deploy"]["env"].get(name).is_none() {
                        drift.0.push(format!(
                            "template.yaml ForwarderFunction Environment {name} comes from \
                             Parameters.{param} (no default) but CargoLambda.toml \
                             [{context}.deploy.env] has no {name}"
                        ));
                    }
                }
            }
        }
    }
    for name in env.keys() {
        if name != "RUST_LOG" && !variables.contains_key(name) {
            drift.0.push(format!(
                "CargoLambda.toml [default.deploy.env] {name} is not in template.yaml \
                 ForwarderFunction Environment"
            ));
        }
    }

    // The event source mapping, under the template's property names.
    let stream =
        t["Resources"]["ForwarderFunction"]["Properties"]["Events"]["Stream"]["Properties"]
            .as_object()
            .expect("the stream event");
    let mut compared = vec!["FilterPattern".to_owned()];
    for (property, v) in stream {
        match property.as_str() {
            // Per environment: the stream and the queue the template makes.
            // MetricsConfig feeds the template's S3 OnFailure alarm; the
            // cargo-lambda path makes no alarms.
            "Stream" | "DestinationConfig" | "MetricsConfig" => {}
            "FilterCriteria" => {
                let pattern = &t["Parameters"]["FilterPattern"];
                drift.check(
                    (
                        pattern["Default"].clone(),
                        "Parameters.FilterPattern Default".into(),
                    ),
                    "Events.Stream FilterCriteria",
                    "[default.mapping] FilterPattern",
                    mapping.get("FilterPattern"),
                );
            }
            _ => {
                compared.push(property.clone());
                drift.check(
                    given(v),
                    &format!("Events.Stream {property}"),
                    &format!("[default.mapping] {property}"),
                    mapping.get(property),
                );
            }
        }
    }
    for key in mapping.keys() {
        if !compared.contains(key) {
            drift.0.push(format!(
                "CargoLambda.toml [default.mapping] {key} is not a setting of template.yaml's \
                 Events.Stream"
            ));
        }
    }
    // The template's OnFailure is an SQS queue: every environment names one.
    for (context, section) in c.as_object().expect("contexts") {
        let queue = section["mapping"]["OnFailure"].as_str().unwrap_or_default();
        if context != "default" && !queue.starts_with("arn:aws:sqs:") {
            drift.0.push(format!(
                "template.yaml Events.Stream DestinationConfig.OnFailure is an SQS queue but \
                 CargoLambda.toml [{context}.mapping] OnFailure is {queue:?}"
            ));
        }
    }

    assert!(
        drift.0.is_empty(),
        "the two deploy paths differ:\n  {}",
        drift.0.join("\n  ")
    );
}
