"""The local AWS side of `make run` and `make dev`, against moto's server
(boto3 comes with moto):

    local_aws.py setup TABLE QUEUE   an event-store table with a
                                     NEW_AND_OLD_IMAGES stream (made anew)
                                     and an OnFailure queue (emptied)
    local_aws.py put-samples TABLE   the sample domain events of events/ as
                                     items: PutItem, one UpdateItem (a MODIFY,
                                     which the event-store mapping skips), one
                                     TransactWriteItems of two events, and one
                                     item that is not an event (no eventType);
                                     prints the time of the first write (ms)
    local_aws.py put-one TABLE       one more event (PutItem); prints the
                                     time just before the write (ms)
    local_aws.py on-failure QUEUE    prints the OnFailure messages
    local_aws.py deployed TABLE ROLE a table for the deployed mapping and
                                     the role CargoLambda.toml's local
                                     context names, when missing; prints
                                     the table's stream ARN
    local_aws.py stand-in PATH       writes an arm64 ELF header, the code
                                     deployed to moto (which never runs it)

The endpoint is AWS_ENDPOINT_URL (default http://127.0.0.1:5677).
"""
import json
import os
import struct
import sys
import time
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent


def client(service):
    return boto3.client(
        service,
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:5677"),
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
    )


def create_table(ddb, table):
    return ddb.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "aggregateId", "KeyType": "HASH"},
            {"AttributeName": "version", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "aggregateId", "AttributeType": "S"},
            {"AttributeName": "version", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]


def setup(table, queue):
    ddb = client("dynamodb")
    if table in ddb.list_tables()["TableNames"]:
        ddb.delete_table(TableName=table)
    create_table(ddb, table)
    sqs = client("sqs")
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    sqs.purge_queue(QueueUrl=url)
    print(f"table {table} (stream NEW_AND_OLD_IMAGES) and OnFailure queue {url}")


def deployed(table, role):
    # Never written: moto runs a mapping itself (through Docker) on every
    # write to its table, and then clears that table's stream.
    ddb = client("dynamodb")
    if table in ddb.list_tables()["TableNames"]:
        described = ddb.describe_table(TableName=table)["Table"]
    else:
        described = create_table(ddb, table)
    iam = client("iam")
    try:
        iam.get_role(RoleName=role)
    except iam.exceptions.NoSuchEntityException:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "lambda.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    print(described["LatestStreamArn"])


def stand_in(path):
    # What `cargo lambda deploy` reads the architecture from; the real
    # artefact is `make build`'s, run by `make test-artefact`.
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    Path(path).write_bytes(header)


def sample_items():
    items = []
    for name in ("insert-batch.json", "poison-batch.json"):
        for record in json.loads((ROOT / "events" / name).read_text())["Records"]:
            if record["eventName"] == "INSERT":
                items.append(record["dynamodb"]["NewImage"])
    return {(i["aggregateId"]["S"], i["version"]["N"]): i for i in items}


def put_samples(table):
    ddb = client("dynamodb")
    items = sample_items()
    started = int(time.time() * 1000)
    put = lambda key: ddb.put_item(TableName=table, Item=items[key])
    put(("prod-00042", "1"))
    put(("prod-00042", "2"))
    # An archival flag set on an event: a MODIFY in the stream.
    ddb.update_item(
        TableName=table,
        Key={"aggregateId": {"S": "prod-00042"}, "version": {"N": "1"}},
        UpdateExpression="SET archived = :t",
        ExpressionAttributeValues={":t": {"BOOL": True}},
    )
    # One command, two events of one aggregate, written together.
    ddb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": table, "Item": items[("order-9001", v)]}} for v in ("1", "2")
        ]
    )
    put(("user-17", "3"))
    for v in ("1", "2", "3"):
        put(("prod-00077", v))  # version 2 has no eventType: dead-lettered
    print(started)


def put_one(table):
    ddb = client("dynamodb")
    item = {
        "aggregateId": {"S": "prod-00042"},
        "version": {"N": "3"},
        "eventType": {"S": "ProductRenamed"},
        "aggregateType": {"S": "Product"},
        "payload": {"M": {"name": {"S": "Trail running shoe II"}}},
    }
    started = int(time.time() * 1000)
    ddb.put_item(TableName=table, Item=item)
    print(started)


def on_failure(queue):
    sqs = client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    messages = got.get("Messages", [])
    print(f"\n== OnFailure queue {queue}: {len(messages)} message(s)")
    for m in messages:
        print(m["Body"])


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["help"]
    {
        "setup": setup,
        "put-samples": put_samples,
        "put-one": put_one,
        "on-failure": on_failure,
        "deployed": deployed,
        "stand-in": stand_in,
    }.get(command, lambda *_: sys.exit(__doc__))(*args)
