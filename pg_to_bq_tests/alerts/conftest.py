"""What the alert tests read messages back from: an SNS topic in moto (server mode) with an
SQS queue subscribed to it, and a local HTTP server standing in for a Slack webhook."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest


@dataclass
class Received:
    """One request the webhook server received."""

    path: str
    content_type: str
    body: dict


@dataclass
class WebhookServer:
    """A local HTTP server recording every POST; `status` is what it answers, after
    `delay_s`."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    status: int = 200
    delay_s: float = 0.0

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/services/T0000/B0000/XXXXSECRETXXXX"

    def texts(self) -> list[str]:
        return [r.body["text"] for r in self.requests]


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    state: dict[str, WebhookServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hook = state["hook"]
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            hook.requests.append(Received(self.path, self.headers.get("Content-Type", ""), body))
            time.sleep(hook.delay_s)
            try:
                self.send_response(hook.status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if hook.status == 200 else b"invalid_payload")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the timeout test)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state["hook"] = WebhookServer(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["hook"]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SnsInbox:
    """An SNS topic with an SQS queue subscribed; `messages()` drains what was published."""

    topic_arn: str
    queue_url: str

    def messages(self) -> list[dict]:
        """The messages published since the last call: each SNS envelope (with `Subject` and
        `Message`), read back from the subscribed queue."""
        sqs = boto3.client("sqs")
        received: list[dict] = []
        while True:
            batch = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                        WaitTimeSeconds=0).get("Messages", [])
            if not batch:
                return received
            for item in batch:
                received.append(json.loads(item["Body"]))
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=item["ReceiptHandle"])


@pytest.fixture
def sns_inbox(aws_env: str) -> SnsInbox:
    name = f"pg-to-bq-alerts-{uuid.uuid4().hex[:8]}"
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url,
                                         AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return SnsInbox(topic_arn, queue_url)
