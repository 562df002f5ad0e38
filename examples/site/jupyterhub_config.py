"""Shape 2: one shared service for a whole JupyterHub (one GPU job and one fair queue for all
users). The hub runs the service as a managed service at ``/services/llm/``; every single-user
server's extension relays to it as its user (``JUPYTER_LLM_AF_SHARED_URL``), so the panel, the
magics and the kernels' clients all use the one service.

Put this file and ``llm_config.py`` side by side (e.g. in ``/etc/jupyterhub/``). Merge the
lines below into an existing ``jupyterhub_config.py``; only the ``llm`` service, the two scope
settings and the spawner environment concern jupyter_llm_af.
"""

import os
import sys

c = get_config()  # noqa: F821

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLIC_URL = "https://hub.example.org"  # what users' browsers and servers reach the hub at

c.JupyterHub.services = [
    {
        "name": "llm",
        "url": "http://127.0.0.1:10101",
        # The hub's own interpreter, not "jupyter-llm-af" looked up on PATH: a hub started by
        # absolute path (a systemd unit) has no virtual environment on its PATH.
        "command": [
            sys.executable, "-m", "jupyter_llm_af", "serve",
            "--port", "10101",
            "--config", os.path.join(HERE, "llm_config.py"),
        ],
        # where the service finds sbatch/squeue/scancel (otherwise: the hub's own PATH)
        "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin"},
        "oauth_no_confirm": True,
    }
]  # fmt: skip
# every user may use the service; their servers' tokens may call it on their behalf
c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self", "access:services!service=llm"]}]
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=llm",
]
# zero-config relay: each single-user server's extension forwards to the shared service
c.Spawner.environment = {"JUPYTER_LLM_AF_SHARED_URL": PUBLIC_URL + "/services/llm"}
