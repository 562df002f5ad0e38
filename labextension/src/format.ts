/**
 * Pure functions turning the service's JSON into the words the panel shows. The sentence about
 * the backend's state is not among them: the server writes it (`message`), the panel shows it.
 *
 * No DOM and no JupyterLab imports here, so that `jlpm test` runs them in plain Node.
 */

import type {
  BackendKind,
  IBackendState,
  IGpuFit,
  IJob,
  IPool,
  IModelTag,
  IQueueEntry,
  IQueueHistory,
  IQueueTotals,
  IRunningModel,
  IUsageDay,
  IUsageTotals
} from './tokens';

const UNITS = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];

/** Bytes in decimal units, as `ollama list` writes them: 94000000 → "94 MB", 1300000000 → "1.3 GB". */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) {
    return '?';
  }
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit++;
  }
  if (unit === 0) {
    return `${Math.round(value)} B`;
  }
  // 9.96 would round to "10.0": switch to whole numbers on the rounded value.
  const text = Math.round(value * 10) / 10 < 10 ? value.toFixed(1) : `${Math.round(value)}`;
  return `${text} ${UNITS[unit]}`;
}

/** A duration for people: "45 s", "12 min", "3 h 12 min", "2 d 5 h". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) {
    return '?';
  }
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  const minutes = Math.floor(s / 60);
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  if (hours < 24) {
    const rest = minutes % 60;
    return rest ? `${hours} h ${rest} min` : `${hours} h`;
  }
  const days = Math.floor(hours / 24);
  const rest = hours % 24;
  return rest ? `${days} d ${rest} h` : `${days} d`;
}

/** A time from the server (ISO 8601); null, empty and unparsable text (Slurm's "N/A", "Unknown") give null. */
export function parseTime(value: string | null | undefined): Date | null {
  if (!value) {
    return null;
  }
  const ms = Date.parse(value);
  return Number.isFinite(ms) ? new Date(ms) : null;
}

const WEEKDAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];

const pad2 = (n: number): string => String(n).padStart(2, '0');

/** A local clock time: "10:42" today, "Wed 10:42" within a week, else "2025-12-01 10:42". */
export function formatClock(date: Date, now: Date = new Date()): string {
  const hm = `${pad2(date.getHours())}:${pad2(date.getMinutes())}`;
  if (date.toDateString() === now.toDateString()) {
    return hm;
  }
  const days = Math.abs(date.getTime() - now.getTime()) / 86_400_000;
  if (days < 6) {
    return `${WEEKDAYS[date.getDay()]} ${hm}`;
  }
  return `${date.getFullYear()}-${pad2(date.getMonth() + 1)}-${pad2(date.getDate())} ${hm}`;
}

/**
 * When a loaded model is unloaded (Ollama's `expires_at`): "expires in 4 min", "expiring",
 * or "stays loaded" for keep-alive -1 (Ollama then reports a date centuries ahead).
 */
export function formatExpiresIn(expiresAt: string | null | undefined, now: Date = new Date()): string {
  const date = parseTime(expiresAt);
  if (!date) {
    return '';
  }
  const seconds = (date.getTime() - now.getTime()) / 1000;
  if (seconds > 365 * 86_400) {
    return 'stays loaded';
  }
  if (seconds < 1) {
    return 'expiring';
  }
  return `expires in ${formatDuration(seconds)}`;
}

/** Slurm pending reasons worth no words. */
const NO_REASON = new Set(['', 'none', 'n/a']);

/**
 * A job's details as label/value rows, e.g. [["Job", "1234 (running)"], ["Node", "gpu017"],
 * ["Started", "10:02"], ["Time left", "3 h 12 min of 4 h"]].
 */
