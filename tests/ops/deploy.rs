//! Both deploy paths run against moto, and what they made read back and
//! held to template.yaml's defaults: `make deploy-cargo-lambda`
//! (scripts/deploy-cargo-lambda.sh: `cargo lambda deploy`, then
//! `forwarder-ops deploy-mapping`) and the SAM template, transformed to
//! plain CloudFormation locally with the SAM CLI's own translator and
//! created as a stack by moto's CloudFormation.
//!
//! Each test deploys onto a table of its own that nothing writes to: a moto
//! event source mapping invokes its function (through Docker) on every
//! write to its table and clears that table's shard, whether the mapping
//! is enabled or not (moto 5.2: `StreamShard.add` ignores `Enabled`). On a
//! table no one writes, it never fires.

use std::{path::Path, process::Command};

use serde_json::{Value, json};
use testkit::{
    cargo_bin,
    local::{AWS_ENV, Table, moto_url, sdk_config, table_name},
    unique,
};

/// This package's directory (its template, CargoLambda.toml, scripts).
fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// template.yaml as JSON (cfn-lint's decoder, as tests/integration/template.rs).
fn template() -> Value {
    let script = "import json, sys\n\
                  from cfnlint.decode import decode_str\n\
                  t, m = decode_str(open(sys.argv[1]).read())\n\
                  assert not m, m\n\
                  print(json.dumps(t, default=str))";
    python(
        "python3",
        script,
        &[&root().join("template.yaml").to_string_lossy()],
    )
}

/// Runs a Python script against moto; its stdout as JSON.
fn python(python: &str, script: &str, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .envs(AWS_ENV)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// A value as text: strings as they are, numbers and booleans in JSON.
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// A parameter's default, as text.
fn default(t: &Value, param: &str) -> String {
    text(&t["Parameters"][param]["Default"])
}

/// The environment the template gives the function with every parameter
/// at its default and `given` for those without one. Variables the
/// template leaves out by default (`!If [Has.., .., AWS::NoValue]`) and
/// empty ones (the function reads an empty variable as unset) are absent.
fn template_environment(t: &Value, given: &[(&str, &str)]) -> Vec<(String, String)> {
    let vars = t["Resources"]["ForwarderFunction"]["Properties"]["Environment"]["Variables"]
        .as_object()
        .expect("the function's environment");
    let mut out = Vec::new();
    for (name, v) in vars {
        let value = match v.get("Ref").and_then(Value::as_str) {
            Some(param) => match t["Parameters"][param].get("Default") {
                Some(d) => text(d),
                None => given
                    .iter()
                    .find(|(p, _)| *p == param)
                    .map(|(_, v)| (*v).to_owned())
                    .unwrap_or_else(|| panic!("give {param}")),
            },
            None if v.get("Fn::If").is_some() => continue,
            None => text(v),
        };
        if !value.is_empty() {
            out.push((name.clone(), value));
        }
    }
    out.sort();
    out
}

/// The template's event source settings with every parameter at its
/// default, in GetEventSourceMapping's terms.
fn template_mapping(t: &Value) -> Value {
    let stream =
        &t["Resources"]["ForwarderFunction"]["Properties"]["Events"]["Stream"]["Properties"];
    assert!(
        default(t, "FilterPattern").is_empty(),
        "no filter by default"
    );
    json!({
        "StartingPosition": stream["StartingPosition"],
        "BatchSize": default(t, "BatchSize"),
        "MaximumBatchingWindowInSeconds": default(t, "MaximumBatchingWindowInSeconds"),
        "ParallelizationFactor": default(t, "ParallelizationFactor"),
        "FunctionResponseTypes": stream["FunctionResponseTypes"],
        "BisectBatchOnFunctionError": stream["BisectBatchOnFunctionError"],
        "MaximumRetryAttempts": default(t, "MaximumRetryAttempts"),
        "MaximumRecordAgeInSeconds": default(t, "MaximumRecordAgeInSeconds"),
        "FilterCriteria": null,
    })
}

/// Every setting of `template_mapping` compared with a mapping read back
/// (as JSON, the API's names); the differences.
fn mapping_differences(wanted: &Value, got: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (key, want) in wanted.as_object().expect("settings") {
        let have = &got[key];
        let same = match want {
            Value::Null => {
                have.is_null() || have["Filters"].as_array().is_some_and(|f| f.is_empty())
            }
            Value::Array(_) => want == have,
            _ => text(want) == text(have),
        };
        if !same {
            out.push(format!("{key}: template {want}, deployed {have}"));
        }
    }
    out
}

/// An event-store table with a stream and an SQS queue, and the ARNs the
/// deploy paths take.
async fn own_table(prefix: &str) -> (Table, String, String) {
    let table = Table::event_store(&table_name(prefix)).await;
    let stream_arn = testkit::local::stream_arn(&table).await;
    let queue_arn = table
        .sqs
        .get_queue_attributes()
        .queue_url(&table.on_failure)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .expect("the queue's ARN")
        .clone();
    (table, stream_arn, queue_arn)
}

/// A stand-in for the arm64 artefact: an ELF header for AArch64, from
/// which `cargo lambda deploy` takes the function's architecture. moto
/// stores the code and never runs it (the artefact itself is run by
/// `make test-artefact`), so building the release artefact here would only
/// cost CI minutes.
fn arm64_stand_in(dir: &Path) -> std::path::PathBuf {
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&[0; 24]); // entry, phoff, shoff
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 0, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    let path = dir.join("bootstrap");
    std::fs::write(&path, elf).expect("the stand-in binary");
    path
}

