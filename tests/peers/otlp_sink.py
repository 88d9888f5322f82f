"""An OpenTelemetry collector's OTLP/gRPC trace endpoint for tests: the receiver of oteltest
(OpenTelemetry's Python tester, `otelsink`) on the port given, writing each span it receives
as one JSON line (name, ids, attributes) to stdout. Prints `ready` once it listens."""

import json
import logging
import sys

from google.protobuf.json_format import MessageToDict
from oteltest.sink import GrpcSink
from oteltest.sink.handler import RequestHandler


def value(v):
    """An OTLP AnyValue as the plain value it holds (ints arrive as strings from MessageToDict)."""
    return next(iter(v.values()), None)


class Spans(RequestHandler):
    def handle_logs(self, request, headers):
        pass

    def handle_metrics(self, request, headers):
        pass

    def handle_trace(self, request, headers):
        for resource_spans in MessageToDict(request).get("resourceSpans", []):
            resource = resource_spans.get("resource", {}).get("attributes", [])
            service = {a["key"]: value(a["value"]) for a in resource}.get("service.name")
            for scope in resource_spans.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    line = {
                        "service": service,
                        "name": span["name"],
                        "span": span.get("spanId"),
                        "parent": span.get("parentSpanId"),
                        "trace": span.get("traceId"),
                        "attributes": {a["key"]: value(a["value"]) for a in span.get("attributes", [])},
                    }
                    # One write per line: the sink answers exports on several threads.
                    sys.stdout.write(json.dumps(line) + "\n")
                    sys.stdout.flush()


def main():
    port = int(sys.argv[1])
    sink = GrpcSink(Spans(), logging.getLogger("otelsink"), port=port)
    sink.start()
    print("ready", flush=True)
    sink.wait_for_termination()


if __name__ == "__main__":
    main()
