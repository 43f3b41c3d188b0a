"""Test helpers: a real HTTP callback receiver and body parsers (import as ``helpers``)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import attrs


@attrs.define
class ReceivedCallback:
    """One POST the callback receiver got."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@attrs.define
class CallbackReceiver:
    """A real HTTP server on 127.0.0.1 that records POSTs and answers as configured."""

    server: ThreadingHTTPServer
    received: list[ReceivedCallback] = attrs.field(factory=list)
    status: int = 200
    reply: bytes = b'{"Status":"OK"}'
    content_type: str = "application/json"
    delay: float = 0.0
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


def _make_handler(receiver_box: list[CallbackReceiver]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            receiver = receiver_box[0]
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            parts = urlsplit(self.path)
            with receiver.lock:
                receiver.received.append(ReceivedCallback(
                    method="POST", path=parts.path, query=parts.query,
                    headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                ))
            if receiver.delay:
                time.sleep(receiver.delay)
            self.send_response(receiver.status)
            self.send_header("Content-Type", receiver.content_type)
            self.send_header("Content-Length", str(len(receiver.reply)))
            self.end_headers()
            self.wfile.write(receiver.reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def form_fields(body: bytes) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(body.decode(), keep_blank_values=True))


def json_body(body: bytes) -> Any:
    return json.loads(body)
