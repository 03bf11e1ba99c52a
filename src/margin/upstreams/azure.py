"""Azure OpenAI as an upstream (``provider: azure``): the OpenAI wire format on Azure's
URLs and headers. Everything else — deployments, retries, cool-down, streaming usage — is
the OpenAI-compatible upstream's."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import orjson

from margin.errors import UpstreamError, UpstreamTimeout
from margin.upstreams.config import AzureModelConfig, DeploymentConfig, HTTPModelConfig
from margin.upstreams.openai_http import HTTPDeployment, OpenAIHTTPUpstream
from margin.upstreams.resilience import DeploymentHealth

_PATHS = {"chat": "/chat/completions", "completions": "/completions",
          "embeddings": "/embeddings"}


class AzureDeployment(HTTPDeployment):
    def __init__(self, model: HTTPModelConfig, dep: DeploymentConfig,
                 health: DeploymentHealth | None = None) -> None:
        super().__init__(model, dep, health)
        assert isinstance(model, AzureModelConfig)
        key = self._headers.pop("authorization", "").removeprefix("Bearer ")
        token = os.environ.get(model.azure_ad_token_env, "") if model.azure_ad_token_env else ""
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        elif key:
            self._headers["api-key"] = key
        root = self.base.removesuffix("/openai").removesuffix("/openai/v1")
        if model.route == "v1":
            self.prefix, self.query = root + "/openai/v1", ""
        else:
            name = model.deployment or dep.upstream_model or model.name
            self.prefix = f"{root}/openai/deployments/{name}"
            self.query = f"?api-version={model.api_version}"


class AzureUpstream(OpenAIHTTPUpstream):
    config_class = AzureModelConfig
    deployment_class = AzureDeployment

    async def _post(self, dep: HTTPDeployment, endpoint: str, body: dict[str, Any]
                    ) -> aiohttp.ClientResponse:
        assert isinstance(dep, AzureDeployment)
        url = dep.prefix + _PATHS[endpoint] + dep.query
        try:
            return await dep.post(url, orjson.dumps(body))
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"upstream {dep.label} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {dep.label} unreachable: {type(exc).__name__}") from None
