"""The issue's reference point, run side by side: Ray Serve's ``@serve.batch`` serving the
same MiniLM over HTTP, for ``margin bench batching --ray-python``.

Run by a Python that has ``ray[serve]`` (margin does not depend on Ray):
``python -m margin.bench.ray_serve_app PORT MAX_BATCH_SIZE WAIT_MS``. One replica, the
model loaded as the gateway loads it (the same ``LocalEmbedder``, so the runtime and the
chunking are the same and only the serving differs), called synchronously inside the
batched method as Ray's examples do. It answers ``POST /v1/embeddings`` with one string
``input`` in the OpenAI shape, and ``GET /-/healthz`` once ready.
"""

from __future__ import annotations

import sys
import time


def main(port: int, max_batch_size: int, wait_ms: float) -> None:
    import ray
    from ray import serve
    from starlette.requests import Request

    from margin.embedding.minilm import LocalEmbedder

    @serve.deployment(num_replicas=1, max_ongoing_requests=1024,
                      ray_actor_options={"num_cpus": 0})
    class Embeddings:
        def __init__(self) -> None:
            self.model = LocalEmbedder()

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_ms / 1000)
        async def embed(self, texts: list[str]) -> list[list[float]]:
            return [v.tolist() for v in self.model.encode(texts)]

        async def __call__(self, request: Request) -> dict:
            body = await request.json()
            vector = await self.embed(str(body["input"]))
            return {"object": "list", "model": body.get("model"),
                    "data": [{"object": "embedding", "index": 0, "embedding": vector}]}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Embeddings.bind(), route_prefix="/v1/embeddings")
    while True:  # the bench stops this process when it is done
        time.sleep(3600)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