export function jobFacts(job: IJob, now: Date = new Date()): [string, string][] {
  const state = (job.state || 'unknown').toLowerCase();
  const facts: [string, string][] = [['Job', `${job.id} (${state})`]];
  const clock = (value: string | null | undefined): string | null => {
    const date = parseTime(value);
    return date ? formatClock(date, now) : null;
  };
  const reason = (job.reason ?? '').trim();
  if (state === 'pending' && !NO_REASON.has(reason.toLowerCase())) {
    facts.push(['Reason', reason]);
  }
  if (job.node) {
    facts.push(['Node', job.node]);
  }
  const submitted = clock(job.submitted_at);
  const started = clock(job.started_at);
  const estimated = clock(job.estimated_start);
  if (started) {
    facts.push(['Started', started]);
  } else if (estimated) {
    facts.push(['Estimated start', estimated]);
  }
  if (submitted && !started) {
    facts.push(['Submitted', submitted]);
  }
  if (typeof job.time_left_s === 'number') {
    const limit = typeof job.time_limit_s === 'number' ? ` of ${formatDuration(job.time_limit_s)}` : '';
    facts.push(['Time left', `${formatDuration(job.time_left_s)}${limit}`]);
  } else if (typeof job.time_limit_s === 'number') {
    facts.push(['Time limit', formatDuration(job.time_limit_s)]);
  }
  return facts;
}

/** A pool of Slurm jobs with its jobs, as the panel lists them; `pool` null when the state names no such pool. */
export interface IPoolView {
  name: string;
  pool: IPool | null;
  jobs: IJob[];
}

/** The pool a job belongs to: jobs from a service that does not say are the default pool's. */
const poolOf = (job: IJob): string => job.pool || 'default';

/**
 * The pools of a service that runs several Slurm jobs or pools, each with its jobs (the server's
 * order; jobs of pools the state does not list get a pool of their own, last). Null for a one-job
 * service — no `jobs`/`pools`, or one job and one default pool of at most one job — which the
 * panel shows as it always did.
 */
export function poolViews(state: IBackendState): IPoolView[] | null {
  const pools = state.pools ?? [];
  const jobs = state.jobs ?? [state.job, state.successor].filter((job): job is IJob => !!job);
  const oneJob =
    (state.jobs ?? []).length <= 1 &&
    pools.length <= 1 &&
    pools.every(pool => pool.name === 'default' && (pool.max_jobs ?? 1) <= 1);
  if (oneJob) {
    return null;
  }
  const views: IPoolView[] = pools.map(pool => ({ name: pool.name, pool, jobs: [] }));
  for (const job of jobs) {
    let view = views.find(v => v.name === poolOf(job));
    if (!view) {
      view = { name: poolOf(job), pool: null, jobs: [] };
      views.push(view);
    }
    view.jobs.push(job);
  }
  return views;
}

/** A pool's job count beside its name: "1/2 jobs", "1 job" when it has no maximum. */
export function poolJobsText(pool: IPool): string {
  const max = typeof pool.max_jobs === 'number' && pool.max_jobs > 0 ? `/${pool.max_jobs}` : '';
  const noun = max || pool.jobs !== 1 ? 'jobs' : 'job';
  return `${pool.jobs}${max} ${noun}`;
}

/** A pool's minimum and what its jobs get and serve: "min 1 · gpu:a100:2 · 80 GB each · llama3.3:70b". */
export function poolDetails(pool: IPool): string {
  const parts: string[] = [];
  if (pool.min_jobs) {
    parts.push(`min ${pool.min_jobs}`);
  }
  if (pool.gres) {
    parts.push(pool.gres);
  }
  if (typeof pool.gpu_memory_gb === 'number' && pool.gpu_memory_gb > 0) {
    parts.push(`${pool.gpu_memory_gb} GB each`);
  }
  if (pool.models && pool.models.length > 0) {
    parts.push(pool.models.join(', '));
  }
  return parts.join(' · ');
}

/**
 * One job of a pool as the parts of its line after the id, e.g. ["running", "gpu017",
 * "3 h 12 min left", "gemma3:27b, all-minilm", "2 in flight"], or ["pending (Resources)",
 * "est. start 10:42", "successor"]. The role is named only when the job is not the pool's current one.
 */
export function jobLine(job: IJob, now: Date = new Date()): string[] {
  const state = (job.state || 'unknown').toLowerCase();
  const reason = (job.reason ?? '').trim();
  const parts = [state === 'pending' && !NO_REASON.has(reason.toLowerCase()) ? `${state} (${reason})` : state];
  if (job.node) {
    parts.push(job.node);
  }
  const estimated = parseTime(job.estimated_start);
  if (!job.started_at && estimated) {
    parts.push(`est. start ${formatClock(estimated, now)}`);
  }
  if (typeof job.time_left_s === 'number') {
    parts.push(`${formatDuration(job.time_left_s)} left`);
  }
  if (job.models && job.models.length > 0) {
    parts.push(job.models.join(', '));
  }
  if (typeof job.inflight === 'number') {
    parts.push(`${job.inflight} in flight`);
  }
  if (job.role && job.role !== 'current') {
    parts.push(job.role);
  }
  return parts;
}

