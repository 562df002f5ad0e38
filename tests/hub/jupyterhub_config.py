"""JupyterHub config for tests/test_hub.py: the README's hub-wide install, all state in $HUB_DIR.

One managed service ``llm`` (``jupyter-llm-af serve`` in front of $LLM_TEST_UPSTREAM), users by
DummyAuthenticator (any password; ``admin`` is a hub admin), SimpleLocalProcessSpawner (no system
users; the hub may run as root), single-user servers relaying to the service with their own
$JUPYTERHUB_API_TOKEN (tests/hub/singleuser/jupyter_server_config.py, copied to $HUB_DIR). Ports come from the
environment (tests/hub_helpers.py picks free loopback ports).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STATE = os.environ["HUB_DIR"]
PY = sys.executable
BIN = os.path.dirname(PY)
PUBLIC = "http://127.0.0.1:" + os.environ["HUB_PORT"]

c = get_config()  # noqa: F821

c.JupyterHub.bind_url = PUBLIC
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["HUB_API_PORT"])
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:" + os.environ["CHP_API_PORT"]
c.ConfigurableHTTPProxy.command = [os.environ["CHP_BIN"]]
c.ConfigurableHTTPProxy.pid_file = os.path.join(STATE, "chp.pid")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(STATE, "hub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(STATE, "cookie_secret")
c.JupyterHub.pid_file = os.path.join(STATE, "hub.pid")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
# POST /hub/api/users/{name}/server answers 202 at once (the test polls for readiness)
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}

c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(STATE, "homes", "{username}")
c.Spawner.cmd = [os.path.join(BIN, "jupyterhub-singleuser")]
c.Spawner.args = ["--allow-root"]
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.Spawner.environment = {
    # zero-config relay: each single-user server's extension forwards to the one shared service
    # (through the proxy), as its user, with the server's own $JUPYTERHUB_API_TOKEN
    "JUPYTER_LLM_AF_SHARED_URL": PUBLIC + "/services/llm",
}

# the README's section "One shared service for a whole JupyterHub"
c.JupyterHub.services = [
    {
        "name": "llm",
        "url": "http://127.0.0.1:" + os.environ["SVC_PORT"],
        "command": [
            PY,
            "-m",
            "jupyter_llm_af",
            "serve",
            "--port",
            os.environ["SVC_PORT"],
            "--backend",
            "upstream",
            "--upstream-url",
            os.environ["LLM_TEST_UPSTREAM"],
            "--config",
            os.path.join(HERE, "llm_config.py"),
        ],
        "cwd": STATE,
        "oauth_no_confirm": True,
    }
]
c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self", "access:services!service=llm"]}]
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=llm",
]
