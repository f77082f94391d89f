//! template.yaml's `Rules`, evaluated as CloudFormation evaluates them for
//! the parameter values an operator may give. The YAML is read with
//! cfn-lint's decoder (its short forms such as `!Equals` become
//! `Fn::Equals`), which `make validate` installs.

mod cargo_lambda;

use std::{collections::HashMap, process::Command};

use serde_json::Value;

fn template() -> Value {
    let script = "import json, sys\n\
                  from cfnlint.decode import decode_str\n\
                  t, m = decode_str(open(sys.argv[1]).read())\n\
                  assert not m, m\n\
                  print(json.dumps(t, default=str))";
    python_json(
        script,
        "template.yaml",
        "reading template.yaml needs cfn-lint (pip install cfn-lint; make validate installs it)",
    )
}

/// What `script` prints as JSON, given the repository's `file` as its
/// argument (Python reads what the tests have no crate for); `what` heads
/// the panic when it fails.
fn python_json(script: &str, file: &str, what: &str) -> Value {
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args(["-c", script, &path])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{file} as JSON: {e}"))
}

/// A rule function's value: a string, or a condition's true/false.
fn eval(v: &Value, params: &HashMap<String, String>) -> Value {
    let Some((f, args)) = v.as_object().and_then(|o| o.iter().next()) else {
        return v.clone();
    };
    let all = || {
        args.as_array()
            .expect("a list")
            .iter()
            .map(|a| eval(a, params))
            .collect::<Vec<_>>()
    };
    match f.as_str() {
        "Ref" => {
            let name = args.as_str().expect("a parameter name");
            Value::String(
                params
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| panic!("no parameter {name}")),
            )
        }
        "Fn::Equals" => {
            let v = all();
            Value::Bool(v[0] == v[1])
        }
        "Fn::And" => Value::Bool(all().iter().all(|b| b == &Value::Bool(true))),
        "Fn::Or" => Value::Bool(all().iter().any(|b| b == &Value::Bool(true))),
        "Fn::Not" => Value::Bool(all()[0] == Value::Bool(false)),
        other => panic!("a rule function this test does not know: {other}"),
    }
}

/// The descriptions of the assertions that refuse these parameters (the
/// template's defaults, then `given`).
fn refusals(template: &Value, given: &[(&str, &str)]) -> Vec<String> {
    let mut params: HashMap<String, String> = template["Parameters"]
        .as_object()
        .expect("parameters")
        .iter()
        .filter_map(|(k, p)| {
            let d = p.get("Default")?;
            Some((
                k.clone(),
                d.as_str().map_or_else(|| d.to_string(), str::to_owned),
            ))
        })
        .collect();
    for (k, v) in given {
        params.insert((*k).to_owned(), (*v).to_owned());
    }
    let mut out = Vec::new();
    let rules = template["Rules"].as_object().cloned().unwrap_or_default();
    for rule in rules.values() {
        let applies = rule
            .get("RuleCondition")
            .is_none_or(|c| eval(c, &params) == Value::Bool(true));
        if !applies {
            continue;
        }
        for a in rule["Assertions"].as_array().expect("assertions") {
            if eval(&a["Assert"], &params) != Value::Bool(true) {
                out.push(
                    a["AssertDescription"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    }
    out
}

#[test]
fn a_parallelization_factor_above_one_is_refused_for_the_event_store_unless_consumers_reorder() {
    let t = template();
    assert!(refusals(&t, &[]).is_empty(), "the defaults deploy");
    let refused = refusals(&t, &[("ParallelizationFactor", "2")]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("ConsumersReorder=true"),
        "{}",
        refused[0]
    );
    assert!(
        refusals(
            &t,
            &[
                ("ParallelizationFactor", "10"),
                ("ConsumersReorder", "true")
            ]
        )
        .is_empty()
    );
    // The change mapping: one item per entity, kept in order per item.
    assert!(refusals(&t, &[("ParallelizationFactor", "4"), ("Mapping", "change")]).is_empty());
}

#[test]
fn the_parallelization_factor_is_described_as_order_per_item() {
    let t = template();
    let d = t["Parameters"]["ParallelizationFactor"]["Description"]
        .as_str()
        .unwrap_or_default();
    assert!(d.contains("order per item"), "{d}");
    assert!(!d.contains("partition key stay in order"), "{d}");
}

/// SAM refuses `CapacityProviderConfig` beside `VpcConfig` even under
/// opposite conditions, so the function on Managed Instances is a second
/// resource: it must stay the same function in every other respect.
#[test]
fn the_function_on_managed_instances_differs_only_in_where_it_runs() {
    let t = template();
    let standard = &t["Resources"]["ForwarderFunction"];
    let managed = &t["Resources"]["ForwarderFunctionOnInstances"];
    assert_eq!(standard["Condition"], "OnStandardLambda");
    assert_eq!(managed["Condition"], "OnManagedInstances");
    assert_eq!(standard["Metadata"], managed["Metadata"]);
    let without = |f: &Value, keys: &[&str]| {
        let mut p = f["Properties"].clone();
        let p = p.as_object_mut().expect("properties");
        for key in keys {
            assert!(p.remove(*key).is_some(), "{key}");
        }
        Value::Object(p.clone())
    };
    // Managed Instances: the capacity provider places the function in the
    // VPC; a function there has 2 GB at least and runs a published version.
    assert_eq!(
        without(standard, &["VpcConfig", "MemorySize"]),
        without(
            managed,
            &["CapacityProviderConfig", "MemorySize", "AutoPublishAlias"]
        )
    );
    let config = &managed["Properties"]["CapacityProviderConfig"];
    assert_eq!(
        config["PerExecutionEnvironmentMaxConcurrency"]["Ref"],
        "PerEnvironmentConcurrency"
    );
    assert_eq!(
        config["ExecutionEnvironmentMemoryGiBPerVCpu"]["Ref"],
        "MemoryGiBPerVCpu"
    );
}