/** What the backend kind is called in the panel's subtitle. */
export function kindLabel(kind: BackendKind): string {
  switch (kind) {
    case 'slurm':
      return 'Slurm GPU job';
    case 'local':
      return 'Local backend';
    case 'upstream':
      return 'Remote backend';
    case 'relay':
      return 'Shared service';
    case 'unconfigured':
      return 'Not configured';
    default:
      return String(kind);
  }
}

/** Size, family, parameters and quantization of a model: "271 MB · llama · 135M · Q8_0". */
export function modelDetails(tag: IModelTag): string {
  const parts: string[] = [];
  if (typeof tag.size === 'number' && tag.size > 0) {
    parts.push(formatBytes(tag.size));
  }
  const d = tag.details ?? {};
  for (const value of [d.family, d.parameter_size, d.quantization_level]) {
    if (value) {
      parts.push(value);
    }
  }
  return parts.join(' · ');
}

/**
 * The service's sentence about a model (e.g. "A base model, not instruction-tuned: …"): from its
 * `api/tags` entry, else from `model_notes` of the state (known while the backend is down too).
 */
export function modelNote(tag: IModelTag, notes: Record<string, string> | null | undefined): string {
  return (tag.note ?? notes?.[tag.name] ?? '').trim();
}

/** Whether a model fits one GPU job: null when the site configured no GPU size or does not know the model. */
export function gpuFit(name: string, gpu: IGpuFit | null | undefined): { fits: boolean; text: string } | null {
  const entry = gpu?.models?.find(m => m.name === name);
  if (!gpu || !entry || typeof entry.fits !== 'boolean' || typeof entry.size_gb !== 'number') {
    return null;
  }
  const need = `${entry.size_gb.toFixed(1)} GB`;
  return entry.fits
    ? { fits: true, text: `fits the GPU (${need} of ${gpu.gpu_memory_gb} GB)` }
    : { fits: false, text: `too large for the GPU (${need} > ${gpu.gpu_memory_gb} GB)` };
}

/** A loaded model: "271 MB in GPU memory, expires in 4 min" (or "on CPU", "40% in GPU memory"). */
export function runningText(model: IRunningModel, now: Date = new Date()): string {
  const parts: string[] = [];
  const size = model.size ?? 0;
  const vram = model.size_vram ?? 0;
  if (vram > 0 && (size === 0 || vram >= size)) {
    parts.push(`${formatBytes(vram)} in GPU memory`);
  } else if (vram > 0) {
    parts.push(`${formatBytes(size)}, ${Math.round((100 * vram) / size)}% in GPU memory`);
  } else if (size > 0) {
    parts.push(`${formatBytes(size)} on CPU`);
  }
  if (model.context_length) {
    parts.push(`context ${model.context_length}`);
  }
  const expires = formatExpiresIn(model.expires_at, now);
  if (expires) {
    parts.push(expires);
  }
  return parts.join(', ');
}

/** One queued request: "smollm2:135m: waiting, position 2 (12 s)", "smollm2:135m: running (5 s)". */
export function queueEntryText(entry: IQueueEntry): string {
  const who = entry.user ? `${entry.user}, ` : '';
  if (entry.state === 'running') {
    const since = typeof entry.running_s === 'number' ? ` (${formatDuration(entry.running_s)})` : '';
    return `${who}${entry.model}: running${since}`;
  }
  const position = typeof entry.position === 'number' ? `, position ${entry.position}` : '';
  const waited = typeof entry.waited_s === 'number' ? ` (${formatDuration(entry.waited_s)})` : '';
  return `${who}${entry.model}: waiting${position}${waited}`;
}

/** The queue totals: "2 running of 4 slots, 3 waiting (2 users)". */
export function queueTotalsText(totals: IQueueTotals): string {
  const slots = totals.max_concurrent > 0 ? ` of ${totals.max_concurrent} slots` : '';
  const users = totals.waiting > 0 ? ` (${totals.users_waiting} ${totals.users_waiting === 1 ? 'user' : 'users'})` : '';
  return `${totals.running} running${slots}, ${totals.waiting} waiting${users}`;
}

