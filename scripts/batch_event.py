#!/usr/bin/env python3
"""A DynamoDB stream batch of N event-store records, for measuring.

    scripts/batch_event.py RECORDS RECORD_BYTES > batch.json

Each record is the first record of events/insert-batch.json with its own
aggregateId, version, eventID and SequenceNumber, and a payload description
padded so that the record is about RECORD_BYTES of JSON.
"""
import copy
import json
import pathlib
import sys


def main() -> None:
    records, record_bytes = int(sys.argv[1]), int(sys.argv[2])
    sample = pathlib.Path(__file__).resolve().parent.parent / "events" / "insert-batch.json"
    base = json.loads(sample.read_text())["Records"][0]
    base_size = len(json.dumps(base, separators=(",", ":")))
    padding = "lorem ipsum dolor sit amet " * (max(record_bytes - base_size, 0) // 27 + 1)
    padding = padding[: max(record_bytes - base_size - 40, 0)]
    out = []
    for i in range(records):
        r = copy.deepcopy(base)
        image = r["dynamodb"]["NewImage"]
        image["aggregateId"] = {"S": f"prod-{i % 200:05}"}
        image["version"] = {"N": str(i // 200 + 1)}
        image.pop("eventId", None)
        image["payload"]["M"]["description"] = {"S": padding}
        r["eventID"] = f"measure-{i:06}"
        r["dynamodb"]["Keys"] = {"aggregateId": image["aggregateId"], "version": image["version"]}
        r["dynamodb"]["SequenceNumber"] = str(4_100_000_000_000_000_000_000 + i)
        out.append(r)
    json.dump({"Records": out}, sys.stdout, separators=(",", ":"))


if __name__ == "__main__":
    main()
