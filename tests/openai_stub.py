"""A tiny OpenAI-compatible chat server on 127.0.0.1 that answers from a script, for plumbing tests.

It stands in for an LLM *endpoint* (the customer simulator, the judge) - what these tests check is our
wiring to tau2's UserSimulator / judge through litellm over real HTTP, not a model.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedOpenAI:
    def __init__(self, replies: list[dict], per_conversation: bool = False):
        """replies: each {"content": str} or {"tool_calls": [(name, args_dict), ...]}; the last one repeats.
        per_conversation: every conversation plays the script from its start (the reply is picked by how many
        assistant turns the request already holds), so concurrent conversations cannot take each other's replies."""
        self.replies, self.per_conversation = list(replies), per_conversation
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                if stub.per_conversation:
                    turn = sum(m.get("role") == "assistant" for m in body.get("messages", []))
                    reply = stub.replies[min(turn, len(stub.replies) - 1)]
                else:
                    reply = stub.replies.pop(0) if len(stub.replies) > 1 else stub.replies[0]
                msg = {"role": "assistant", "content": reply.get("content")}
                if "tool_calls" in reply:
                    msg["tool_calls"] = [
                        {"id": f"call_{len(stub.requests)}_{i}", "type": "function",
                         "function": {"name": n, "arguments": json.dumps(a)}}
                        for i, (n, a) in enumerate(reply["tool_calls"])]
                out = {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model", "stub"),
                       "choices": [{"index": 0, "message": msg,
                                    "finish_reason": "tool_calls" if "tool_calls" in reply else "stop"}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