/**
 * The message of an error answer, in any of the service's formats:
 * Ollama `{"error": "..."}`, OpenAI `{"error": {"message": "..."}}`, Jupyter `{"message": "..."}`,
 * or plain text. `fallback` when there is none.
 */
export function errorMessage(body: unknown, fallback: string): string {
  if (typeof body === 'string') {
    const text = body.trim();
    // An HTML error page says nothing useful in a sidebar.
    return text && !text.startsWith('<') && text.length <= 500 ? text : fallback;
  }
  if (body && typeof body === 'object') {
    const { error, message } = body as { error?: unknown; message?: unknown };
    if (typeof error === 'string' && error) {
      return error;
    }
    if (error && typeof error === 'object') {
      const inner = (error as { message?: unknown }).message;
      if (typeof inner === 'string' && inner) {
        return inner;
      }
    }
    if (typeof message === 'string' && message) {
      return message;
    }
  }
  return fallback;
}

/**
 * What the panel says about a failed request: "Not authorised" (401/403), the server's
 * message for 502/503 ("backend down"), else the message with its status.
 */
export function describeError(status: number, message: string): string {
  if (status === 401 || status === 403) {
    return message && message !== 'Forbidden' && message !== 'Unauthorized'
      ? `Not authorised: ${message}`
      : 'Not authorised';
  }
  if (status === 0 || status === 502 || status === 503 || status === 504) {
    return message;
  }
  return `${message} (HTTP ${status})`;
}

/** The code snippets the copy menu offers. */
export type SnippetKind = 'magic' | 'openai' | 'ollama';

export const SNIPPET_LABELS: Record<SnippetKind, string> = {
  magic: '%llm magic',
  openai: 'OpenAI client (Python)',
  ollama: 'Ollama client (Python)'
};

/** The question the snippets ask. */
const PROMPT = 'Why is the sky blue?';

/**
 * A ready-to-paste notebook cell using `model`. Kernels started by the Jupyter server inherit
 * the service's URL and token (`JUPYTER_LLM_AF_URL`, `JUPYTER_LLM_AF_TOKEN`), which the magic
 * and the `jupyter_llm_af` client helpers read: no URL or key appears in the snippet.
 */
export function snippet(kind: SnippetKind, model: string): string {
  const name = JSON.stringify(model);
  const messages = `[{"role": "user", "content": ${JSON.stringify(PROMPT)}}]`;
  switch (kind) {
    case 'magic':
      return ['%load_ext jupyter_llm_af', `%llm -m ${model} ${PROMPT}`].join('\n');
    case 'openai':
      return [
        'from jupyter_llm_af import openai_client  # an openai.OpenAI for this service',
        '',
        'client = openai_client()',
        `reply = client.chat.completions.create(model=${name}, messages=${messages})`,
        'print(reply.choices[0].message.content)'
      ].join('\n');
    case 'ollama':
      return [
        'from jupyter_llm_af import ollama_client  # an ollama.Client for this service',
        '',
        'client = ollama_client()',
        `reply = client.chat(model=${name}, messages=${messages})`,
        'print(reply.message.content)'
      ].join('\n');
  }
}

/** A count for a small space: 950 → "950", 1234 → "1.2k", 56_700 → "57k", 3_400_000 → "3.4M". */
export function formatCount(n: number): string {
  if (!Number.isFinite(n) || n < 0) {
    return '?';
  }
  for (const [size, suffix] of [
    [1e9, 'G'],
    [1e6, 'M'],
    [1e3, 'k']
  ] as [number, string][]) {
    if (n >= size) {
      const value = n / size;
      return Math.round(value * 10) / 10 < 10 ? `${value.toFixed(1)}${suffix}` : `${Math.round(value)}${suffix}`;
    }
  }
  return String(Math.round(n));
}

/** Prompt plus completion tokens. */
export const totalTokens = (t: IUsageTotals): number => (t.prompt_tokens || 0) + (t.completion_tokens || 0);

/** The top of a chart's scale: 1, 2 or 5 times a power of ten, at or above `value` (0 for no data). */
export function niceCeil(value: number): number {
  if (!Number.isFinite(value) || value <= 0) {
    return 0;
  }
  const power = 10 ** Math.floor(Math.log10(value));
  const f = value / power;
  // f * power can miss an exact 1, 2 or 5 by rounding: compare with a little slack
  const step = f <= 1 + 1e-9 ? 1 : f <= 2 + 1e-9 ? 2 : f <= 5 + 1e-9 ? 5 : 10;
  return Math.max(1, step * power);
}

