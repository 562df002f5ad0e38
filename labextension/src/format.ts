/**
 * Pure functions turning the service's JSON into the words the panel shows.
 *
 * No DOM and no JupyterLab imports here, so that `jlpm test` runs them in plain Node.
 */

import type { IBackendState, IGpuFit, IJob, IModelTag, IQueueEntry, IQueueTotals, IRunningModel } from './tokens';

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

/**
 * A time from the server: an ISO string or epoch seconds. Slurm's "N/A", "Unknown",
 * "None" and unparsable text give null.
 */
export function parseTime(value: string | number | null | undefined): Date | null {
  if (value === null || value === undefined || value === '') {
    return null;
  }
  const ms = typeof value === 'number' ? value * 1000 : Date.parse(value);
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
 * One job in words, starting lower case so it can follow a colon:
 * "job 1234 pending (Resources), estimated start 10:42", "job 1234 running on gpu017, 3 h 12 min left".
 */
export function jobSentence(job: IJob, now: Date = new Date()): string {
  const state = (job.state || 'unknown').toLowerCase();
  const parts = [`job ${job.id} ${state}`];
  if (state === 'pending') {
    const reason = (job.reason ?? '').trim();
    if (!NO_REASON.has(reason.toLowerCase())) {
      parts[0] += ` (${reason})`;
    }
    const start = parseTime(job.estimated_start);
    if (start) {
      parts.push(`estimated start ${formatClock(start, now)}`);
    }
  } else {
    if (job.node) {
      parts[0] += ` on ${job.node}`;
    }
    if (typeof job.time_left_s === 'number') {
      parts.push(`${formatDuration(job.time_left_s)} left`);
    }
  }
  return parts.join(', ');
}

/**
 * A job's details as label/value rows, e.g. [["Job", "1234 (running)"], ["Node", "gpu017"],
 * ["Started", "10:02"], ["Time left", "3 h 12 min of 4 h"]].
 */
export function jobFacts(job: IJob, now: Date = new Date()): [string, string][] {
  const state = (job.state || 'unknown').toLowerCase();
  const facts: [string, string][] = [['Job', `${job.id} (${state})`]];
  const clock = (value: string | number | null | undefined): string | null => {
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

/** What the backend kind is called in sentences. */
export function kindLabel(kind: IBackendState['kind']): string {
  switch (kind) {
    case 'slurm':
      return 'Slurm GPU job';
    case 'local':
      return 'Local backend';
    case 'upstream':
      return 'Remote backend';
    default:
      return String(kind);
  }
}

/**
 * The backend state in the panel's own words, from the structured fields:
 * "No GPU job (starts on first request)", "Waiting for a GPU: job 1234 pending (Resources),
 * estimated start 10:42", "Ready on node gpu017, 3 h 12 min left",
 * "Renewing: successor job 1240 pending".
 */
export function stateSentence(state: IBackendState, now: Date = new Date()): string {
  const { job, successor } = state;
  const slurm = state.kind === 'slurm';
  const failure = state.last_error ? `: ${state.last_error}` : '';
  switch (state.state) {
    case 'idle':
      if (slurm) {
        return 'No GPU job (starts on first request)';
      }
      return state.kind === 'local' ? 'Backend not running (starts on first request)' : 'Idle';
    case 'submitting':
      return slurm ? 'Submitting a GPU job…' : 'Starting the backend…';
    case 'pending':
      return job ? `Waiting for a GPU: ${jobSentence(job, now)}` : 'Waiting for a GPU';
    case 'starting':
      if (job?.node) {
        return `Starting on node ${job.node}: loading the backend`;
      }
      return 'Starting the backend…';
    case 'ready':
      if (slurm && job) {
        const left = typeof job.time_left_s === 'number' ? `, ${formatDuration(job.time_left_s)} left` : '';
        return `Ready on node ${job.node || '?'}${left}`;
      }
      return 'Ready';
    case 'renewing':
      return successor ? `Renewing: successor ${jobSentence(successor, now)}` : 'Renewing: submitting a successor job';
    case 'draining':
      if (successor) {
        return `Handing over to job ${successor.id}${successor.node ? ` on ${successor.node}` : ''}`;
      }
      return 'Draining: finishing the requests in flight';
    case 'failed':
      return `Failed${failure}`;
    default:
      return `State unknown${failure}`;
  }
}

/** The headline: the server's own sentence when it sent one, else {@link stateSentence}. */
export function headline(state: IBackendState, now: Date = new Date()): string {
  const message = state.message?.trim() ?? '';
  // the server falls back to the bare state name ("ready") when it has no sentence
  return message && message !== state.state ? message : stateSentence(state, now);
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
