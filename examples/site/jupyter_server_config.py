"""Shape 1: inside each user's own Jupyter server (Open OnDemand, a JupyterLab on a login node, a
Jupyter in a batch job). Every user's server runs the extension at ``{base_url}llm/`` and, on the
user's first question, submits the user's *own* GPU job on the user's own Slurm account; the job
is released after ``idle_timeout`` without requests.

Install it site-wide (every user's server reads it), e.g. as
``/etc/jupyter/jupyter_server_config.py``, or pass ``--config``; a single user may put it in
``~/.jupyter/jupyter_server_config.py``. Values here are an example site: change the partition,
GRES, paths and model names.
"""

import os

c = get_config()  # noqa: F821

# enabled by default when the package is installed (jupyter_server_config.d); stated for clarity
c.ServerApp.jpserver_extensions = {"jupyter_llm_af": True}

c.LLMService.backend = "slurm"
c.LLMService.slurm_partition = "gpu"
c.LLMService.slurm_account = ""  # empty: the user's default account
c.LLMService.slurm_gres = "gpu:1"
c.LLMService.slurm_time_limit = "02:00:00"
c.LLMService.slurm_extra_directives = ["--mem=32G", "--cpus-per-task=4"]
# Jobs write their endpoint here and the server reads it: it must be on a filesystem the GPU
# nodes share (the user's home), never /tmp or /run/user (node-local). Created 0700.
c.LLMService.slurm_state_dir = os.path.expanduser("~/.local/share/jupyter-llm-af/slurm")
c.LLMService.slurm_backend_command = "/opt/ollama/bin/ollama serve"
c.LLMService.slurm_backend_env = {
    "OLLAMA_MODELS": "/shared/models/ollama",  # read-only model store, shared by everyone
    "OLLAMA_NUM_PARALLEL": "2",
    "OLLAMA_KEEP_ALIVE": "30m",
}
c.LLMService.idle_timeout = 1200  # a personal GPU job goes after 20 min without requests
c.LLMService.renew_before = 600
c.LLMService.max_wait = 600
c.LLMService.gpu_memory_gb = 24
c.LLMService.model_sizes_gb = {"llama3.1:8b": 6.5, "qwen2.5-coder:14b": 11}
c.LLMService.default_model = "llama3.1:8b"
# the user's own accounting, in the user's home (GET {base_url}llm/usage reads it back at start)
c.LLMService.usage_log_file = os.path.expanduser("~/.local/share/jupyter-llm-af/usage.jsonl")
