"""A Python consumer that continues the forwarder's traces: reads every
message in a queue and extracts its W3C trace context from the AMQP headers
with OpenTelemetry's own propagator, as a service's instrumentation would.
Prints one JSON object per message: the event's messageType and
aggregateVersion, and the trace id, span id, sampled flag and tracestate the
propagator found (null when it found none).

    python3 trace_context.py AMQP_URI QUEUE
"""
import json
import sys

import pika
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


def text(value):
    return value.decode() if isinstance(value, bytes) else value


def main(uri, queue):
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    channel = connection.channel()
    propagator = TraceContextTextMapPropagator()
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        event = json.loads(body)
        carrier = {k: text(v) for k, v in (properties.headers or {}).items()}
        context = trace.get_current_span(propagator.extract(carrier)).get_span_context()
        found = context.is_valid
        print(json.dumps({
            "messageType": event["messageType"],
            "aggregateVersion": event.get("aggregateVersion"),
            "traceId": format(context.trace_id, "032x") if found else None,
            "spanId": format(context.span_id, "016x") if found else None,
            "sampled": context.trace_flags.sampled if found else None,
            "tracestate": context.trace_state.to_header() if found else None,
        }))
    connection.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
