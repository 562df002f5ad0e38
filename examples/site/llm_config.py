"""The shared service's own settings (shape 2, read by ``jupyterhub_config.py``'s ``llm``
service): one Slurm GPU job for the whole hub, submitted on the first request, renewed before
its time limit while people use it, released when idle. Hub admins and the ``llm-admins``
group may start/stop it, see everyone's queue entries and usage, and read ``/metrics``.
"""

c = get_config()  # noqa: F821

c.LLMService.backend = "slurm"
c.LLMService.slurm_partition = "ampere"
c.LLMService.slurm_account = "llm-service"
c.LLMService.slurm_gres = "gpu:a100:1"
c.LLMService.slurm_time_limit = "08:00:00"
c.LLMService.slurm_extra_directives = ["--mem=64G", "--cpus-per-task=8"]
# shared with the GPU nodes, owned by the service's user, 0700 (see docs/site-admin.md)
c.LLMService.slurm_state_dir = "/sdf/group/llm/state"
c.LLMService.slurm_job_name = "jupyter-llm-af-hub"
c.LLMService.slurm_backend_command = "/sdf/sw/ollama/bin/ollama serve"
c.LLMService.slurm_backend_env = {
    "OLLAMA_MODELS": "/sdf/group/llm/models",
    "OLLAMA_NUM_PARALLEL": "8",
    "OLLAMA_MAX_LOADED_MODELS": "2",
    "OLLAMA_KEEP_ALIVE": "30m",
}
c.LLMService.renew_before = 900  # submit the successor 15 min before the end
c.LLMService.idle_timeout = 1800  # let the GPU go after 30 min without requests
c.LLMService.cancel_on_shutdown = False  # a restart or an upgrade keeps the job: it is adopted

c.LLMService.max_queue = 256
c.LLMService.max_queue_per_user = 8
c.LLMService.max_wait = 900  # a request waits at most 15 min (pending job + queue)
c.LLMService.gpu_memory_gb = 40
c.LLMService.model_sizes_gb = {"llama3.3:70b": 42.5, "gemma3:27b": 20, "llama3.1:8b": 6.5}

c.LLMService.admin_groups = ["llm-admins"]
c.LLMService.metrics_groups = ["staff", "students"]
c.LLMService.usage_log_file = "/var/lib/jupyter-llm-af/usage.jsonl"
