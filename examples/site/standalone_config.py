"""Shape 3: a standalone service on its own port, like Ollama's ``:11434``, for every client at
the site (notebooks anywhere, VS Code, Claude Code, scripts): ``http://llm.example.org:11434``
speaks the Ollama, OpenAI and Anthropic APIs, each user with their own API token. Run it under
systemd as a non-root service user (``jupyter-llm-af.service`` beside this file)::

    /opt/jupyter-llm-af/bin/python -m jupyter_llm_af serve --config /etc/jupyter-llm-af/standalone_config.py
"""

c = get_config()  # noqa: F821

c.ServeApp.ip = "0.0.0.0"  # every interface; put TLS in front (a reverse proxy) off-site
c.ServeApp.port = 11434
# one "token user" per line; 0600, owned by the service user (see docs/site-admin.md)
c.ServeApp.token_file = "/etc/jupyter-llm-af/tokens"

c.LLMService.backend = "slurm"
c.LLMService.slurm_partition = "gpu"
c.LLMService.slurm_account = "llm-service"
c.LLMService.slurm_gres = "gpu:h100:1"
c.LLMService.slurm_time_limit = "12:00:00"
c.LLMService.slurm_extra_directives = ["--mem=128G", "--cpus-per-task=16"]
c.LLMService.slurm_state_dir = "/shared/llm-service/state"  # shared with the GPU nodes, 0700
c.LLMService.slurm_backend_command = "/shared/sw/ollama/bin/ollama serve"
c.LLMService.slurm_backend_env = {
    "OLLAMA_MODELS": "/shared/llm-service/models",
    "OLLAMA_NUM_PARALLEL": "16",
    "OLLAMA_MAX_LOADED_MODELS": "3",
    "OLLAMA_KEEP_ALIVE": "1h",
}
c.LLMService.renew_before = 1200
c.LLMService.idle_timeout = 3600
c.LLMService.cancel_on_shutdown = False  # systemctl restart keeps the job (adopted on start)

c.LLMService.max_queue = 512
c.LLMService.max_queue_per_user = 16
c.LLMService.max_wait = 900
c.LLMService.gpu_memory_gb = 80
c.LLMService.model_sizes_gb = {"llama3.3:70b": 42.5, "qwen2.5-coder:32b": 21, "llama3.1:8b": 6.5}

c.LLMService.admin_users = ["llmadmin"]
# the metrics token comes from $JUPYTER_LLM_AF_METRICS_TOKEN (the unit's EnvironmentFile)
c.LLMService.usage_log_file = "/var/lib/jupyter-llm-af/usage.jsonl"
c.LLMService.access_log = True