/// `scripts/deploy-cargo-lambda.sh local` against moto; the deploy-mapping
/// summary's fields.
fn deploy_cargo_lambda(
    config: &Path,
    function: &str,
    binary: &Path,
    stream_arn: &str,
    queue_arn: &str,
) -> std::collections::HashMap<String, String> {
    let out = Command::new("bash")
        .arg(root().join("scripts/deploy-cargo-lambda.sh"))
        .arg("local")
        .current_dir(root())
        .envs(AWS_ENV)
        .env("ENDPOINT_URL", moto_url())
        .env("CONFIG", config)
        .env("FUNCTION_NAME", function)
        .env("BINARY_PATH", binary)
        .env("STREAM_ARN", stream_arn)
        .env("ON_FAILURE", queue_arn)
        .env("FORWARDER_OPS", cargo_bin("forwarder-ops"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("deploy-mapping:"))
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The role CargoLambda.toml's `local` context names: this path expects it
/// to exist (the template would make it).
fn local_role() {
    let script = "import boto3, json, sys\n\
        iam = boto3.client('iam', endpoint_url=sys.argv[1])\n\
        try:\n    iam.get_role(RoleName='event-forwarder-local')\n\
        except iam.exceptions.NoSuchEntityException:\n    iam.create_role(RoleName='event-forwarder-local', \
        AssumeRolePolicyDocument=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', \
        'Principal': {'Service': 'lambda.amazonaws.com'}, 'Action': 'sts:AssumeRole'}]}))\n\
        print('{}')";
    python("python3", script, &[&moto_url()]);
}

/// GetEventSourceMapping through the AWS SDK for Rust, as JSON in the API's
/// names.
async fn read_mapping(lambda: &aws_sdk_lambda::Client, uuid: &str) -> Value {
    let m = lambda
        .get_event_source_mapping()
        .uuid(uuid)
        .send()
        .await
        .expect("GetEventSourceMapping");
    json!({
        "EventSourceArn": m.event_source_arn(),
        "FunctionArn": m.function_arn(),
        "StartingPosition": m.starting_position().map(|p| p.as_str().to_owned()),
        "BatchSize": m.batch_size(),
        "MaximumBatchingWindowInSeconds": m.maximum_batching_window_in_seconds(),
        "ParallelizationFactor": m.parallelization_factor(),
        "FunctionResponseTypes": m.function_response_types().iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "BisectBatchOnFunctionError": m.bisect_batch_on_function_error(),
        "MaximumRetryAttempts": m.maximum_retry_attempts(),
        "MaximumRecordAgeInSeconds": m.maximum_record_age_in_seconds(),
        "FilterCriteria": m.filter_criteria().map(|f| json!({"Filters": f.filters().iter().map(|f| f.pattern()).collect::<Vec<_>>()})),
        "OnFailure": m.destination_config().and_then(|d| d.on_failure()).and_then(|o| o.destination()),
        "State": m.state(),
    })
}

#[tokio::test]
async fn cargo_lambda_deploys_the_function_and_its_mapping_with_the_templates_settings_then_updates_a_changed_one()
 {
    let t = template();
    let (table, stream_arn, queue_arn) = own_table("deploy-cl").await;
    local_role();
    let dir = std::env::temp_dir().join(unique("deploy-cl"));
    std::fs::create_dir_all(&dir).expect("a directory");
    let binary = arm64_stand_in(&dir);
    let config = root().join("CargoLambda.toml");
    let function = table.name.clone();
    let lambda = aws_sdk_lambda::Client::new(&sdk_config().await);

    let first = deploy_cargo_lambda(&config, &function, &binary, &stream_arn, &queue_arn);
    assert_eq!(first["action"], "created", "{first:?}");
    let uuid = first["uuid"].clone();

    // The function, as the template would make it.
    let f = lambda
        .get_function_configuration()
        .function_name(&function)
        .send()
        .await
        .expect("GetFunctionConfiguration");
    let props = &t["Resources"]["ForwarderFunction"]["Properties"];
    assert_eq!(f.runtime().map(|r| r.as_str()), props["Runtime"].as_str());
    assert_eq!(
        f.architectures()
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>(),
        props["Architectures"]
            .as_array()
            .expect("architectures")
            .iter()
            .map(text)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        f.memory_size().map(|m| m.to_string()),
        Some(default(&t, "MemorySize"))
    );
    assert_eq!(
        f.timeout().map(|m| m.to_string()),
        Some(default(&t, "Timeout"))
    );
    assert_eq!(
        f.role(),
        Some("arn:aws:iam::123456789012:role/event-forwarder-local")
    );
    let mut env: Vec<(String, String)> = f
        .environment()
        .and_then(|e| e.variables())
        .expect("an environment")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort();
    let mut wanted = template_environment(
        &t,
        &[
            ("Exchange", "demo.events"),
            (
                "BrokerSecretArn",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:event-forwarder/local/broker-AbCdEf",
            ),
        ],
    );
    // LoggingConfig's ApplicationLogLevel in the template.
    wanted.push(("RUST_LOG".into(), default(&t, "LogLevel")));
    wanted.sort();
    assert_eq!(env, wanted);

    // The mapping: every setting the template gives, on this stream, to
    // this queue.
    let m = read_mapping(&lambda, &uuid).await;
    let differences = mapping_differences(&template_mapping(&t), &m);
    assert!(differences.is_empty(), "{differences:#?}");
    assert_eq!(m["EventSourceArn"], stream_arn.as_str());
    assert_eq!(m["OnFailure"], queue_arn.as_str());
    assert!(
        text(&m["FunctionArn"]).ends_with(&format!(":function:{function}")),
        "{m}"
    );

    // Again, unchanged: nothing is made twice.
    let second = deploy_cargo_lambda(&config, &function, &binary, &stream_arn, &queue_arn);
    assert_eq!(second["action"], "unchanged", "{second:?}");
    assert_eq!(second["uuid"], uuid);

    // A changed setting is updated in place.
    let changed = std::fs::read_to_string(&config)
        .expect("CargoLambda.toml")
        .replace("[local.deploy]\n", "[local.deploy]\nmemory = 256\n")
        .replace("[local.mapping]\n", "[local.mapping]\nBatchSize = 100\n");
    let changed_config = dir.join("CargoLambda.toml");
    std::fs::write(&changed_config, changed).expect("a changed config");
    let third = deploy_cargo_lambda(&changed_config, &function, &binary, &stream_arn, &queue_arn);
    assert_eq!(third["action"], "updated", "{third:?}");
    assert_eq!(third["uuid"], uuid);
    let m = read_mapping(&lambda, &uuid).await;
    assert_eq!(m["BatchSize"], 100);
    let mut unchanged = template_mapping(&t);
    unchanged["BatchSize"] = json!(100);
    assert!(mapping_differences(&unchanged, &m).is_empty(), "{m}");
    let f = lambda
        .get_function_configuration()
        .function_name(&function)
        .send()
        .await
        .expect("GetFunctionConfiguration");
    assert_eq!(f.memory_size(), Some(256));
    let all = lambda
        .list_event_source_mappings()
        .event_source_arn(&stream_arn)
        .send()
        .await
        .expect("ListEventSourceMappings");
    assert_eq!(all.event_source_mappings().len(), 1, "one mapping, updated");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The broker secret the SAM stacks name.
const SAM_SECRET: &str =
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:event-forwarder/sam-AbCdEf";

/// template.yaml transformed by the SAM CLI's translator and created as a
/// stack in moto (tests/ops/support/sam_stack.py) on `stream_arn`, with
/// `extra` parameters; what the script prints.
fn sam_stack(stack: &str, stream_arn: &str, extra: &[(&str, &str)]) -> Value {
    let sam = Command::new("bash")
        .arg(root().join("scripts/deploy-tools.sh"))
        .arg("sam-path")
        .output()
        .expect("bash runs");
    let sam_python = Path::new(String::from_utf8_lossy(&sam.stdout).trim())
        .with_file_name("python")
        .to_string_lossy()
        .into_owned();
    assert!(
        Path::new(&sam_python).exists(),
        "the SAM CLI's virtualenv (scripts/deploy-tools.sh sam; make test runs it)"
    );
    let mut params = json!({
        "StreamArn": stream_arn,
        "Exchange": "demo.events",
        "BrokerSecretArn": SAM_SECRET,
        "SubnetIds": "subnet-0aaaaaaaaaaaaaaaa,subnet-0bbbbbbbbbbbbbbbb",
        "SecurityGroupIds": "sg-0cccccccccccccccc",
    });
    for (k, v) in extra {
        params[*k] = json!(v);
    }
    let script = std::fs::read_to_string(root().join("tests/ops/support/sam_stack.py"))
        .expect("sam_stack.py");
    python(
        &sam_python,
        &script,
        &[
            &root().join("template.yaml").to_string_lossy(),
            &moto_url(),
            stack,
            &params.to_string(),
        ],
    )
}

/// The role's policy statements as moto gives them back (a statement an
/// `!If` left out is absent), by Sid.
fn statements(out: &Value) -> Vec<Value> {
    out["readback"]["role_policy"]["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .filter(|s| !s.is_null())
        .cloned()
        .collect()
}

#[tokio::test]
async fn the_sam_template_creates_a_stack_with_the_function_its_mapping_and_its_destination() {
    let t = template();
    let (_table, stream_arn, _) = own_table("deploy-sam").await;
    let stack = table_name("deploy-sam");
    let secret = SAM_SECRET;
    let out = sam_stack(&stack, &stream_arn, &[]);
    assert_eq!(out["status"], "CREATE_COMPLETE", "{}", out["failed"]);
    for logical in [
        "ForwarderFunction",
        "ForwarderFunctionStream",
        "OnFailureQueue",
        "ForwarderRole",
        "ForwarderLogGroup",
    ] {
        assert_eq!(
            out["resources"][logical]["status"], "CREATE_COMPLETE",
            "{logical}: {}",
            out["resources"]
        );
    }
    let outputs = &out["outputs"];
    let back = &out["readback"];

    // The function and its environment.
    let f = &back["function"];
    let props = &t["Resources"]["ForwarderFunction"]["Properties"];
    assert_eq!(f["Runtime"], props["Runtime"]);
    assert_eq!(text(&f["MemorySize"]), default(&t, "MemorySize"));
    assert_eq!(text(&f["Timeout"]), default(&t, "Timeout"));
    assert_eq!(f["Role"], outputs["RoleArn"]);
    assert_eq!(f["FunctionArn"], outputs["FunctionArn"]);
    assert_eq!(
        f["VpcConfig"]["SubnetIds"],
        json!(["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"])
    );
    assert_eq!(
        f["VpcConfig"]["SecurityGroupIds"],
        json!(["sg-0cccccccccccccccc"])
    );
    let mut env: Vec<(String, String)> = f["Environment"]["Variables"]
        .as_object()
        .expect("an environment")
        .iter()
        .map(|(k, v)| (k.clone(), text(v)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    env.sort();
    assert_eq!(
        env,
        template_environment(
            &t,
            &[("Exchange", "demo.events"), ("BrokerSecretArn", secret)]
        )
    );
    // moto 5.2 keeps neither Architectures nor LoggingConfig of an
    // AWS::Lambda::Function (it reports x86_64, no LoggingConfig): checked
    // in the template CloudFormation was given instead.
    let rendered = &out["rendered"]["Resources"]["ForwarderFunction"]["Properties"];
    assert_eq!(rendered["Architectures"], json!(["arm64"]));
    assert_eq!(rendered["LoggingConfig"]["LogFormat"], "JSON");
    assert_eq!(
        rendered["LoggingConfig"]["ApplicationLogLevel"],
        json!({"Ref": "LogLevel"})
    );
    assert_eq!(
        rendered["LoggingConfig"]["LogGroup"],
        json!({"Ref": "ForwarderLogGroup"})
    );

    // The mapping and its destination.
    let m = &back["mapping"];
    let differences = mapping_differences(&template_mapping(&t), m);
    assert!(differences.is_empty(), "{differences:#?}");
    assert_eq!(m["EventSourceArn"], stream_arn.as_str());
    assert_eq!(m["FunctionArn"], outputs["FunctionArn"]);
    assert_eq!(m["UUID"], outputs["EventSourceMappingId"]);
    assert_eq!(
        m["DestinationConfig"]["OnFailure"]["Destination"],
        outputs["OnFailureQueueArn"]
    );
    assert_eq!(back["queue"]["QueueArn"], outputs["OnFailureQueueArn"]);
    assert_eq!(back["queue"]["MessageRetentionPeriod"], "1209600");
    assert_eq!(back["queue"]["SqsManagedSseEnabled"], "true");

    // The log group, and the role's one policy, scoped to what the stack
    // made.
    assert_eq!(
        back["log_groups"][0]["logGroupName"],
        format!("/aws/lambda/{stack}").as_str()
    );
    assert_eq!(
        text(&back["log_groups"][0]["retentionInDays"]),
        default(&t, "LogRetentionInDays")
    );
    let statements = statements(&out);
    let resource = |sid: &str| {
        statements
            .iter()
            .find(|s| s["Sid"] == sid)
            .map(|s| s["Resource"].clone())
            .unwrap_or_else(|| panic!("no {sid} in {statements:?}"))
    };
    assert_eq!(resource("ReadTheStream"), stream_arn.as_str());
    assert_eq!(resource("ReadTheBrokerSecret"), secret);
    assert_eq!(
        resource("SendToOnFailureQueue"),
        outputs["OnFailureQueueArn"]
    );
    assert!(
        !statements
            .iter()
            .any(|s| text(&s["Action"]).contains("s3:")),
        "no S3 permission with the SQS destination: {statements:?}"
    );
    assert!(out["outputs"]["OnFailureBucketName"].is_null());
    assert!(out["resources"]["OnFailureBucket"].is_null());

    // moto 5.2 accepts the alarms but keeps none (DescribeAlarms
    // finds none, the stack lists them without ids): their metrics and
    // dimensions are checked in the rendered template.
    let alarms: Vec<(String, Value)> = out["rendered"]["Resources"]
        .as_object()
        .expect("resources")
        .values()
        .filter(|r| r["Type"] == "AWS::CloudWatch::Alarm")
        .map(|r| {
            (
                text(&r["Properties"]["MetricName"]),
                r["Properties"]["Dimensions"][0]["Value"].clone(),
            )
        })
        .collect();
    // The function's alarms name whichever function the stack made: the
    // standard one, or the one on Lambda Managed Instances.
    let function = json!({"Fn::If": [
        "OnStandardLambda",
        {"Ref": "ForwarderFunction"},
        {"Ref": "ForwarderFunctionOnInstances"},
    ]});
    for (metric, dimension) in [
        ("IteratorAge", function.clone()),
        ("RecordsFailed", function.clone()),
        ("RecordsDeadLettered", function.clone()),
        ("Errors", function.clone()),
        ("TopologyErrors", function.clone()),
        ("ConnectionLimitReached", function.clone()),
        (
            "ApproximateNumberOfMessagesVisible",
            json!({"Fn::GetAtt": ["OnFailureQueue", "QueueName"]}),
        ),
        ("DestinationDeliveryFailures", function.clone()),
        (
            "OnFailureDestinationDeliveredEventCount",
            json!({"Fn::If": [
                "OnStandardLambda",
                {"Ref": "ForwarderFunctionStream"},
                {"Ref": "ForwarderFunctionOnInstancesStream"},
            ]}),
        ),
    ] {
        assert!(
            alarms.iter().any(|(m, d)| m == metric && *d == dimension),
            "{metric} on {dimension} in {alarms:?}"
        );
    }
    assert_eq!(alarms.len(), 9, "{alarms:?}");
}

/// OnFailureDestination=s3 (issue 29): the stack makes a bucket with every
/// protection, points the mapping at it, and gives the role exactly what
/// the Lambda developer guide lists for an S3 destination (s3:PutObject on
/// its objects, s3:ListBucket on it) and no sqs:SendMessage; the rendered
/// template CloudFormation was given is read for what moto does not keep.
#[tokio::test]
async fn the_sam_template_with_an_s3_destination_makes_a_protected_bucket_and_grants_only_what_the_mapping_needs()
 {
    let (_table, stream_arn, _) = own_table("deploy-s3").await;
    let stack = table_name("deploy-s3");
    let out = sam_stack(
        &stack,
        &stream_arn,
        &[
            ("OnFailureDestination", "s3"),
            ("OnFailureRetentionDays", "90"),
        ],
    );
    assert_eq!(out["status"], "CREATE_COMPLETE", "{}", out["failed"]);
    let bucket = text(&out["outputs"]["OnFailureBucketName"]);
    assert!(!bucket.is_empty(), "{}", out["outputs"]);
    assert_eq!(out["resources"]["OnFailureBucket"]["id"], bucket.as_str());
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    assert_eq!(
        out["outputs"]["OnFailureDestinationArn"],
        bucket_arn.as_str()
    );
    assert_eq!(
        out["readback"]["mapping"]["DestinationConfig"]["OnFailure"]["Destination"],
        bucket_arn.as_str()
    );

    // The rendered bucket: encrypted, private, versioned, expiring, TLS only.
    let rendered = &out["rendered"]["Resources"];
    let b = &rendered["OnFailureBucket"];
    assert_eq!(b["Condition"], "CreatesOnFailureBucket");
    assert_eq!(b["DeletionPolicy"], "Retain");
    let p = &b["Properties"];
    assert_eq!(
        p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
            ["SSEAlgorithm"],
        "AES256"
    );
    for setting in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(
            p["PublicAccessBlockConfiguration"][setting], true,
            "{setting}"
        );
    }
    assert_eq!(p["VersioningConfiguration"]["Status"], "Enabled");
    let rule = &p["LifecycleConfiguration"]["Rules"][0];
    assert_eq!(rule["Status"], "Enabled");
    assert_eq!(
        rule["ExpirationInDays"],
        json!({"Ref": "OnFailureRetentionDays"})
    );
    assert_eq!(
        rule["NoncurrentVersionExpiration"]["NoncurrentDays"],
        json!({"Ref": "OnFailureRetentionDays"})
    );
    let policy = &rendered["OnFailureBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
    assert_eq!(policy["Effect"], "Deny");
    assert_eq!(policy["Action"], "s3:*");
    assert_eq!(policy["Principal"], "*");
    assert_eq!(policy["Condition"]["Bool"]["aws:SecureTransport"], "false");

    // Read back from moto's S3: moto 5 keeps the bucket's encryption from
    // the stack, not its versioning, lifecycle, public access block or
    // policy (measured: NoSuch... for each), which the rendered template
    // above holds instead.
    let back = &out["readback"]["bucket"];
    assert_eq!(
        back["encryption"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"],
        "AES256",
        "{back}"
    );

    // The role: S3 for the destination, exactly, and no SQS.
    let statements = statements(&out);
    let s3: Vec<(String, Value)> = statements
        .iter()
        .filter(|s| {
            let a = text(&s["Action"]);
            a.starts_with("s3:") || a.starts_with("sqs:") || a.starts_with("kms:Generate")
        })
        .map(|s| (text(&s["Action"]), s["Resource"].clone()))
        .collect();
    assert_eq!(
        s3,
        [
            ("s3:PutObject".to_owned(), json!(format!("{bucket_arn}/*"))),
            ("s3:ListBucket".to_owned(), json!(bucket_arn)),
        ],
        "{statements:?}"
    );
}

/// OnFailureBucketName names an existing bucket: the stack makes none and
/// the role and the mapping point at that one; with its KMS key named, the
/// role may generate data keys with that key only.
#[tokio::test]
async fn the_sam_template_with_a_named_bucket_makes_none_and_points_at_it() {
    let (_table, stream_arn, _) = own_table("deploy-s3n").await;
    let stack = table_name("deploy-s3n");
    let named = unique("records").to_lowercase();
    let key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let out = sam_stack(
        &stack,
        &stream_arn,
        &[
            ("OnFailureDestination", "s3"),
            ("OnFailureBucketName", &named),
            ("OnFailureBucketKmsKeyArn", key),
        ],
    );
    assert_eq!(out["status"], "CREATE_COMPLETE", "{}", out["failed"]);
    assert!(
        out["resources"]["OnFailureBucket"].is_null(),
        "{}",
        out["resources"]
    );
    let arn = format!("arn:aws:s3:::{named}");
    assert_eq!(out["outputs"]["OnFailureBucketName"], named.as_str());
    assert_eq!(
        out["readback"]["mapping"]["DestinationConfig"]["OnFailure"]["Destination"],
        arn.as_str()
    );
    let granted: Vec<(String, Value)> = statements(&out)
        .iter()
        .filter(|s| {
            let a = text(&s["Action"]);
            a.starts_with("s3:") || a.starts_with("kms:") || a.starts_with("sqs:")
        })
        .map(|s| (text(&s["Action"]), s["Resource"].clone()))
        .collect();
    assert_eq!(
        granted,
        [
            ("s3:PutObject".to_owned(), json!(format!("{arn}/*"))),
            ("s3:ListBucket".to_owned(), json!(arn)),
            ("kms:GenerateDataKey".to_owned(), json!(key)),
        ]
    );
}

#[tokio::test]
async fn stream_runs_with_the_deployed_mappings_settings_and_refuses_a_flag_that_contradicts_them()
{
    // The deployed mapping, with BatchSize 2, on a table of its own.
    let (deployed, stream_arn, queue_arn) = own_table("deploy-as").await;
    local_role();
    let dir = std::env::temp_dir().join(unique("deploy-as"));
    std::fs::create_dir_all(&dir).expect("a directory");
    let binary = arm64_stand_in(&dir);
    let config = dir.join("CargoLambda.toml");
    let text = std::fs::read_to_string(root().join("CargoLambda.toml")).expect("CargoLambda.toml");
    std::fs::write(
        &config,
        text.replace("[local.mapping]\n", "[local.mapping]\nBatchSize = 2\n"),
    )
    .expect("a config");
    let summary = deploy_cargo_lambda(&config, &deployed.name, &binary, &stream_arn, &queue_arn);
    let uuid = summary["uuid"].clone();

    // The local loop reads another table with those settings: the function
    // runs under cargo lambda watch, the mapping lives in moto.
    let testkit::local::Loop {
        table,
        exchange,
        function,
        broker,
        queue,
    } = testkit::local::Loop::start(
        Table::event_store(&table_name("deploy-as-src")).await,
        "deploy-as",
        &[],
    )
    .await;
    for version in 1..=5 {
        table
            .put(Table::event("prod-a", version, "ProductPriceChanged"))
            .await;
    }
    let run = testkit::local::run(
        &function,
        &[
            "stream",
            "--mapping",
            &uuid,
            "--table",
            &table.name,
            "--idle-exit",
            "2",
        ],
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(run.count("delivered"), 5, "{run:?}");
    assert_eq!(
        run.count("batches"),
        3,
        "BatchSize 2, the mapping's: {run:?}"
    );
    assert!(
        run.stderr
            .contains(&format!("running as the deployed mapping {uuid}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("BatchSize=2"), "{}", run.stderr);
    assert!(
        run.stderr.contains("its function's Timeout: 30 s"),
        "{}",
        run.stderr
    );
    assert_eq!(
        testkit::local::versions(&broker, &queue, 5).await,
        [1, 2, 3, 4, 5]
    );

    // A flag that says otherwise is refused before anything is read.
    let refused = testkit::local::run(
        &function,
        &[
            "stream",
            "--mapping",
            &uuid,
            "--table",
            &table.name,
            "--batch-size",
            "10",
            "--idle-exit",
            "1",
        ],
    )
    .await;
    assert!(!refused.success);
    assert!(
        refused
            .stderr
            .contains("--batch-size (10) contradicts its BatchSize 2"),
        "{}",
        refused.stderr
    );
    broker.cleanup(&exchange, &[&queue]).await;
    let _ = std::fs::remove_dir_all(&dir);
}
