/**
 * The JSON shapes the server extension answers under `{baseUrl}llm/`.
 *
 * `IBackendState`, `IJob`, `IQueueTotals`, `IUser`, `BackendStateName` and `ACTIVE_STATES` mirror
 * `jupyter_llm_af/state.py` (`StateDoc`, `JobDoc`, `QueueTotals`, `UserDoc`, `BackendState`,
 * `ACTIVE_STATES`) key for key: `tests/test_state_contract.py` fails when they drift apart.
 */

/** Lifecycle states of the backend, as `GET backend/state` reports them (`state.BackendState`). */
export type BackendStateName =
  'idle' | 'submitting' | 'pending' | 'starting' | 'ready' | 'renewing' | 'draining' | 'failed' | 'unknown';

/**
 * States that hold (or are about to hold) resources, so that "Start" would do nothing
 * (`state.ACTIVE_STATES`). Whether requests are answered now is the server's `serving` field.
 */
export const ACTIVE_STATES: ReadonlySet<string> = new Set<BackendStateName>([
  'submitting',
  'pending',
  'starting',
  'ready',
  'renewing',
  'draining'
]);

/** What runs the model. */
export type BackendKind = 'local' | 'upstream' | 'slurm' | 'relay' | 'unconfigured';

/** A Slurm job behind the backend (`state.JobDoc`; times: ISO 8601, null when Slurm does not know). */
export interface IJob {
  id: string;
  state: string;
  reason?: string;
  node?: string | null;
  submitted_at?: string | null;
  started_at?: string | null;
  end_time?: string | null;
  time_left_s?: number | null;
  time_limit_s?: number | null;
  estimated_start?: string | null;
  ready?: boolean;
  /** Several jobs: `default` or a `slurm_pools` name. */
  pool?: string;
  /** `current`, `successor` or `draining`. */
  role?: string;
  /** Models loaded on this job, as far as the service knows. */
  models?: string[];
  /** Requests running on it. */
  inflight?: number;
}

/** A pool of Slurm jobs (`state.PoolDoc`). */
export interface IPool {
  name: string;
  state: BackendStateName;
  message?: string;
  jobs: number;
  min_jobs?: number;
  max_jobs?: number;
  gres?: string;
  gpu_memory_gb?: number;
  /** The models sent to this pool; empty: any model that fits. */
  models?: string[];
}

/** Admission-queue counters (`state.QueueTotals`). */
export interface IQueueTotals {
  waiting: number;
  running: number;
  users_waiting: number;
  max_concurrent: number;
  max_queue: number;
  max_queue_per_user: number;
}

/** Who asks (`state.UserDoc`). */
export interface IUser {
  name: string;
  admin: boolean;
}

/** Whether each model fits the memory of one GPU job. */
export interface IGpuFit {
  gpu_memory_gb: number;
  /** `fits` and `size_gb` are null for models of unknown size. */
  models: { name: string; size_gb: number | null; fits: boolean | null }[];
  largest_set?: string[];
  largest_set_gb?: number;
  /** A sentence on which models can stay loaded together. */
  note?: string;
}

/** `GET backend/state` (also the answer of `POST backend/start|stop`): `state.StateDoc`. */
export interface IBackendState {
  // what the launcher reports (state.LauncherState)
  kind: BackendKind;
  state: BackendStateName;
  /** The one user-facing sentence about the backend, written by the launcher. */
  message: string;
  job: IJob | null;
  successor?: IJob | null;
  /** Job ids finishing their requests before they are released. */
  draining?: string[];
  idle_s?: number;
  /** Requests in flight on the backend. */
  inflight?: number;
  last_error?: string | null;
  /** Every Slurm job of every pool (several jobs or pools); `job` stays the default pool's first. */
  jobs?: IJob[];
  pools?: IPool[];
  // admins only
  backend_url?: string | null;
  job_name?: string;
  state_dir?: string;
  pid?: number | null;
  // added by the service
  /** A request now would be answered without waiting for a start: the panel never works this out. */
  serving: boolean;
  protocol: 'ollama' | 'openai';
  healthy: boolean;
  models: string[];
  /** What the magics and snippets use when no model is named. */
  default_model?: string | null;
  /** A sentence about a model, for the names that have one (e.g. "a base model, not instruction-tuned"). */
  model_notes?: Record<string, string>;
  queue?: IQueueTotals;
  gpu?: IGpuFit | null;
  user?: IUser;
  /** The service's version. */
  version?: string;
  /** This server relays to one shared service. */
  relay?: boolean;
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
  /** The service's sentence about this model (e.g. that it is a base model), if it has one. */
  note?: string;
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

/** Usage figures of a period or of one day (`usage.Totals.as_dict`; seconds rounded to ms). */
export interface IUsageTotals {
  requests: number;
  errors: number;
  prompt_tokens: number;
  completion_tokens: number;
  queue_wait_s: number;
  backend_s: number;
}

/** One calendar day of the service (`date`: YYYY-MM-DD, the service's local day). */
export interface IUsageDay extends IUsageTotals {
  date: string;
}

/** `usage.UsageBook.summary`: one user's (or, `user` null, everyone's) usage from `since` to `until`. */
export interface IUsageSummary {
  user: string | null;
  since: string;
  until: string;
  totals: IUsageTotals;
  /** One entry per day, oldest first, days without requests included. */
  days: IUsageDay[];
  models: Record<string, IUsageTotals>;
  /** Only in everyone's summary: per user. */
  users?: Record<string, IUsageTotals>;
}

/**
 * `usage.QueueHistory.history`: the queue depth over the last hour, one slot per `step_s` seconds
 * from `start` (Unix seconds), oldest first and ending now; each slot holds the largest depth seen.
 */
export interface IQueueHistory {
  start: number;
  step_s: number;
  waiting: number[];
  running: number[];
}

/** `GET usage?days=N` (`usage.usage_answer`). */
export interface IUsage {
  user: string;
  admin: boolean;
  /** The service's calendar day (YYYY-MM-DD). */
  today: string;
  usage: IUsageSummary;
  queue: IQueueHistory;
  /** Admins only: everyone's usage with a per-user table. */
  all?: IUsageSummary;
}
