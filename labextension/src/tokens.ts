/**
 * The JSON shapes the server extension answers under `{baseUrl}llm/`.
 */

/** Lifecycle states of the backend, as `GET backend/state` reports them. */
export type BackendStateName =
  'idle' | 'submitting' | 'pending' | 'starting' | 'ready' | 'renewing' | 'draining' | 'failed' | 'unknown';

/** A Slurm job behind the backend (times: ISO strings or epoch seconds; null when Slurm does not know). */
export interface IJob {
  id: string;
  state: string;
  reason?: string | null;
  node?: string | null;
  submitted_at?: string | number | null;
  started_at?: string | number | null;
  end_time?: string | number | null;
  time_left_s?: number | null;
  time_limit_s?: number | null;
  estimated_start?: string | number | null;
}

/** Admission-queue counters. */
export interface IQueueTotals {
  waiting: number;
  running: number;
  users_waiting: number;
  max_concurrent: number;
  max_queue: number;
  max_queue_per_user: number;
}

/** Whether each model fits the memory of one GPU job. */
export interface IGpuFit {
  gpu_memory_gb: number;
  /** `fits` and `size_gb` are null for models of unknown size. */
  models: { name: string; size_gb: number | null; fits: boolean | null }[];
  largest_set?: string[];
  /** A sentence on which models can stay loaded together. */
  note?: string;
}

/** `GET backend/state` (also the answer of `POST backend/start|stop`). */
export interface IBackendState {
  kind: 'local' | 'upstream' | 'slurm';
  protocol: 'ollama' | 'openai';
  state: BackendStateName;
  message?: string;
  healthy: boolean;
  job: IJob | null;
  successor?: IJob | null;
  idle_s?: number | null;
  last_error?: string | null;
  models: string[];
  queue?: IQueueTotals | null;
  gpu?: IGpuFit | null;
  user?: { name: string; admin: boolean };
  backend_url?: string;
}

/** One entry of Ollama's `GET api/tags`. */
export interface IModelTag {
  name: string;
  model?: string;
  size?: number;
  digest?: string;
  modified_at?: string;
  details?: {
    family?: string;
    parameter_size?: string;
    quantization_level?: string;
    format?: string;
  };
}

/** One entry of Ollama's `GET api/ps`. */
export interface IRunningModel extends IModelTag {
  size_vram?: number;
  expires_at?: string;
  context_length?: number;
}

/** One request in the admission queue. */
export interface IQueueEntry {
  id: string;
  model: string;
  state: 'waiting' | 'running';
  position?: number | null;
  waited_s?: number | null;
  running_s?: number | null;
  /** Only in the admins' `all` list. */
  user?: string;
}

/** `GET queue`. */
export interface IQueue {
  mine: IQueueEntry[];
  totals: IQueueTotals;
  all?: IQueueEntry[];
}
