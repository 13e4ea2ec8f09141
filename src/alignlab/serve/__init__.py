"""`alignlab serve`: an OpenAI-compatible HTTP server with continuous batching, for any model alignlab loads.

Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (whole or streamed as server-sent events),
`POST /v1/load_weights` (new full weights or a LoRA adapter from a local directory), `GET /v1/models`,
`GET /health`, `GET /metrics` (Prometheus text). The request fields honoured are listed in serve/protocol.py;
docs/serving.md has the protocol an RL trainer uses to roll out through this server.

Modules: protocol.py (request fields), output.py (responses, chunks, log-probs), server.py (ModelServer:
queueing, waiting, cancelling, metrics, weight loads), weights.py (reading and checking new weights),
http.py (routes, streaming, connection limits); the decoding itself is rollout/scheduler.py.
"""

from alignlab.serve.http import base_url, make_http_server
from alignlab.serve.protocol import RequestError
from alignlab.serve.server import ModelServer

__all__ = ["ModelServer", "RequestError", "base_url", "make_http_server"]
