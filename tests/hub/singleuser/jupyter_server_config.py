"""Single-user servers spawned by the test hub: the extension relays to the hub's ``llm`` service,
authenticating with the server's own $JUPYTERHUB_API_TOKEN (scopes: Spawner.server_token_scopes)."""

import os

c = get_config()  # noqa: F821
c.ServerApp.jpserver_extensions = {"jupyter_llm_af": True}
c.LLMService.backend = "upstream"
c.LLMService.upstream_url = os.environ["LLM_TEST_SERVICE_URL"]
c.LLMService.upstream_headers = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}
