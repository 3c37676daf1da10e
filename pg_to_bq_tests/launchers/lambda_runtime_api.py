"""A local stand-in for AWS Lambda: its Invoke API and its Runtime API on one port.

- `POST /2015-03-31/functions/{name}/invocations` is what boto3's `invoke` calls: the
  invocation is queued (`Event`) or queued and awaited (`RequestResponse`).
- `GET /2018-06-01/runtime/invocation/next` hands the next queued invocation to the
  runtime (`awslambdaric`), with the headers real Lambda sends. Its deadline is the time
  of hand-over plus `timeout_s`, which tests set to keep deadline tests short.
- `POST .../invocation/{id}/response`, `.../invocation/{id}/error` and
  `/2018-06-01/runtime/init/error` record the outcome.

Every response carries a `Content-Type` header: awslambdaric's native client fails
without one. Only what the tests need is implemented: one function, no versions.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
_RESULT_PATH = re.compile(r"^/2018-06-01/runtime/invocation/(?P<id>[^/]+)/(?P<kind>response|error)$")


@dataclass
class Invocation:
    """One invocation of the function, from Invoke to the runtime's answer."""

    request_id: str
    payload: bytes
    invocation_type: str
    qualifier: str | None
    headers: dict[str, str]
    deadline_ms: int | None = None
    response: bytes | None = None
    error: dict[str, Any] | None = None
    finished_at: float | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def event(self) -> Any:
        return json.loads(self.payload)


class LocalLambda:
    """One Lambda function served on 127.0.0.1. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        function_name: str = "pg-to-bq-runs",
        region: str = "us-east-1",
        account_id: str = "123456789012",
        timeout_s: float = 900.0,
    ):
        self.function_name = function_name
        self.region = region
        self.account_id = account_id
        self.timeout_s = timeout_s
        self.invocations: dict[str, Invocation] = {}
        self.init_errors: list[dict[str, Any]] = []
        self._queue: queue.Queue[Invocation] = queue.Queue()
        self._stopping = threading.Event()
        self._generation = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint_url(self) -> str:
        """For boto3's `endpoint_url`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def runtime_api(self) -> str:
        """For `AWS_LAMBDA_RUNTIME_API`."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalLambda:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalLambda:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def forget_runtimes(self) -> None:
        """Stop serving `/next` to runtimes started so far (call after killing one).

        A killed runtime's pending `/next` would otherwise take the next invocation.
        """
        self._generation += 1

    def wait_finished(self, request_id: str, timeout: float) -> Invocation:
        """The invocation once the runtime posted its response or error."""
        invocation = self.invocations[request_id]
        if not invocation.finished.wait(timeout):
            raise TimeoutError(f"invocation {request_id} did not finish within {timeout}s")
        return invocation

    # Called from request threads.

    def _matches(self, name: str) -> bool:
        name = unquote(name)
        return name in (self.function_name, self.function_arn) or name.startswith(self.function_arn + ":")

    def _invoke(self, name: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes):
        if not self._matches(name):
            return (
                404,
                {"x-amzn-ErrorType": "ResourceNotFoundException"},
                {
                    "Type": "User",
                    "message": f"Function not found: {unquote(name)}",
                },
            )
        invocation_type = headers.get("x-amz-invocation-type", "RequestResponse")
        if invocation_type not in ("Event", "RequestResponse"):
            return (
                400,
                {"x-amzn-ErrorType": "InvalidParameterValueException"},
                {"message": f"unsupported invocation type {invocation_type}"},
            )
        try:
            json.loads(body or b"null")
        except ValueError:
            return (
                400,
                {"x-amzn-ErrorType": "InvalidRequestContentException"},
                {"message": "Could not parse request body into json"},
            )
        invocation = Invocation(
            request_id=str(uuid.uuid4()),
            payload=body,
            invocation_type=invocation_type,
            qualifier=(query.get("Qualifier") or [None])[0],
            headers=headers,
        )
        self.invocations[invocation.request_id] = invocation
        self._queue.put(invocation)
        request_headers = {"x-amzn-RequestId": invocation.request_id}
        if invocation_type == "Event":
            return 202, request_headers, b""
        invocation.finished.wait(self.timeout_s + 5)
        if invocation.error is not None:
            request_headers["X-Amz-Function-Error"] = "Unhandled"
            return 200, request_headers, invocation.error
        return 200, request_headers, invocation.response or b"null"

    def _requeue(self, invocation: Invocation) -> None:
        invocation.deadline_ms = None
        self._queue.put(invocation)

    def _next(self) -> Invocation | None:
        generation = self._generation
        while not self._stopping.is_set() and generation == self._generation:
            try:
                invocation = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            invocation.deadline_ms = int((time.time() + self.timeout_s) * 1000)
            return invocation
        return None


def _handler_for(service: LocalLambda) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass

        def _send(self, status: int, body: Any = b"", headers: dict[str, str] | None = None):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            if urlsplit(self.path).path != "/2018-06-01/runtime/invocation/next":
                self._send(404, {"message": f"no route {self.path}"})
                return
            invocation = service._next()
            if invocation is None:
                # Shutting down; the runtime is usually gone already.
                with contextlib.suppress(OSError):
                    self._send(503, {"message": "shutting down"})
                return
            try:
                self._send(
                    200,
                    invocation.payload,
                    {
                        "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                        "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn": service.function_arn,
                        "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:24]}",
                    },
                )
            except OSError:
                service._requeue(invocation)  # that runtime is gone

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            url = urlsplit(self.path)
            body = self._body()
            if match := _INVOKE_PATH.match(url.path):
                headers = {key.lower(): value for key, value in self.headers.items()}
                status, headers_out, payload = service._invoke(
                    match["name"], parse_qs(url.query), headers, body
                )
                self._send(status, payload, headers_out)
            elif match := _RESULT_PATH.match(url.path):
                invocation = service.invocations.get(match["id"])
                if invocation is None:
                    self._send(400, {"message": f"unknown request id {match['id']}"})
                    return
                if match["kind"] == "response":
                    invocation.response = body
                else:
                    invocation.error = json.loads(body or b"{}")
                invocation.finished_at = time.time()
                invocation.finished.set()
                self._send(202, {"status": "OK"})
            elif url.path == "/2018-06-01/runtime/init/error":
                service.init_errors.append(json.loads(body or b"{}"))
                self._send(202, {"status": "OK"})
            else:
                self._send(404, {"message": f"no route {self.path}"})

    return Handler
