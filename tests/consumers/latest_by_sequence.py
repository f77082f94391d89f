"""A Python consumer of the forwarder's events (pika): reads every message
in a queue and keeps, per partitionKey, the one with the highest
sequenceNumber compared as an integer, from the message alone. Prints
{partitionKey: {"sequenceNumber": ..., "payload": ...}} as JSON.

    python3 latest_by_sequence.py AMQP_URI QUEUE
"""
import json
import sys

import pika


def main(uri, queue):
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    channel = connection.channel()
    latest = {}
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        event = json.loads(body)
        header = (properties.headers or {}).get("sequenceNumber")
        if isinstance(header, bytes):
            header = header.decode()
        if header != event["sequenceNumber"]:
            sys.exit(f"header {header!r} and body {event['sequenceNumber']!r} differ")
        seq = int(event["sequenceNumber"])
        key = event["partitionKey"]
        if key not in latest or seq > int(latest[key]["sequenceNumber"]):
            latest[key] = event
    connection.close()
    print(json.dumps({k: {"sequenceNumber": v["sequenceNumber"], "payload": v["payload"]}
                      for k, v in latest.items()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
