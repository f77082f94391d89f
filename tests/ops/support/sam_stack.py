"""The SAM deploy path in moto (tests/ops/deploy.rs). Run by the SAM CLI's
own Python (scripts/deploy-tools.sh sam), whose samtranslator turns
template.yaml into plain CloudFormation locally, as `sam deploy` has
CloudFormation do.

  sam_stack.py TEMPLATE ENDPOINT STACK PARAMETERS_JSON

The template as `sam build` leaves it: .aws-sam/build/template.yaml differs
from template.yaml only in the function's CodeUri (the build directory)
and a `SamResourceId` in its Metadata (compared on 2026-12-07, SAM CLI
1.170), and `sam deploy` replaces that CodeUri with the artefact's
s3://bucket/key, which the translator needs. So this uploads a stand-in
zip to moto's S3, sets CodeUri to it, transforms, creates the stack in moto's
CloudFormation, waits for it, and prints JSON: the rendered template, the
stack's status and reason, its resources and the failed resources' reasons.
"""
import ast
import io
import json
import sys
import time
import zipfile

import boto3
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """The template names no managed policy: nothing to look up in IAM."""

    def load(self):
        return {}


def main():
    template_path, endpoint, stack, params_json = sys.argv[1:5]
    params = json.loads(params_json)
    with open(template_path) as f:
        template = yaml_parse(f.read())

    s3 = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"{stack}-artefacts".lower()
    s3.create_bucket(Bucket=bucket)
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("bootstrap", b"stand-in: moto never runs it")
    s3.put_object(Bucket=bucket, Key="event-forwarder/bootstrap.zip", Body=code.getvalue())
    # Every function of the template (the standard one and the one on Lambda
    # Managed Instances, of which the stack makes one), as sam deploy does.
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://{bucket}/event-forwarder/bootstrap.zip"

    rendered = transform(template, params, NoManagedPolicies())

    cfn = boto3.client("cloudformation", endpoint_url=endpoint)
    cfn.create_stack(
        StackName=stack,
        TemplateBody=json.dumps(rendered),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    for _ in range(300):
        described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
        if not described["StackStatus"].endswith("_IN_PROGRESS"):
            break
        time.sleep(0.2)
    cloudwatch = boto3.client("cloudwatch", endpoint_url=endpoint)
    resources = cfn.describe_stack_resources(StackName=stack)["StackResources"]
    events = cfn.describe_stack_events(StackName=stack)["StackEvents"]
    physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId") for r in resources if "LogicalResourceId" in r}
    readback = {}
    if described["StackStatus"] == "CREATE_COMPLETE":
        aws_lambda = boto3.client("lambda", endpoint_url=endpoint)
        readback["function"] = aws_lambda.get_function_configuration(
            FunctionName=physical["ForwarderFunction"]
        )
        readback["mapping"] = aws_lambda.get_event_source_mapping(
            UUID=physical["ForwarderFunctionStream"]
        )
        logs = boto3.client("logs", endpoint_url=endpoint)
        readback["log_groups"] = logs.describe_log_groups(
            logGroupNamePrefix=physical["ForwarderLogGroup"]
        )["logGroups"]
        iam = boto3.client("iam", endpoint_url=endpoint)
        readback["role_policy"] = iam.get_role_policy(
            RoleName=physical["ForwarderRole"], PolicyName="event-forwarder"
        )["PolicyDocument"]
        if isinstance(readback["role_policy"], str):
            # moto 5.2 hands back the document as Python's repr of a dict.
            readback["role_policy"] = ast.literal_eval(readback["role_policy"])
        sqs = boto3.client("sqs", endpoint_url=endpoint)
        readback["queue"] = sqs.get_queue_attributes(
            QueueUrl=physical["OnFailureQueue"], AttributeNames=["All"]
        )["Attributes"]
        if "OnFailureBucket" in physical:
            s3 = boto3.client("s3", endpoint_url=endpoint)
            bucket = physical["OnFailureBucket"]
            got = {}
            for key, call in [
                ("encryption", lambda: s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]),
                ("public_access_block", lambda: s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]),
                ("versioning", lambda: s3.get_bucket_versioning(Bucket=bucket).get("Status")),
                ("lifecycle", lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]),
                ("policy", lambda: json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])),
            ]:
                try:
                    got[key] = call()
                except Exception as e:  # what moto does not keep is reported, not fatal
                    got[key] = {"error": str(e)}
            readback["bucket"] = got
        for r in readback.values():
            if isinstance(r, dict):
                r.pop("ResponseMetadata", None)
    print(
        json.dumps(
            {
                "rendered": rendered,
                "readback": readback,
                "status": described["StackStatus"],
                "reason": described.get("StackStatusReason", ""),
                "outputs": {o["OutputKey"]: o.get("OutputValue") for o in described.get("Outputs", [])},
                # moto 5.2 leaves the logical id and type out for the
                # alarms: they are read from CloudWatch below.
                "resources": {
                    r["LogicalResourceId"]: {
                        "type": r.get("ResourceType", ""),
                        "id": r.get("PhysicalResourceId", ""),
                        "status": r["ResourceStatus"],
                    }
                    for r in resources
                    if "LogicalResourceId" in r
                },
                "unnamed_resources": sum(1 for r in resources if "LogicalResourceId" not in r),
                "alarms": [
                    {
                        "namespace": a.get("Namespace"),
                        "metric": a.get("MetricName"),
                        "dimensions": {d["Name"]: d["Value"] for d in a.get("Dimensions", [])},
                        "threshold": a.get("Threshold"),
                        "statistic": a.get("Statistic"),
                        "period": a.get("Period"),
                        "evaluation_periods": a.get("EvaluationPeriods"),
                        "comparison": a.get("ComparisonOperator"),
                    }
                    for a in cloudwatch.describe_alarms()["MetricAlarms"]
                    if stack in a["AlarmName"]
                ],
                "failed": [
                    f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}"
                    for e in events
                    if e["ResourceStatus"].endswith("_FAILED")
                ],
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
