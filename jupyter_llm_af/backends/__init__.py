"""Launchers: where the inference backend runs. Each implements :class:`base.Backend`.

- ``upstream``: a fixed URL (``UpstreamBackend``); also the ``relay`` kind, forwarding to a shared service.
- ``local``: a process on this machine (``LocalProcessBackend``): ``ollama serve`` or the embedded
  llama.cpp server.
- ``slurm``: a batch job submitted on demand (``SlurmBackend``), with its pure parts beside it:
  ``slurm_cli`` (the Slurm commands), ``slurm_settings``, ``slurm_script`` (the batch script),
  ``slurm_jobs`` (per-job record and JSON), ``slurm_files`` (the state dir), ``slurm_messages``.

Nothing here imports Jupyter or Tornado; modules are imported on use (``service.py`` picks one).
"""