/** A service day (YYYY-MM-DD) as a local calendar date; null when it is not one. */
function parseDay(iso: string): Date | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(iso);
  return m ? new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3])) : null;
}

/** The label under a day's bar: its weekday ("Tue"), or the text as it came when it is no date. */
export function dayLabel(iso: string): string {
  const day = parseDay(iso);
  return day ? WEEKDAYS[day.getDay()] : iso;
}

/** "3 requests, 1.2k tokens (1.0k prompt + 234 completion)"; with failures: "3 requests, 1 failed, …". */
export function usageText(t: IUsageTotals): string {
  const requests = `${t.requests} ${t.requests === 1 ? 'request' : 'requests'}`;
  const failed = t.errors > 0 ? `, ${t.errors} failed` : '';
  const tokens = totalTokens(t);
  const split =
    tokens > 0 ? ` (${formatCount(t.prompt_tokens)} prompt + ${formatCount(t.completion_tokens)} completion)` : '';
  return `${requests}${failed}, ${formatCount(tokens)} ${tokens === 1 ? 'token' : 'tokens'}${split}`;
}

/** One bar of the usage chart, in the chart's own units (y grows downwards, as in SVG). */
export interface IUsageBar {
  date: string;
  label: string;
  x: number;
  width: number;
  /** Heights of the two stacked parts; the prompt part sits on the baseline. */
  promptHeight: number;
  completionHeight: number;
  /** The tooltip: "Tue 2025-11-25: 3 requests, 1.2k tokens (…)". */
  title: string;
}

/**
 * Bars of tokens per day in a `width` × `height` area: heights scale to `max` (see {@link niceCeil}),
 * a day with any tokens gets at least one unit so it shows; days without tokens have no height.
 */
export function usageBars(days: IUsageDay[], width: number, height: number): { bars: IUsageBar[]; max: number } {
  const max = niceCeil(Math.max(0, ...days.map(totalTokens)));
  const slot = days.length > 0 ? width / days.length : 0;
  const gap = Math.min(4, slot / 4);
  const bars = days.map((day, i) => {
    const total = totalTokens(day);
    const full = max > 0 && total > 0 ? Math.max(1, (total / max) * height) : 0;
    const promptHeight = total > 0 ? (full * (day.prompt_tokens || 0)) / total : 0;
    return {
      date: day.date,
      label: dayLabel(day.date),
      x: i * slot + gap / 2,
      width: Math.max(0, slot - gap),
      promptHeight,
      completionHeight: full - promptHeight,
      title: `${dayLabel(day.date)} ${day.date}: ${usageText(day)}`
    };
  });
  return { bars, max };
}

/**
 * An SVG polyline's `points` for `values` across `width`, 0 at the bottom of `height` and `max`
 * at the top; one value draws a flat line, none an empty string.
 */
export function sparkPoints(values: number[], width: number, height: number, max: number): string {
  if (values.length === 0) {
    return '';
  }
  const scale = max > 0 ? height / max : 0;
  const y = (v: number): number => Math.round((height - Math.min(Math.max(v, 0), max) * scale) * 100) / 100;
  if (values.length === 1) {
    return `0,${y(values[0])} ${width},${y(values[0])}`;
  }
  const step = width / (values.length - 1);
  return values.map((v, i) => `${Math.round(i * step * 100) / 100},${y(v)}`).join(' ');
}

/** The queue history's scale (at least 1), its clock labels at both ends, and one line on its peaks. */
export function queueHistoryFacts(history: IQueueHistory): {
  max: number;
  from: string;
  to: string;
  text: string;
} {
  const peakWaiting = Math.max(0, ...history.waiting);
  const peakRunning = Math.max(0, ...history.running);
  const slots = Math.max(history.waiting.length, history.running.length);
  const end = new Date((history.start + history.step_s * slots) * 1000);
  const text =
    peakWaiting === 0 && peakRunning === 0
      ? 'No requests in the last hour.'
      : `Peak ${peakRunning} running, ${peakWaiting} waiting`;
  return {
    max: Math.max(1, peakWaiting, peakRunning),
    from: formatClock(new Date(history.start * 1000), end),
    to: formatClock(end, end),
    text
  };
}
